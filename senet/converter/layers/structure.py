"""Layers that move data without arithmetic: Input, Split, Concat, Slice, Reshape, Flatten,
Permute."""

from __future__ import annotations

import operator

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    canonical_axis, flatten_output, reshape_output, reshape_span, slice_points,
)
from senet.errors import ShapeError


@register("Input")
class Input(LayerConverter):
    """Graph inputs; the assembly reads their shapes, so nothing is emitted."""

    min_bottoms = max_bottoms = 0
    max_tops = None

    def to_onnx(self, layer, g):
        pass

    def to_torch(self, layer, ctx):
        pass


@register("Split")
class Split(LayerConverter):
    max_tops = None

    def to_onnx(self, layer, g):
        for top in layer.tops:
            g.node("Identity", layer.bottoms, [top])

    def to_torch(self, layer, ctx):
        for top in layer.tops:
            ctx.define(top, ctx.value(layer.bottoms[0]))


@register("Concat")
class Concat(LayerConverter):
    max_bottoms = None

    def axis(self, layer, ndim):
        p = layer.param.concat_param
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        return canonical_axis(axis, ndim, layer.name)

    def infer_shapes(self, layer, in_shapes):
        first = in_shapes[0]
        axis = self.axis(layer, len(first))
        for i, s in enumerate(in_shapes[1:], 1):
            if len(s) != len(first) or any(a != b for k, (a, b) in enumerate(zip(s, first))
                                           if k != axis):
                raise ShapeError(f"bottom[{i}] {list(s)} does not fit bottom[0] {list(first)} "
                                 f"outside axis {axis}", layer=layer.name)
        out = list(first)
        out[axis] = sum(s[axis] for s in in_shapes)
        return [tuple(out)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return (self.axis(layer, len(in_shapes[0])) != 0
                and super().keeps_batch(layer, in_shapes, out_shapes, batch))

    def to_onnx(self, layer, g):
        axis = self.axis(layer, len(g.shape(layer.bottoms[0])))
        g.node("Concat", layer.bottoms, layer.tops, axis=axis)

    def to_torch(self, layer, ctx):
        import torch
        axis = self.axis(layer, len(ctx.shape(layer.bottoms[0])))
        ctx.emit(layer.tops[0], torch.cat, [ctx.value(b) for b in layer.bottoms], axis)


@register("Slice")
class Slice(LayerConverter):
    max_tops = None

    def geometry(self, layer, shape):
        p = layer.param.slice_param
        axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
        axis = canonical_axis(axis, len(shape), layer.name)
        return axis, slice_points(shape[axis], list(p.slice_point), len(layer.tops), layer.name)

    def infer_shapes(self, layer, in_shapes):
        axis, sizes = self.geometry(layer, in_shapes[0])
        outs = []
        for size in sizes:
            s = list(in_shapes[0])
            s[axis] = size
            outs.append(tuple(s))
        return outs

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return ((self.geometry(layer, in_shapes[0])[0] != 0 or len(layer.tops) == 1)
                and super().keeps_batch(layer, in_shapes, out_shapes, batch))

    def to_onnx(self, layer, g):
        axis, sizes = self.geometry(layer, g.shape(layer.bottoms[0]))
        if len(sizes) == 1:
            g.node("Identity", layer.bottoms, layer.tops)
            return
        g.node("Split", [layer.bottoms[0], g.ints(sizes, layer.name + "/sizes")], layer.tops,
               axis=axis)

    def to_torch(self, layer, ctx):
        import torch
        axis, sizes = self.geometry(layer, ctx.shape(layer.bottoms[0]))
        x = ctx.value(layer.bottoms[0])
        if len(sizes) == 1:
            ctx.define(layer.tops[0], x)
            return
        parts = ctx.op(torch.split, x, sizes, axis)
        for i, top in enumerate(layer.tops):
            ctx.emit(top, operator.getitem, parts, i)


@register("Reshape")
class Reshape(LayerConverter):
    def output(self, layer, in_shape):
        p = layer.param.reshape_param
        return reshape_output(tuple(in_shape), list(p.shape.dim), p.axis, p.num_axes, layer.name)

    @staticmethod
    def copies_batch(layer, in_shape) -> bool:
        """Axis 0 of the top is axis 0 of the bottom: kept before the reshaped span, or
        copied by a leading 0 (an explicit size or a -1 there fixes the batch)."""
        p = layer.param.reshape_param
        start, _ = reshape_span(in_shape, p.axis, p.num_axes, layer.name)
        return start > 0 or (len(p.shape.dim) > 0 and p.shape.dim[0] == 0)

    def infer_shapes(self, layer, in_shapes):
        return [self.output(layer, in_shapes[0])]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return (self.copies_batch(layer, in_shapes[0])
                and super().keeps_batch(layer, in_shapes, out_shapes, batch))

    def to_onnx(self, layer, g):
        in_shape = g.shape(layer.bottoms[0])
        out = list(self.output(layer, in_shape))
        if self.copies_batch(layer, in_shape):
            out[0] = 0  # ONNX 0 copies the input dim: the batch stays dynamic
        g.node("Reshape", [layer.bottoms[0], g.ints(out, layer.name + "/shape")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        in_shape = ctx.shape(layer.bottoms[0])
        target = list(self.output(layer, in_shape))
        p = layer.param.reshape_param
        dims = list(p.shape.dim)
        start, _ = reshape_span(in_shape, p.axis, p.num_axes, layer.name)
        # Caffe's rule at run time, so any batch works as it would in Caffe: the -1 stays
        # inferred and a copied batch axis stays the input's batch.
        inferred = -1 in dims
        if inferred:
            target[start + dims.index(-1)] = -1
        x = ctx.value(layer.bottoms[0])
        if start > 0 or (dims and dims[0] == 0):
            target[0] = ctx.method("size", x, 0) if inferred else -1
        ctx.emit(layer.tops[0], torch.reshape, x, tuple(target))


@register("Flatten")
class Flatten(LayerConverter):
    def output(self, layer, in_shape):
        p = layer.param.flatten_param
        return flatten_output(tuple(in_shape), p.axis, p.end_axis, layer.name)

    def infer_shapes(self, layer, in_shapes):
        return [self.output(layer, in_shapes[0])]

    def to_onnx(self, layer, g):
        in_shape = g.shape(layer.bottoms[0])
        out = list(self.output(layer, in_shape))
        axis = canonical_axis(layer.param.flatten_param.axis, len(in_shape), layer.name)
        if axis > 0:
            out[0] = 0
        g.node("Reshape", [layer.bottoms[0], g.ints(out, layer.name + "/shape")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        p = layer.param.flatten_param
        ndim = len(ctx.shape(layer.bottoms[0]))
        self.output(layer, ctx.shape(layer.bottoms[0]))  # checks the axes
        ctx.emit(layer.tops[0], torch.flatten, ctx.value(layer.bottoms[0]),
                 canonical_axis(p.axis, ndim, layer.name),
                 canonical_axis(p.end_axis, ndim, layer.name))


@register("Permute", origin="SSD (weiliu89/caffe)")
class Permute(LayerConverter):
    """SSD fork's Permute: axes reordered by permute_param.order (missing axes keep order)."""

    def order(self, layer, ndim):
        given = [int(a) for a in layer.param.permute_param.order]
        if len(set(given)) != len(given) or any(a >= ndim for a in given):
            raise ShapeError(f"permute order {given} is invalid for {ndim} axes",
                             layer=layer.name)
        return given + [a for a in range(ndim) if a not in given]

    def infer_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        return [tuple(x[a] for a in self.order(layer, len(x)))]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return (self.order(layer, len(in_shapes[0]))[0] == 0
                and super().keeps_batch(layer, in_shapes, out_shapes, batch))

    def to_onnx(self, layer, g):
        order = self.order(layer, len(g.shape(layer.bottoms[0])))
        g.node("Transpose", layer.bottoms, layer.tops, perm=order)

    def to_torch(self, layer, ctx):
        import torch
        order = self.order(layer, len(ctx.shape(layer.bottoms[0])))
        ctx.emit(layer.tops[0], torch.permute, ctx.value(layer.bottoms[0]), order)
