"""The IR: a Caffe net as an ordered list of layers over SSA blob names, with shapes.

Caffe lets a layer overwrite a blob in place (BatchNorm, Scale, ReLU on the same name). The IR
gives every write its own name so that each value exists once: the final write of a Caffe blob
keeps the plain Caffe name (what users ask for with --outputs), earlier writes are named
``blob#k`` with k the write index; except that a net input always keeps its Caffe name (the
name users feed), so a layer rewriting an input writes ``input#k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.rpn import RpnSettings
from senet.errors import GraphError

Shape = tuple[int, ...]


@dataclass
class Layer:
    """One Caffe layer in the IR."""

    name: str
    type: str
    param: pb.LayerParameter
    bottoms: list[str]
    tops: list[str]
    blobs: list[np.ndarray] = field(default_factory=list)
    # Set by passes.fuse_axpy_relu: the layer's output goes through a ReLU (negative_slope 0).
    fused_relu: bool = False


@dataclass
class CaffeNet:
    """An inference net: named inputs with shapes, layers in execution order, blob shapes."""

    name: str
    inputs: dict[str, Shape]
    layers: list[Layer]
    shapes: dict[str, Shape] = field(default_factory=dict)
    # Caffe blob name -> SSA name of its final value.
    final_names: dict[str, str] = field(default_factory=dict)
    # The weights file when blobs are views of it (lets writers copy file to file).
    weight_file: object | None = None
    # Run-time settings of py-faster-rcnn's proposal layers (its cfg.TEST, not in the files).
    rpn: RpnSettings = field(default_factory=RpnSettings)

    def producers(self) -> dict[str, Layer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[Layer]]:
        uses: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                uses.setdefault(b, []).append(layer)
        return uses

    def default_outputs(self) -> list[str]:
        """Blobs nothing consumes, in production order (Caffe's net outputs). Where a Silence
        consumes every one (colorization's deploy silences its result, which Caffe users read
        by name), the blobs Silence consumes."""
        used = {b for layer in self.layers for b in layer.bottoms}
        tops = [t for layer in self.layers for t in layer.tops]
        outs = [t for t in tops if t not in used]
        if not outs:
            silenced = {b for layer in self.layers if layer.type == "Silence"
                        for b in layer.bottoms}
            outs = [t for t in tops if t in silenced]
        return outs or list(self.inputs)

    def caffe_name(self, ssa: str) -> str:
        """The Caffe blob that the SSA name `ssa` is a version of."""
        if self.final_names.get(ssa) == ssa:
            return ssa  # a final write keeps its Caffe name, even one that contains '#'
        return ssa.rsplit("#", 1)[0]

    def final_blobs(self) -> list[str]:
        """Caffe names of the blobs the layers write, in the order of their final writes."""
        return [self.caffe_name(top) for layer in self.layers for top in layer.tops
                if self.final_names.get(self.caffe_name(top)) == top]

    def resolve_output(self, caffe_name: str) -> str:
        """SSA name of the final value of a Caffe blob, or GraphError listing what exists."""
        if caffe_name in self.final_names:
            return self.final_names[caffe_name]
        known = ", ".join(sorted(self.final_names)[:8])
        raise GraphError(f"no blob named '{caffe_name}' in the net", hint=f"blobs include {known}")

    def output_pairs(self, outputs: list[str] | None = None) -> list[tuple[str, str]]:
        """(public name, SSA name) of each graph output, in order: the requested Caffe blobs
        (each its final value), or by default the blobs nothing consumes, named after their
        Caffe blob. GraphError for an unknown or repeated name."""
        if outputs:
            pairs = [(name, self.resolve_output(name)) for name in outputs]
        else:
            pairs = [(self.caffe_name(ssa), ssa) for ssa in self.default_outputs()]
        if len({public for public, _ in pairs}) != len(pairs):
            raise GraphError("an output is requested twice")
        return pairs

    def batch_fixed_by(self) -> str | None:
        """Why the net takes only its inputs' batch size, or None when any batch works: the
        inputs share axis 0 and every layer keeps it the batch (LayerConverter.keeps_batch);
        emitters then make the batch dynamic, else every shape is static."""
        from senet.converter.layers import converter_of  # the registry imports this module
        if not self.inputs:
            return None
        shapes = list(self.inputs.values())
        if any(not s for s in shapes):
            return "an input has no batch axis"
        if len({s[0] for s in shapes}) > 1:
            return "the inputs have different batch sizes"
        batch = shapes[0][0]
        for layer in self.layers:
            if not converter_of(layer.param).keeps_batch(
                    layer, [self.shapes[b] for b in layer.bottoms],
                    [self.shapes[t] for t in layer.tops], batch):
                return f"layer '{layer.name}' ({layer.type}) spans the batch axis"
        return None

    def data_dependent_values(self) -> set[str]:
        """SSA names of the tops of data-dependent layers (LayerConverter.data_dependent) and
        of every value computed from them: their static shapes are Caffe's setup shapes, their
        sizes at run time depend on the values (emitters declare them without fixed sizes)."""
        from senet.converter.layers import converter_of  # the registry imports this module
        tainted: set[str] = set()
        for layer in self.layers:
            if converter_of(layer.param).data_dependent or tainted.intersection(layer.bottoms):
                tainted.update(layer.tops)
        return tainted

    def batch_blobs(self) -> set[str]:
        """SSA names of the blobs whose axis 0 is the batch: the inputs and the tops of
        every layer reading one, except tops that are the same for every image
        (LayerConverter.batch_independent), which keep a fixed axis 0 in a net with a
        dynamic batch."""
        from senet.converter.layers import converter_of  # the registry imports this module
        carried = set(self.inputs)
        for layer in self.layers:
            if (not converter_of(layer.param).batch_independent
                    and any(b in carried for b in layer.bottoms)):
                carried.update(layer.tops)
        return carried

    def parameter_count(self) -> int:
        return int(sum(b.size for layer in self.layers for b in layer.blobs))


def assign_ssa_names(inputs: list[str], layers: list[tuple[pb.LayerParameter, list]]
                     ) -> tuple[list[str], list[Layer], dict[str, str]]:
    """Build IR layers with SSA names from Caffe layers given as (param, blobs) in order.

    Raises GraphError for a bottom nothing produces before it is used.
    """
    writes: dict[str, int] = {}
    input_names = set(inputs)
    for name in inputs:
        writes[name] = writes.get(name, 0) + 1
    for param, _ in layers:
        for top in param.top:
            writes[top] = writes.get(top, 0) + 1

    seen: dict[str, int] = {}
    current: dict[str, str] = {}

    def new_version(blob: str) -> str:
        k = seen.get(blob, 0)
        seen[blob] = k + 1
        plain = k == 0 if blob in input_names else k == writes[blob] - 1
        ssa = blob if plain else f"{blob}#{k}"
        current[blob] = ssa
        return ssa

    ssa_inputs = [new_version(name) for name in inputs]
    out_layers = []
    for param, blobs in layers:
        bottoms = []
        for i, b in enumerate(param.bottom):
            if b not in current:
                raise GraphError(f"bottom '{b}' (index {i}) is not produced by any earlier layer",
                                 layer=param.name)
            bottoms.append(current[b])
        for i, t in enumerate(param.top):
            # Caffe's Net::AppendTop: rewriting a blob is only in place at the same index
            if t in current and not (i < len(param.bottom) and param.bottom[i] == t):
                raise GraphError(f"top '{t}' is produced by multiple sources (Caffe writes a "
                                 "blob again only in place, as top i = bottom i)",
                                 layer=param.name)
        tops = [new_version(t) for t in param.top]
        out_layers.append(Layer(name=param.name, type=param.type, param=param,
                                bottoms=bottoms, tops=tops, blobs=list(blobs)))
    return ssa_inputs, out_layers, dict(current)
