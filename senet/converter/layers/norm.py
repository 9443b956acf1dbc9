"""Normalisation and affine layers: BatchNorm, Scale, Bias, LRN."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    batch_statistics_axes, batchnorm_statistics, batchnorm_uses_batch_statistics,
    broadcast_shape_for, canonical_axis, scale_param_shape,
)
from senet.errors import ShapeError


@register("BatchNorm")
class BatchNorm(LayerConverter):
    """Inference BatchNorm with Caffe's stored (mean·f, var·f, f), or, with an explicit
    `use_global_stats: false`, the batch's own mean and biased variance over every axis but 1
    (what Caffe computes then, even in TEST); no affine part (that is the following Scale
    layer)."""

    def blob_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        if len(x) < 2:
            raise ShapeError(f"BatchNorm needs N×C… input, got {list(x)}", layer=layer.name)
        return [(x[1],), (x[1],), (1,)]

    def to_onnx(self, layer, g):
        if batchnorm_uses_batch_statistics(layer.param):
            self._batch_statistics_to_onnx(layer, g)
            return
        mean, var = batchnorm_statistics(*layer.blobs[:3])
        channels = mean.shape[0]
        eps = float(layer.param.batch_norm_param.eps)
        g.node("BatchNormalization",
               [layer.bottoms[0], g.const(np.ones(channels, np.float32), layer.name + "/one"),
                g.const(np.zeros(channels, np.float32), layer.name + "/zero"),
                g.const(mean, layer.name + "/mean"), g.const(var, layer.name + "/var")],
               layer.tops, epsilon=eps)

    def _batch_statistics_to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        axes = batch_statistics_axes(len(g.shape(x)))

        centered, square, shifted, std = (g.tmp(f"{name}/{h}")
                                          for h in ("centered", "square", "shifted", "std"))
        g.node("Sub", [x, g.reduce_mean(x, axes, f"{name}/mean")], [centered])
        g.node("Mul", [centered, centered], [square])
        eps = g.const(np.array(layer.param.batch_norm_param.eps, np.float32), name + "/eps")
        g.node("Add", [g.reduce_mean(square, axes, f"{name}/var"), eps], [shifted])
        g.node("Sqrt", [shifted], [std])
        g.node("Div", [centered, std], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        x = ctx.value(layer.bottoms[0])
        eps = ctx.scalar(layer.param.batch_norm_param.eps)
        if batchnorm_uses_batch_statistics(layer.param):
            axes = batch_statistics_axes(len(ctx.shape(layer.bottoms[0])))
            centered = ctx.op(torch.sub, x, ctx.op(torch.mean, x, axes, keepdim=True))
            var = ctx.op(torch.mean, ctx.op(torch.mul, centered, centered), axes, keepdim=True)
            ctx.emit(layer.tops[0], torch.div, centered,
                     ctx.op(torch.sqrt, ctx.op(torch.add, var, eps)))
            return
        mean, var = batchnorm_statistics(*layer.blobs[:3])
        ctx.emit(layer.tops[0], F.batch_norm, x, ctx.buffer("running_mean", mean),
                 ctx.buffer("running_var", var), training=False, eps=eps)


class _Affine(LayerConverter):
    """Shared shape logic of Scale and Bias: the operand covers input axes from `axis` on."""

    max_bottoms = 2
    onnx_op = ""

    def params(self, layer):
        raise NotImplementedError

    def operand_shape(self, layer, in_shapes):
        axis, num_axes = self.params(layer)
        x = in_shapes[0]
        if len(in_shapes) == 2:
            operand = tuple(in_shapes[1])
            a = canonical_axis(axis, len(x), layer.name) if operand else 0
            if tuple(x[a:a + len(operand)]) != operand:
                raise ShapeError(f"bottom[1] {list(operand)} does not match bottom[0] {list(x)} "
                                 f"from axis {axis}", layer=layer.name)
            return a, operand
        shape = scale_param_shape(x, axis, num_axes, layer.name)
        return (canonical_axis(axis, len(x), layer.name) if x else 0), shape

    def infer_shapes(self, layer, in_shapes):
        self.operand_shape(layer, in_shapes)
        return [in_shapes[0]]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        """A learned blob starting at axis 0 has one value per sample of this batch."""
        axis, shape = self.operand_shape(layer, in_shapes)
        learned_on_batch = axis == 0 and len(shape) > 0 and bool(
            self.blob_shapes(layer, in_shapes))
        return not learned_on_batch and super().keeps_batch(layer, in_shapes, out_shapes, batch)

    def emit(self, layer, g, x, operand_blob_or_name, out, axis, operand_shape, learned):
        ndim = len(g.shape(x))
        target = broadcast_shape_for(operand_shape, ndim, axis)
        if learned:
            operand = g.const(np.asarray(operand_blob_or_name).reshape(target),
                              f"{layer.name}/{self.onnx_op.lower()}")
        else:
            operand = operand_blob_or_name
            trailing = len(target) - len(operand_shape)
            if trailing:
                expanded = g.tmp(layer.name + "/operand")
                g.node("Unsqueeze", [operand, g.ints(list(range(len(operand_shape),
                                                                 len(target))),
                                                       layer.name + "/axes")], [expanded])
                operand = expanded
        g.node(self.onnx_op, [x, operand], [out])

    def _broadcast(self, layer, ctx):
        in_shapes = [ctx.shape(b) for b in layer.bottoms]
        axis, shape = self.operand_shape(layer, in_shapes)
        return shape, broadcast_shape_for(shape, len(in_shapes[0]), axis)

    def learned_operand(self, layer, ctx, blob, key: str):
        """A learned blob registered as `key`, shaped to broadcast against bottom[0]."""
        _, target = self._broadcast(layer, ctx)
        return ctx.parameter(key, np.asarray(blob).reshape(target))

    def bottom_operand(self, layer, ctx):
        """bottom[1] with trailing axes added so that it broadcasts against bottom[0]."""
        import torch
        shape, target = self._broadcast(layer, ctx)
        operand = ctx.value(layer.bottoms[1])
        for _ in range(len(target) - len(shape)):
            operand = ctx.op(torch.unsqueeze, operand, -1)
        return operand


@register("Scale")
class Scale(_Affine):
    onnx_op = "Mul"

    def params(self, layer):
        p = layer.param.scale_param
        return p.axis, p.num_axes

    def blob_shapes(self, layer, in_shapes):
        _, shape = self.operand_shape(layer, in_shapes)
        n = (1 if len(in_shapes) == 1 else 0) + int(layer.param.scale_param.bias_term)
        return [shape] * n

    def to_onnx(self, layer, g):
        in_shapes = [g.shape(b) for b in layer.bottoms]
        axis, shape = self.operand_shape(layer, in_shapes)
        learned = len(layer.bottoms) == 1
        operand = layer.blobs[0] if learned else layer.bottoms[1]
        has_bias = layer.param.scale_param.bias_term
        scaled = g.tmp(layer.name + "/scaled") if has_bias else layer.tops[0]
        self.emit(layer, g, layer.bottoms[0], operand, scaled, axis, shape, learned)
        if has_bias:
            bias = layer.blobs[1 if learned else 0]
            ndim = len(in_shapes[0])
            target = broadcast_shape_for(shape, ndim, axis)
            g.node("Add", [scaled, g.const(np.asarray(bias).reshape(target), layer.name + "/bias")],
                   layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        learned = len(layer.bottoms) == 1
        factor = (self.learned_operand(layer, ctx, layer.blobs[0], "weight") if learned
                  else self.bottom_operand(layer, ctx))
        if not layer.param.scale_param.bias_term:
            ctx.emit(layer.tops[0], torch.mul, x, factor)
            return
        scaled = ctx.op(torch.mul, x, factor)
        bias = self.learned_operand(layer, ctx, layer.blobs[1 if learned else 0], "bias")
        ctx.emit(layer.tops[0], torch.add, scaled, bias)


@register("Bias")
class Bias(_Affine):
    onnx_op = "Add"

    def params(self, layer):
        p = layer.param.bias_param
        return p.axis, p.num_axes

    def blob_shapes(self, layer, in_shapes):
        _, shape = self.operand_shape(layer, in_shapes)
        return [shape] if len(in_shapes) == 1 else []

    def to_onnx(self, layer, g):
        in_shapes = [g.shape(b) for b in layer.bottoms]
        axis, shape = self.operand_shape(layer, in_shapes)
        learned = len(layer.bottoms) == 1
        operand = layer.blobs[0] if learned else layer.bottoms[1]
        self.emit(layer, g, layer.bottoms[0], operand, layer.tops[0], axis, shape, learned)

    def to_torch(self, layer, ctx):
        import torch
        operand = (self.learned_operand(layer, ctx, layer.blobs[0], "bias")
                   if len(layer.bottoms) == 1 else self.bottom_operand(layer, ctx))
        ctx.emit(layer.tops[0], torch.add, ctx.value(layer.bottoms[0]), operand)


@register("LRN")
class LRN(LayerConverter):
    def infer_shapes(self, layer, in_shapes):
        p = layer.param.lrn_param
        if p.local_size % 2 == 0:
            raise ShapeError("LRN local_size must be odd", layer=layer.name)
        if len(in_shapes[0]) != 4:
            raise ShapeError("LRN needs a 4-D input", layer=layer.name)
        return [in_shapes[0]]

    def to_onnx(self, layer, g):
        p = layer.param.lrn_param
        x = layer.bottoms[0]
        if p.norm_region == p.ACROSS_CHANNELS:
            g.node("LRN", [x], layer.tops, size=int(p.local_size), alpha=float(p.alpha),
                   beta=float(p.beta), bias=float(p.k))
            return
        # WITHIN_CHANNEL, as Caffe composes it: x · (1 + alpha · avgpool(x²))^-beta, the average
        # over a local_size² window zero-padded so every window counts local_size² cells.
        size, pad = int(p.local_size), (int(p.local_size) - 1) // 2
        name = layer.name
        square = g.tmp(name + "/square")
        g.node("Mul", [x, x], [square])
        pooled = g.tmp(name + "/pooled")
        g.node("AveragePool", [square], [pooled], kernel_shape=[size, size],
               pads=[pad] * 4, strides=[1, 1], count_include_pad=1)
        scaled = g.tmp(name + "/scaled")
        g.node("Mul", [pooled, g.const(np.array(p.alpha, np.float32), name + "/alpha")], [scaled])
        shifted = g.tmp(name + "/shifted")
        g.node("Add", [scaled, g.const(np.array(1.0, np.float32), name + "/one")], [shifted])
        powered = g.tmp(name + "/powered")
        g.node("Pow", [shifted, g.const(np.array(-p.beta, np.float32), name + "/beta")],
               [powered])
        g.node("Mul", [x, powered], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        p = layer.param.lrn_param
        x = ctx.value(layer.bottoms[0])
        size = int(p.local_size)
        alpha, beta = ctx.scalar(p.alpha), ctx.scalar(p.beta)
        if p.norm_region == p.ACROSS_CHANNELS:
            # x / (k + alpha/size · Σ x² over `size` channels centred on each)^beta
            ctx.emit(layer.tops[0], F.local_response_norm, x, size, alpha=alpha, beta=beta,
                     k=ctx.scalar(p.k))
            return
        # WITHIN_CHANNEL, as Caffe composes it (see to_onnx)
        pooled = ctx.op(F.avg_pool2d, ctx.op(torch.mul, x, x), size, stride=1,
                        padding=(size - 1) // 2, count_include_pad=True)
        shifted = ctx.op(torch.add, ctx.op(torch.mul, pooled, alpha), 1.0)
        ctx.emit(layer.tops[0], torch.mul, x, ctx.op(torch.pow, shifted, -beta))
