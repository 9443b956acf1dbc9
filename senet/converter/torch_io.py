"""Converted torch modules as files: a torch.export program (.pt2) and safetensors weights with
the graph spec in their metadata (read back by `load_safetensors`, also ``senet.load``).

Both are written to a temporary file in the target folder and renamed when complete.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from senet.converter.graph import CaffeNet
from senet.converter.spec import net_from_spec, net_to_spec
from senet.converter.to_torch import build_module, identifier, prepare, to_torch
from senet.errors import ModelFileError, ShapeError
from senet.files import atomic_output

GRAPH_KEY = "senet.graph"  # safetensors metadata entry holding the JSON graph spec


def export_program(net: CaffeNet, outputs: list[str] | None = None, fold: bool = True,
                   example_batch: int = 1) -> torch.export.ExportedProgram:
    """The converted module (see to_torch.to_torch) as a torch.export program whose batch
    dimension is dynamic (any batch ≥ 1; every input shares it), or, for a net that fixes
    its batch (CaffeNet.batch_fixed_by), one taking exactly the net's input shapes.

    torch.export treats a size-1 example dimension as a constant, so a batch of 1 is traced
    with 2 examples; the program is the same."""
    module = to_torch(net, outputs, fold=fold)
    if net.batch_fixed_by() is not None:
        examples = tuple(torch.zeros(tuple(shape)) for shape in net.inputs.values())
        return torch.export.export(module, examples)
    batch = torch.export.Dim("batch", min=1)
    n = max(2, int(example_batch))
    examples = tuple(torch.zeros((n,) + tuple(shape[1:])) for shape in net.inputs.values())
    dynamic = {identifier(name): {0: batch} for name in net.inputs}
    return torch.export.export(module, examples, dynamic_shapes=dynamic)


def export_pt2(net: CaffeNet, path: str | os.PathLike, outputs: list[str] | None = None,
               fold: bool = True, example_batch: int = 1) -> None:
    """Save `export_program(...)` with torch.export.save. Load it with
    ``torch.export.load(path).module()`` after ``import senet`` (which registers the senet
    ops); it returns one tensor for one output, else a tuple in the ONNX graph's order.
    The input and output names are in the extra file ``senet.json``."""
    program = export_program(net, outputs, fold, example_batch)
    names = {"inputs": list(net.inputs),
             "outputs": [public for public, _ in net.output_pairs(outputs)]}
    with atomic_output(path) as tmp:
        torch.export.save(program, tmp, extra_files={"senet.json": json.dumps(names)})


def save_safetensors(net: CaffeNet, path: str | os.PathLike, outputs: list[str] | None = None,
                     fold: bool = True) -> None:
    """Weights of the converted module (its state_dict, named ``<layer>.<weight>``) in a
    .safetensors file, with the graph spec (senet.converter.spec, after the passes) as JSON in
    the metadata entry ``senet.graph``. `load_safetensors` rebuilds the module."""
    prepared = prepare(net, outputs, fold=fold)
    module = build_module(prepared, outputs)
    tensors = dict(module.state_dict())
    metadata = {"format": "pt", GRAPH_KEY: json.dumps(net_to_spec(prepared, outputs))}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> torch.fx.GraphModule:
    """The module `save_safetensors` wrote, rebuilt from its graph spec and weights (nothing is
    unpickled), in eval mode. ModelFileError for a file that is not one."""
    where = str(path)
    try:
        with safe_open(where, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as error:
        raise ModelFileError(f"cannot read as safetensors: {error}", where=where) from None
    if GRAPH_KEY not in metadata:
        raise ModelFileError("the safetensors file has no senet graph spec in its metadata",
                             where=where, hint="was it written by senet's save_safetensors?")
    try:
        spec = json.loads(metadata[GRAPH_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"the graph spec is not JSON: {error}", where=where) from None
    net, outputs = net_from_spec(spec, where)
    try:
        module = build_module(net, outputs, state=tensors)
    except ShapeError as error:
        raise ModelFileError(error.what, where=where, layer=error.layer) from None
    unused = sorted(set(tensors) - set(module.state_dict()))
    if unused:
        raise ModelFileError(f"tensors the graph does not use: {', '.join(unused[:5])}",
                             where=where)
    return module
