"""IR → torch.fx GraphModule, built node by node with the torch.fx Graph API (no tracing).

Each layer converter's ``to_torch(layer, ctx)`` emits its own nodes through a `TorchGraph`.
Names stay readable: each Caffe layer's weights live on a submodule named after the layer
(``conv1/7x7_s2`` → ``conv1_7x7_s2.weight``), each node is named after the blob it computes,
and the module's inputs are named after the net's inputs. The module returns what the ONNX
writer's graph outputs are (``CaffeNet.output_pairs``): one tensor, or a tuple in order.

Files: `export_pt2` (a torch.export program with a dynamic batch) and `save_safetensors`
(weights plus a JSON graph spec, loaded by `load_safetensors` / ``senet.load``, nothing
unpickled) are in ``senet.converter.torch_io``.
"""

from __future__ import annotations

import keyword
import re

import numpy as np
import torch
from torch import fx, nn

import senet.kernels  # noqa: F401  (registers torch.ops.senet.*)
from senet.converter import passes
from senet.converter.graph import CaffeNet
from senet.converter.layers import LayerConverter, converter_of
from senet.converter.semantics import prototxt_float
from senet.errors import ShapeError, UnsupportedLayerError

_RESERVED = set(dir(fx.GraphModule))


def identifier(name: str) -> str:
    """A Caffe name as a Python identifier that is no attribute of a GraphModule."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or ident in _RESERVED:
        ident += "_"
    return ident


class TorchGraph:
    """What layer emitters see: the values of blobs as fx nodes, node creation, and the
    registration of a layer's weights (on a submodule named after the layer).

    With `state` (tensors by ``module.name``, e.g. read from a safetensors file) registered
    weights are taken from it instead of from the arrays the emitters pass.
    """

    def __init__(self, net: CaffeNet, dtype: torch.dtype = torch.float32,
                 state: dict[str, torch.Tensor] | None = None):
        self.net = net
        self.dtype = dtype
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.state = state
        self._values: dict[str, fx.Node] = {}
        self._modules: dict[str, str] = {}  # Caffe layer name -> submodule name
        self._layer = None

    # --- blobs -----------------------------------------------------------------------------

    def shape(self, blob: str) -> tuple[int, ...]:
        """Caffe's static shape of a blob (the batch dimension is the net's input batch)."""
        return self.net.shapes[blob]

    def value(self, blob: str) -> fx.Node:
        return self._values[blob]

    def define(self, blob: str, node: fx.Node) -> None:
        """Make `node` the value of `blob` (an alias when the node computes another blob)."""
        self._values[blob] = node

    # --- nodes -----------------------------------------------------------------------------

    def op(self, fn, *args, **kwargs) -> fx.Node:
        """A call_function node for an intermediate value, named after the current layer."""
        hint = f"{self._layer.name}_{getattr(fn, '__name__', 'op')}"
        return self._node("call_function", fn, args, kwargs, hint)

    def emit(self, blob: str, fn, *args, **kwargs) -> fx.Node:
        """A call_function node computing `blob`, named after it."""
        node = self._node("call_function", fn, args, kwargs, blob)
        self.define(blob, node)
        return node

    def method(self, name: str, *args) -> fx.Node:
        """A call_method node, e.g. ``method("size", x, 0)`` for a (symbolic) dimension."""
        return self._node("call_method", name, args, {}, f"{self._layer.name}_{name}")

    def call_module(self, blob: str, key: str, module: nn.Module, *args, **kwargs) -> fx.Node:
        """Register `module` as ``<layer>.<key>`` and call it to compute `blob` (for emitters
        that reuse a torch.nn module; its weights load from `state` like any other)."""
        owner_name = self._module_for(self._layer.name)
        target = f"{owner_name}.{key}"
        if self.state is not None:
            prefix = target + "."
            module.load_state_dict({name[len(prefix):]: tensor for name, tensor in
                                    self.state.items() if name.startswith(prefix)})
        getattr(self.root, owner_name).add_module(key, module)
        node = self._node("call_module", target, args, kwargs, blob)
        self.define(blob, node)
        return node

    def _node(self, kind, target, args, kwargs, hint) -> fx.Node:
        # fx makes the hint a valid, unique Python name
        return self.graph.create_node(kind, target, args, kwargs, name=identifier(hint))

    @staticmethod
    def scalar(value: float) -> float:
        """A float field of the layer as a Python float (see semantics.prototxt_float)."""
        return prototxt_float(value)

    # --- weights ---------------------------------------------------------------------------

    def parameter(self, key: str, array) -> fx.Node:
        """Register a learned weight of the current layer as ``<layer>.<key>``."""
        return self._register(key, array, learned=True)

    def buffer(self, key: str, array) -> fx.Node:
        """Register a non-learned tensor of the current layer (e.g. BatchNorm statistics)."""
        return self._register(key, array, learned=False)

    def _register(self, key: str, array, learned: bool) -> fx.Node:
        module_name = self._module_for(self._layer.name)
        target = f"{module_name}.{key}"
        array = np.asarray(array)
        if self.state is not None:
            if target not in self.state:
                raise ShapeError(f"the weights file has no tensor '{target}'",
                                 layer=self._layer.name)
            stored = self.state[target]
            if tuple(stored.shape) != tuple(array.shape):
                raise ShapeError(f"tensor '{target}' has shape {list(stored.shape)}, the graph "
                                 f"needs {list(array.shape)}", layer=self._layer.name)
            tensor = owned_tensor(stored, self.dtype)
        else:
            tensor = owned_tensor(array, self.dtype)
        module = getattr(self.root, module_name)
        if learned:
            module.register_parameter(key, nn.Parameter(tensor, requires_grad=False))
        else:
            module.register_buffer(key, tensor)
        return self.graph.get_attr(target)

    def _module_for(self, layer_name: str) -> str:
        if layer_name not in self._modules:
            base = identifier(layer_name)
            name, k = base, 1
            while hasattr(self.root, name):
                name = f"{base}_{k}"
                k += 1
            self.root.add_module(name, nn.Module())
            self._modules[layer_name] = name
        return self._modules[layer_name]


def owned_tensor(values, dtype: torch.dtype) -> torch.Tensor:
    """`values` copied into a fresh C-contiguous `dtype` tensor from torch's own allocator.

    Every way of building a module (from the IR's arrays, which may be transposed views or
    unaligned views of a mapped caffemodel; from a safetensors state; torch.export.load, which
    reads the tensors this made) then holds weights of one layout: same strides and torch's
    allocation alignment. CPU GEMM libraries pick their kernels by stride and alignment, so
    only one layout keeps the round trips bitwise on every CPU."""
    tensor = torch.empty(tuple(values.shape), dtype=dtype)
    if isinstance(values, torch.Tensor):
        tensor.copy_(values)
    else:  # NumPy writes through the tensor's view, read-only (mapped) sources included
        tensor.numpy()[...] = values
    return tensor


def missing_torch_emitters(net: CaffeNet) -> list[str]:
    return [f"{layer.name} ({layer.type})" for layer in net.layers
            if type(converter_of(layer.param)).to_torch is LayerConverter.to_torch]


def build_module(net: CaffeNet, outputs: list[str] | None = None,
                 dtype: torch.dtype = torch.float32,
                 state: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """The net as a GraphModule in eval mode, exactly as its layers are (no passes).

    Returns one tensor for one output, else a tuple in the order of `outputs` (default: the
    blobs nothing consumes). The module's ``input_names`` and ``output_names`` attributes give
    the Caffe names. Weights are `dtype` tensors: learned ones parameters (with
    requires_grad False; set it to fine-tune), BatchNorm statistics buffers.
    """
    missing = missing_torch_emitters(net)
    if missing:
        raise UnsupportedLayerError("layers without a torch emitter: " + ", ".join(missing))
    pairs = net.output_pairs(outputs)
    ctx = TorchGraph(net, dtype, state)
    for name in net.inputs:
        ident = identifier(name)
        ctx.define(name, ctx.graph.create_node("placeholder", ident, name=ident))
    for layer in net.layers:
        ctx._layer = layer
        converter_of(layer.param).to_torch(layer, ctx)
    results = [ctx.value(ssa) for _, ssa in pairs]
    ctx.graph.output(results[0] if len(results) == 1 else tuple(results))
    ctx.graph.lint()
    module = fx.GraphModule(ctx.root, ctx.graph, class_name=identifier(net.name or "CaffeNet"))
    module.input_names = list(net.inputs)
    module.output_names = [public for public, _ in pairs]
    return module.eval()


def prepare(net: CaffeNet, outputs: list[str] | None = None, fold: bool = True,
            fuse: bool = True, dtype: torch.dtype = torch.float32) -> CaffeNet:
    """The IR passes for torch inference: BatchNorm(+Scale) folded into convolutions (in
    float64, stored as `dtype`) and Axpy+ReLU fused, each keeping `outputs` computable."""
    if fold:
        net = passes.fold_batchnorm(net, outputs,
                                    np.float64 if dtype == torch.float64 else np.float32)
    if fuse:
        net = passes.fuse_axpy_relu(net, outputs)
    return net


def to_torch(net: CaffeNet, outputs: list[str] | None = None, fold: bool = True,
             fuse: bool = True, dtype: torch.dtype = torch.float32) -> fx.GraphModule:
    """The net as a torch.fx GraphModule for inference (see `build_module`, `prepare`)."""
    return build_module(prepare(net, outputs, fold, fuse, dtype), outputs, dtype)
