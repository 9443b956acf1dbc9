"""InnerProduct and Softmax."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import canonical_axis, inner_product_fan_in


@register("InnerProduct")
class InnerProduct(LayerConverter):
    def blob_shapes(self, layer, in_shapes):
        p = layer.param.inner_product_param
        _, k = inner_product_fan_in(in_shapes[0], p.axis, layer.name)
        shapes = [(k, p.num_output) if p.transpose else (p.num_output, k)]
        if p.bias_term:
            shapes.append((p.num_output,))
        return shapes

    def infer_shapes(self, layer, in_shapes):
        p = layer.param.inner_product_param
        axis, _ = inner_product_fan_in(in_shapes[0], p.axis, layer.name)
        return [tuple(in_shapes[0][:axis]) + (p.num_output,)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        axis, _ = inner_product_fan_in(in_shapes[0], layer.param.inner_product_param.axis,
                                       layer.name)
        return axis > 0 and super().keeps_batch(layer, in_shapes, out_shapes, batch)

    def to_onnx(self, layer, g):
        p = layer.param.inner_product_param
        x = layer.bottoms[0]
        axis, k = inner_product_fan_in(g.shape(x), p.axis, layer.name)
        weight = layer.blobs[0]
        bias = [g.const(layer.blobs[1], layer.name + "/bias")] if p.bias_term else []
        if axis == 1:
            # Gemm computes x·Wᵀ (transB) for Caffe's O×K layout, x·W for the K×O one.
            w = g.const(weight, layer.name + "/weight")
            flat = x
            if len(g.shape(x)) != 2:
                flat = g.tmp(layer.name + "/flat")
                g.node("Flatten", [x], [flat], axis=1)
            g.node("Gemm", [flat, w] + bias, layer.tops, transB=0 if p.transpose else 1)
            return
        # Leading axes are kept: flatten the trailing ones, multiply, add.
        flat = g.tmp(layer.name + "/flat")
        g.node("Reshape", [x, g.ints([0] * axis + [k], layer.name + "/flat_shape")], [flat])
        wt = weight if p.transpose else np.ascontiguousarray(weight.T)
        product = g.tmp(layer.name + "/matmul") if bias else layer.tops[0]
        g.node("MatMul", [flat, g.const(wt, layer.name + "/weight_t")], [product])
        if bias:
            g.node("Add", [product, bias[0]], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        p = layer.param.inner_product_param
        shape = ctx.shape(layer.bottoms[0])
        axis, _ = inner_product_fan_in(shape, p.axis, layer.name)
        x = ctx.value(layer.bottoms[0])
        if len(shape) > axis + 1:  # every axis from `axis` on is one input vector
            x = ctx.op(torch.flatten, x, axis)
        # F.linear multiplies by Wᵀ: Caffe's O×K layout as is, the transposed K×O one turned
        weight = layer.blobs[0].T if p.transpose else layer.blobs[0]
        weight = ctx.parameter("weight", weight)
        bias = ctx.parameter("bias", layer.blobs[1]) if p.bias_term else None
        ctx.emit(layer.tops[0], F.linear, x, weight, bias)


@register("Softmax")
class Softmax(LayerConverter):
    def infer_shapes(self, layer, in_shapes):
        canonical_axis(layer.param.softmax_param.axis, len(in_shapes[0]), layer.name)
        return [in_shapes[0]]

    def to_onnx(self, layer, g):
        axis = canonical_axis(layer.param.softmax_param.axis, len(g.shape(layer.bottoms[0])),
                              layer.name)
        g.node("Softmax", layer.bottoms, layer.tops, axis=axis)

    def to_torch(self, layer, ctx):
        import torch
        axis = canonical_axis(layer.param.softmax_param.axis, len(ctx.shape(layer.bottoms[0])),
                              layer.name)
        ctx.emit(layer.tops[0], torch.softmax, ctx.value(layer.bottoms[0]), axis)
