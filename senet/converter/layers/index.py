"""Layers that pick, repeat or produce whole rows: Tile, Embed, BatchReindex, Filter, Parameter,
Silence.

Caffe's index blobs are floats read with static_cast<int> (truncation toward zero). Caffe
CHECKs BatchReindex's indices and leaves Embed's unchecked (undefined behaviour); the converted
models refuse any index outside the table at run time (onnxruntime's Gather and torch's
indexing both raise), negative ones included, which ONNX Gather would otherwise wrap around.
"""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import batch_reindex_output, filter_output, tile_output
from senet.errors import ShapeError

_FLOAT, _INT64 = 1, 7  # TensorProto data types
_PAST_ANY_AXIS = np.iinfo(np.int64).max


def _onnx_row_index(g, indices: str, hint: str) -> str:
    """Float indices as int64 rows: truncated toward zero, negative ones made out of range."""
    as_int, negative, rows = g.tmp(hint + "_int"), g.tmp(hint + "_negative"), g.tmp(hint)
    g.node("Cast", [indices], [as_int], to=_INT64)
    g.node("Less", [as_int, g.ints(0, hint + "_zero")], [negative])
    g.node("Where", [negative, g.ints(_PAST_ANY_AXIS, hint + "_invalid"), as_int], [rows])
    return rows


def _torch_row_index(ctx, indices):
    import torch
    return ctx.method("to", indices, torch.int64)  # truncates toward zero, as static_cast<int>


