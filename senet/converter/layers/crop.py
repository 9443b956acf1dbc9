"""Crop: the first bottom cut to the second bottom's size from `axis` on, at given offsets."""

from __future__ import annotations

import operator

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import crop_geometry


def crop_window(layer, in_shapes) -> list[tuple[int, int, int]]:
    """(axis, start, end) of every axis the crop changes (Caffe's rule in
    semantics.crop_geometry); axes it keeps whole are left out, so an uncropped batch axis
    stays dynamic."""
    x, ref = in_shapes
    p = layer.param.crop_param
    offsets, out = crop_geometry(tuple(x), tuple(ref), p.axis, list(p.offset), layer.name)
    return [(i, off, off + size) for i, (off, size, full) in enumerate(zip(offsets, out, x))
            if off or size != full]


@register("Crop")
class Crop(LayerConverter):
    min_bottoms = max_bottoms = 2

    def infer_shapes(self, layer, in_shapes):
        p = layer.param.crop_param
        _, out = crop_geometry(tuple(in_shapes[0]), tuple(in_shapes[1]), p.axis,
                               list(p.offset), layer.name)
        return [out]

    def to_onnx(self, layer, g):
        cuts = crop_window(layer, [g.shape(b) for b in layer.bottoms])
        if not cuts:
            g.node("Identity", [layer.bottoms[0]], layer.tops)
            return
        axes, starts, ends = zip(*cuts)
        g.node("Slice", [layer.bottoms[0], g.ints(starts, layer.name + "/starts"),
                         g.ints(ends, layer.name + "/ends"), g.ints(axes, layer.name + "/axes")],
               layer.tops)

    def to_torch(self, layer, ctx):
        x = ctx.value(layer.bottoms[0])
        cuts = crop_window(layer, [ctx.shape(b) for b in layer.bottoms])
        if not cuts:
            ctx.define(layer.tops[0], x)
            return
        index = [slice(None)] * (cuts[-1][0] + 1)
        for axis, start, end in cuts:
            index[axis] = slice(start, end)
        ctx.emit(layer.tops[0], operator.getitem, x, tuple(index))
