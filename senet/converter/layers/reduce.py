"""Layers that reduce along axes: ArgMax, MVN, Reduction.

ONNX reductions here take their axes as an input (ReduceSum, opset 13 on) or reduce every axis,
so one graph is valid at every opset senet writes (13..22).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    argmax_output, legacy_4d_shape, mvn_groups, reduction_factor, reduction_output,
)

_INT64_MIN = np.iinfo(np.int64).min


@register("ArgMax")
class ArgMax(LayerConverter):
    """Top-k indices (as floats) or values. Caffe orders by (value, index) descending, so
    among equal values the LARGER index comes first. ONNX TopK and a stable sort put the
    smaller index first, so both emitters search the reversed axis and map indices back."""

    def geometry(self, layer, in_shape):
        p = layer.param.argmax_param
        axis = p.axis if p.HasField("axis") else None
        return argmax_output(tuple(in_shape), axis, p.top_k, p.out_max_val, layer.name)

    def infer_shapes(self, layer, in_shapes):
        return [self.geometry(layer, in_shapes[0])[1]]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        axis, _ = self.geometry(layer, in_shapes[0])
        return axis != 0 and super().keeps_batch(layer, in_shapes, out_shapes, batch)

    def to_onnx(self, layer, g):
        x = layer.bottoms[0]
        axis, out_shape = self.geometry(layer, g.shape(x))
        p = layer.param.argmax_param
        name = layer.name
        if axis is None:  # each sample over its flattened values
            flat = g.tmp(name + "/flat")
            g.node("Reshape", [x, g.ints([0, -1], name + "/flat_shape")], [flat])
            x, search_axis = flat, 1
        else:
            search_axis = axis
        values, indices = self._onnx_top_k(g, x, search_axis, p.top_k, name)
        if axis is not None:
            g.node("Identity", [values if p.out_max_val else indices], layer.tops)
            return
        result = indices
        if p.out_max_val:  # [:, 0] indices, [:, 1] values
            result = g.tmp(name + "/both")
            g.node("Concat", [indices, values], [result], axis=1)
        g.node("Reshape", [result, g.ints([0, *out_shape[1:]], name + "/shape")], layer.tops)

    @staticmethod
    def _onnx_top_k(g, x, axis, k, name):
        """(values, float indices) of the k largest along `axis`, ties to the larger index."""
        reversed_x = g.tmp(name + "/reversed")
        g.node("Slice", [x, g.ints([-1], name + "/starts"), g.ints([_INT64_MIN], name + "/ends"),
                         g.ints([axis], name + "/axes"), g.ints([-1], name + "/steps")],
               [reversed_x])
        values, rev_index = g.tmp(name + "/values"), g.tmp(name + "/rev_index")
        g.node("TopK", [reversed_x, g.ints([k], name + "/k")], [values, rev_index],
               axis=axis, largest=1, sorted=1)
        shape, size, last = g.tmp(name + "/in_shape"), g.tmp(name + "/size"), g.tmp(name + "/last")
        g.node("Shape", [x], [shape])
        g.node("Gather", [shape, g.ints([axis], name + "/axis")], [size])
        g.node("Sub", [size, g.ints([1], name + "/one")], [last])
        index, as_float = g.tmp(name + "/index"), g.tmp(name + "/indices")
        g.node("Sub", [last, rev_index], [index])
        g.node("Cast", [index], [as_float], to=1)  # TensorProto.FLOAT
        return values, as_float

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        in_shape = ctx.shape(layer.bottoms[0])
        axis, out_shape = self.geometry(layer, in_shape)
        p = layer.param.argmax_param
        if axis is None:  # (N, C·H·W); a 1-D input has one value per sample
            x, search_axis = ctx.op(torch.reshape, x, (-1, math.prod(in_shape[1:]))), 1
        else:
            search_axis = axis
        # A stable descending sort of the reversed axis: equal values keep reversed order,
        # which is Caffe's larger-index-first (torch.topk promises no tie order).
        ordered = ctx.op(torch.sort, ctx.op(torch.flip, x, [search_axis]), dim=search_axis,
                         descending=True, stable=True)
        values = ctx.op(torch.narrow, ctx.op(operator.getitem, ordered, 0), search_axis, 0,
                        p.top_k)
        rev_index = ctx.op(torch.narrow, ctx.op(operator.getitem, ordered, 1), search_axis, 0,
                           p.top_k)
        last = ctx.op(operator.sub, ctx.method("size", x, search_axis), 1)
        indices = ctx.method("to", ctx.op(operator.sub, last, rev_index), torch.float32)
        if axis is not None:
            ctx.define(layer.tops[0], values if p.out_max_val else indices)
            return
        result = ctx.op(torch.cat, [indices, values], 1) if p.out_max_val else indices
        ctx.emit(layer.tops[0], torch.reshape, result, (-1, *out_shape[1:]))


@register("MVN")
class MVN(LayerConverter):
    """Mean (and variance) normalisation per (n, c) or per sample; the top is 4-D (Caffe
    reshapes it with the legacy accessors); eps is added to the standard deviation."""

    def infer_shapes(self, layer, in_shapes):
        return [legacy_4d_shape(in_shapes[0], layer.name)]

    def to_onnx(self, layer, g):
        x = layer.bottoms[0]
        p = layer.param.mvn_param
        name = layer.name
        groups = mvn_groups(g.shape(x), p.across_channels, name)
        rows = g.tmp(name + "/rows")
        g.node("Reshape", [x, g.ints([0, *groups[1:-1], -1], name + "/rows_shape")], [rows])
        centred = g.tmp(name + "/centred")
        g.node("Sub", [rows, self._onnx_mean(g, rows, groups[-1], name + "/mean")], [centred])
        out = centred
        if p.normalize_variance:
            square, std, denom = g.tmp(name + "/square"), g.tmp(name + "/std"), g.tmp(name + "/den")
            g.node("Mul", [centred, centred], [square])
            g.node("Sqrt", [self._onnx_mean(g, square, groups[-1], name + "/var")], [std])
            g.node("Add", [std, g.const(np.float32(p.eps), name + "/eps")], [denom])
            out = g.tmp(name + "/normalised")
            g.node("Div", [centred, denom], [out])
        out_shape = legacy_4d_shape(g.shape(x), name)
        g.node("Reshape", [out, g.ints([0, *out_shape[1:]], name + "/shape")], layer.tops)

    @staticmethod
    def _onnx_mean(g, rows, count, hint):
        total, mean = g.tmp(hint + "_sum"), g.tmp(hint)
        g.node("ReduceSum", [rows, g.ints([-1], hint + "_axes")], [total], keepdims=1)
        g.node("Mul", [total, g.const(np.float32(1.0 / count), hint + "_scale")], [mean])
        return mean

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        p = layer.param.mvn_param
        in_shape = ctx.shape(layer.bottoms[0])
        groups = mvn_groups(in_shape, p.across_channels, layer.name)
        rows = ctx.op(torch.reshape, x, (-1, *groups[1:]))
        centred = ctx.op(operator.sub, rows, ctx.op(torch.mean, rows, -1, keepdim=True))
        out = centred
        if p.normalize_variance:
            variance = ctx.op(torch.mean, ctx.op(operator.mul, centred, centred), -1,
                              keepdim=True)
            std = ctx.op(operator.add, ctx.op(torch.sqrt, variance), ctx.scalar(p.eps))
            out = ctx.op(operator.truediv, centred, std)
        out_shape = legacy_4d_shape(in_shape, layer.name)
        ctx.emit(layer.tops[0], torch.reshape, out, (-1, *out_shape[1:]))


_OPERATIONS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


@register("Reduction")
class Reduction(LayerConverter):
    """SUM / ASUM / SUMSQ / MEAN over every axis from `axis` on, times coeff."""

    def geometry(self, layer, in_shape):
        p = layer.param.reduction_param
        axis, out_shape = reduction_output(tuple(in_shape), p.axis, layer.name)
        operation = _OPERATIONS[p.operation]
        count = int(np.prod(in_shape[axis:], dtype=np.int64))
        return axis, out_shape, operation, reduction_factor(operation, p.coeff, count)

    def infer_shapes(self, layer, in_shapes):
        return [self.geometry(layer, in_shapes[0])[1]]

    def to_onnx(self, layer, g):
        x = layer.bottoms[0]
        ndim = len(g.shape(x))
        axis, _, operation, factor = self.geometry(layer, g.shape(x))
        name = layer.name
        terms = x
        if operation in ("ASUM", "SUMSQ"):
            terms = g.tmp(name + "/terms")
            g.node("Abs" if operation == "ASUM" else "Mul",
                   [x] if operation == "ASUM" else [x, x], [terms])
        reduced = g.tmp(name + "/reduced")
        if axis == 0:
            # Every axis, the (dynamic) batch included: no axes input reduces them all, and
            # a MEAN's count is then known at run time only.
            op = "ReduceMean" if operation == "MEAN" else "ReduceSum"
            factor = float(np.float32(layer.param.reduction_param.coeff))
            g.node(op, [terms], [reduced], keepdims=0)
        else:
            g.node("ReduceSum", [terms, g.ints(list(range(axis, ndim)), name + "/axes")],
                   [reduced], keepdims=0)
        if factor == 1.0:
            g.node("Identity", [reduced], layer.tops)
        else:
            g.node("Mul", [reduced, g.const(np.float32(factor), name + "/coeff")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        in_shape = ctx.shape(layer.bottoms[0])
        axis, _, operation, factor = self.geometry(layer, in_shape)
        terms = x
        if operation == "ASUM":
            terms = ctx.op(torch.abs, x)
        elif operation == "SUMSQ":
            terms = ctx.op(operator.mul, x, x)
        dims = list(range(axis, len(in_shape)))
        if axis == 0 and operation == "MEAN":  # the count includes the dynamic batch
            reduced = ctx.op(torch.mean, terms, dims)
            factor = float(np.float32(layer.param.reduction_param.coeff))
        else:
            reduced = ctx.op(torch.sum, terms, dims)
        if factor == 1.0:
            ctx.define(layer.tops[0], reduced)
        else:
            ctx.emit(layer.tops[0], operator.mul, reduced, factor)
