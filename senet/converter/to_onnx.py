"""IR → ONNX, built directly with onnx.helper (no tracing), opset pinned.

The file is streamed: the graph's nodes and small tensors are serialised by protobuf, but each
initializer's bytes go from the (often memory-mapped) weight array straight to disk, so converting
a 440 MB model needs no second and third copy of the weights in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from senet.converter.graph import CaffeNet
from senet.converter.layers import converter_of
from senet.converter.protowire import len_field
from senet.errors import GraphError, UsageError
from senet.files import atomic_output

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Split/Unsqueeze/Softmax with the signatures the emitters use
IR_VERSION = 8  # what opset 17 needs; older runtimes load it


class OnnxGraph:
    """What layer emitters see: node creation, constants, fresh names and blob shapes."""

    def __init__(self, net: CaffeNet, opset: int = DEFAULT_OPSET):
        self.net = net
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._taken = set(net.shapes) | set(net.final_names)
        self._layer = ""

    def shape(self, blob: str) -> tuple[int, ...]:
        return self.net.shapes[blob]

    def tmp(self, hint: str) -> str:
        return self._unique(hint)

    def _unique(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._taken:
            name = f"{hint}_{k}"
            k += 1
        self._taken.add(name)
        return name

    def const(self, array, hint: str) -> str:
        name = self._unique(hint)
        self.initializers[name] = np.asarray(array, dtype=np.float32)
        return name

    def ints(self, values, hint: str) -> str:
        name = self._unique(hint)
        self.initializers[name] = np.asarray(values, dtype=np.int64)
        return name

    def node(self, op: str, inputs, outputs, **attrs) -> None:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs),
                                           name=self._unique(f"{self._layer}:{op}"), **attrs))

    def reduce_mean(self, value: str, axes, hint: str) -> str:
        """A ReduceMean over `axes` keeping them (size 1), written for this graph's opset."""
        out = self.tmp(hint)
        if self.opset >= 18:  # ReduceMean's axes became an input in opset 18
            self.node("ReduceMean", [value, self.ints(list(axes), hint + "/axes")], [out],
                      keepdims=1)
        else:
            self.node("ReduceMean", [value], [out], axes=list(axes), keepdims=1)
        return out


def build_graph(net: CaffeNet, outputs: list[str] | None = None,
                opset: int = DEFAULT_OPSET) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ModelProto without initializer payloads, and the initializers to stream beside it."""
    if not MIN_OPSET <= opset <= 22:
        raise UsageError(f"opset {opset} is not supported (use {MIN_OPSET}..22)")
    g = OnnxGraph(net, opset)
    for layer in net.layers:
        g._layer = layer.name
        converter_of(layer.param).to_onnx(layer, g)
    batched = net.batch_blobs() if net.batch_fixed_by() is None else set()
    data_dependent = net.data_dependent_values()

    def value_info(name, shape, ssa):
        if ssa in data_dependent:  # sizes known at run time only: every axis named
            dims = [f"{name}_{axis}" for axis in range(len(shape))]
        elif ssa in batched and shape:  # a 0-D blob (Reduction over axis 0) has no batch
            dims = ["batch", *shape[1:]]  # axis, nor has PriorBox's
        else:
            dims = list(shape)
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph_inputs = [value_info(name, shape, name) for name, shape in net.inputs.items()]
    graph_outputs, renames = [], []
    for public, ssa in net.output_pairs(outputs):
        if ssa != public and not _aliases_input(g, ssa, public, set(net.inputs)):
            renames.append(helper.make_node("Identity", [ssa], [public],
                                            name=f"output:{public}"))
        graph_outputs.append(value_info(public, net.shapes[ssa], ssa))
    graph = helper.make_graph(g.nodes + renames, net.name or "caffe_net", graph_inputs,
                              graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="senet", ir_version=IR_VERSION)
    return model, g.initializers


def _aliases_input(g: OnnxGraph, value: str, public: str, input_names: set[str]) -> bool:
    """True when the output `public` can be the graph input of that name itself: `value`
    is that input through Identity nodes only (e.g. Dropout in place on an input). An
    output named like an input but computed from it is GraphError (ONNX names are unique)."""
    if public not in input_names:
        return False
    sources = {node.output[0]: node.input[0] for node in g.nodes if node.op_type == "Identity"}
    while value in sources:
        value = sources[value]
    if value != public:
        raise GraphError(f"the output '{public}' is computed in place from the input "
                         f"'{public}'; an ONNX graph cannot give both that name",
                         hint="ask for another output (--outputs) or rename the blob")
    return True


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})


# ----------------------------------------------------------------------------- streaming write

_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
_GRAPH_FIELD, _INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9


def _tensor_chunks(name: str, array: np.ndarray) -> tuple[bytes, memoryview]:
    header = TensorProto(name=name, data_type=_ONNX_TYPES[array.dtype], dims=list(array.shape))
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    payload = memoryview(data).cast("B")
    return header.SerializeToString() + len_field(_RAW_DATA_FIELD, payload.nbytes), payload


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


def _copy_from_file(src_fd: int, offset: int, count: int, out_fd: int) -> bool:
    """Copy `count` bytes at `offset` of src to the end of out inside the kernel; False if the
    platform or file systems cannot (the caller then writes from memory)."""
    if not hasattr(os, "copy_file_range"):
        return False
    done = 0
    try:
        while done < count:
            n = os.copy_file_range(src_fd, out_fd, count - done, offset + done)
            if n == 0:
                break
            done += n
    except OSError:
        done = -1
    if done == count:
        return True
    if done > 0:  # partial copy: rewind so the fallback rewrites the whole payload
        os.lseek(out_fd, -done, os.SEEK_CUR)
    return False


def write_model(path: str | os.PathLike, model: onnx.ModelProto,
                initializers: dict[str, np.ndarray], progress=None, source=None,
                metadata=None) -> None:
    """Write `model` with `initializers` to `path` atomically (temp file in the same folder,
    renamed when complete; nothing is left behind on failure).

    With `source` (a caffe_reader.MappedFile), initializers that are views of that file are copied
    file to file by the kernel: the weights never pass through this process's memory.
    `metadata`, a callable returning a dict, is called after the weights are written and its
    entries appended as metadata_props (protobuf merges fields in any order), so a slow value
    such as the source file's hash is computed while the weights are written."""
    path = Path(path)
    graph = model.graph
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    graph_bytes = graph.SerializeToString()
    tensors = [_tensor_chunks(name, arr) for name, arr in initializers.items()]
    graph_len = len(graph_bytes) + sum(
        len(len_field(_INITIALIZER_FIELD, len(h) + p.nbytes)) + len(h) + p.nbytes
        for h, p in tensors)
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        src_fd = os.open(source.path, os.O_RDONLY) if source is not None else None
        try:
            _write_all(fd, head.SerializeToString() + len_field(_GRAPH_FIELD, graph_len)
                       + graph_bytes)
            for k, ((header, payload), array) in enumerate(zip(tensors, initializers.values())):
                _write_all(fd, len_field(_INITIALIZER_FIELD, len(header) + payload.nbytes)
                           + header)
                offset = source.offset_of(array) if source is not None else None
                if offset is None or not _copy_from_file(src_fd, offset, payload.nbytes, fd):
                    _write_all(fd, payload)
                if progress:
                    progress(k + 1, len(tensors))
            if metadata is not None:
                trailer = onnx.ModelProto()
                set_metadata(trailer, metadata())
                _write_all(fd, trailer.SerializeToString())
        finally:
            os.close(fd)
            if src_fd is not None:
                os.close(src_fd)