@register("Tile")
class Tile(LayerConverter):
    def geometry(self, layer, in_shape):
        p = layer.param.tile_param
        if not p.HasField("tiles"):
            raise ShapeError("Tile needs tile_param.tiles", layer=layer.name)
        axis, out = tile_output(tuple(in_shape), p.axis, p.tiles, layer.name)
        repeats = [1] * len(in_shape)
        repeats[axis] = p.tiles
        return repeats, out

    def infer_shapes(self, layer, in_shapes):
        return [self.geometry(layer, in_shapes[0])[1]]

    def to_onnx(self, layer, g):
        repeats, _ = self.geometry(layer, g.shape(layer.bottoms[0]))
        g.node("Tile", [layer.bottoms[0], g.ints(repeats, layer.name + "/repeats")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        repeats, _ = self.geometry(layer, ctx.shape(layer.bottoms[0]))
        ctx.emit(layer.tops[0], torch.Tensor.repeat, ctx.value(layer.bottoms[0]), repeats)


@register("Embed")
class Embed(LayerConverter):
    """y = W[int(x)] (+ b): W is (input_dim, num_output); the top is x's shape + (num_output,)."""

    def blob_shapes(self, layer, in_shapes):
        p = layer.param.embed_param
        if not p.num_output or not p.input_dim:
            raise ShapeError("Embed needs embed_param.num_output and input_dim",
                             layer=layer.name)
        weight = (p.input_dim, p.num_output)
        return [weight, (p.num_output,)] if p.bias_term else [weight]

    def infer_shapes(self, layer, in_shapes):
        return [tuple(in_shapes[0]) + (layer.param.embed_param.num_output,)]

    def to_onnx(self, layer, g):
        name = layer.name
        rows = _onnx_row_index(g, layer.bottoms[0], name + "/rows")
        table = g.const(layer.blobs[0], name + "/weight")
        if len(layer.blobs) == 1:
            g.node("Gather", [table, rows], layer.tops, axis=0)
            return
        picked = g.tmp(name + "/picked")
        g.node("Gather", [table, rows], [picked], axis=0)
        g.node("Add", [picked, g.const(layer.blobs[1], name + "/bias")], layer.tops)

    def to_torch(self, layer, ctx):
        import operator

        from torch.nn import functional as F
        rows = _torch_row_index(ctx, ctx.value(layer.bottoms[0]))
        weight = ctx.parameter("weight", layer.blobs[0])
        if len(layer.blobs) == 1:
            ctx.emit(layer.tops[0], F.embedding, rows, weight)
            return
        picked = ctx.op(F.embedding, rows, weight)
        ctx.emit(layer.tops[0], operator.add, picked, ctx.parameter("bias", layer.blobs[1]))


@register("BatchReindex")
class BatchReindex(LayerConverter):
    """top[i] = bottom[0][int(bottom[1][i])] along axis 0."""

    min_bottoms = max_bottoms = 2

    def infer_shapes(self, layer, in_shapes):
        return [batch_reindex_output(tuple(in_shapes[0]), tuple(in_shapes[1]), layer.name)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return False  # the top's rows are the index list's, whatever its length

    def to_onnx(self, layer, g):
        rows = _onnx_row_index(g, layer.bottoms[1], layer.name + "/rows")
        g.node("Gather", [layer.bottoms[0], rows], layer.tops, axis=0)

    def to_torch(self, layer, ctx):
        import torch
        rows = _torch_row_index(ctx, ctx.value(layer.bottoms[1]))
        ctx.emit(layer.tops[0], torch.index_select, ctx.value(layer.bottoms[0]), 0, rows)


@register("Filter")
class Filter(LayerConverter):
    """Each bottom but the last keeps the samples whose selector (the last bottom) is non-zero
    (NaN counts as non-zero, as in C++). How many is known only at run time."""

    min_bottoms, max_bottoms, max_tops = 2, None, None

    def check_arity(self, layer):
        super().check_arity(layer)
        if len(layer.tops) != len(layer.bottoms) - 1:
            raise ShapeError(f"Filter gives one top per bottom but the selector: "
                             f"{len(layer.bottoms) - 1}, got {len(layer.tops)}",
                             layer=layer.name)

    def infer_shapes(self, layer, in_shapes):
        return filter_output([tuple(s) for s in in_shapes], layer.name)

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return False  # the tops have as many rows as the selector picks

    def to_onnx(self, layer, g):
        name = layer.name
        flat, zero, keep = g.tmp(name + "/selector"), g.tmp(name + "/zero"), g.tmp(name + "/keep")
        g.node("Reshape", [layer.bottoms[-1], g.ints([-1], name + "/flat")], [flat])
        g.node("Equal", [flat, g.const(np.float32(0), name + "/zero_value")], [zero])
        g.node("Not", [zero], [keep])
        found, rows = g.tmp(name + "/found"), g.tmp(name + "/rows")
        g.node("NonZero", [keep], [found])
        g.node("Reshape", [found, g.ints([-1], name + "/rows_shape")], [rows])
        for bottom, top in zip(layer.bottoms[:-1], layer.tops):
            g.node("Gather", [bottom, rows], [top], axis=0)

    def to_torch(self, layer, ctx):
        import operator

        import torch
        selector = ctx.op(torch.reshape, ctx.value(layer.bottoms[-1]), (-1,))
        keep = ctx.op(operator.ne, selector, 0)
        rows = ctx.op(torch.reshape, ctx.op(torch.nonzero, keep), (-1,))
        for bottom, top in zip(layer.bottoms[:-1], layer.tops):
            ctx.emit(top, torch.index_select, ctx.value(bottom), 0, rows)


@register("Parameter")
class Parameter(LayerConverter):
    """No bottoms; the top is the layer's one learned blob (shape from parameter_param)."""

    min_bottoms = max_bottoms = 0

    def blob_shapes(self, layer, in_shapes):
        return [tuple(int(d) for d in layer.param.parameter_param.shape.dim)]

    def infer_shapes(self, layer, in_shapes):
        return self.blob_shapes(layer, in_shapes)

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return False  # axis 0 of the top is the stored blob's

    def to_onnx(self, layer, g):
        g.node("Identity", [g.const(layer.blobs[0], layer.name + "/blob")], layer.tops)

    def to_torch(self, layer, ctx):
        ctx.define(layer.tops[0], ctx.parameter("weight", layer.blobs[0]))


@register("Silence")
class Silence(LayerConverter):
    """Consumes its bottoms so that they are no net outputs; computes nothing."""

    max_bottoms, min_tops, max_tops = None, 0, 0

    def infer_shapes(self, layer, in_shapes):
        return []

    def to_onnx(self, layer, g):
        pass

    def to_torch(self, layer, ctx):
        pass
