"""Element-wise activations: ReLU, PReLU, Sigmoid, TanH, Power, Dropout (identity at test)."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register


@register("ReLU")
class ReLU(LayerConverter):
    def to_onnx(self, layer, g):
        slope = layer.param.relu_param.negative_slope
        if slope:
            g.node("LeakyRelu", layer.bottoms, layer.tops, alpha=float(slope))
        else:
            g.node("Relu", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        slope = layer.param.relu_param.negative_slope
        x = ctx.value(layer.bottoms[0])
        if slope:
            ctx.emit(layer.tops[0], F.leaky_relu, x, ctx.scalar(slope))
        else:
            ctx.emit(layer.tops[0], F.relu, x)


@register("PReLU")
class PReLU(LayerConverter):
    def blob_shapes(self, layer, in_shapes):
        if layer.param.prelu_param.channel_shared:
            return [()]
        return [(in_shapes[0][1] if len(in_shapes[0]) > 1 else 1,)]

    def to_onnx(self, layer, g):
        ndim = len(g.shape(layer.bottoms[0]))
        slope = layer.blobs[0].reshape(-1)
        if slope.size > 1:
            slope = slope.reshape((slope.size,) + (1,) * (ndim - 2))
        g.node("PRelu", [layer.bottoms[0], g.const(slope, layer.name + "/slope")], layer.tops)

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        slope = ctx.parameter("weight", layer.blobs[0].reshape(-1))  # slopes along axis 1
        ctx.emit(layer.tops[0], F.prelu, ctx.value(layer.bottoms[0]), slope)


@register("Sigmoid")
class Sigmoid(LayerConverter):
    def to_onnx(self, layer, g):
        g.node("Sigmoid", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        ctx.emit(layer.tops[0], torch.sigmoid, ctx.value(layer.bottoms[0]))


@register("TanH")
class TanH(LayerConverter):
    def to_onnx(self, layer, g):
        g.node("Tanh", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        ctx.emit(layer.tops[0], torch.tanh, ctx.value(layer.bottoms[0]))


@register("Dropout")
class Dropout(LayerConverter):
    """Caffe's Dropout scales at train time only, so at test time it is the identity."""

    def to_onnx(self, layer, g):
        g.node("Identity", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        ctx.define(layer.tops[0], ctx.value(layer.bottoms[0]))


def power_steps(p) -> list[tuple[str, float]]:
    """Caffe's Power as a sequence of (mul | add | pow, constant), identity steps left out."""
    steps = []
    if p.scale != 1:
        steps.append(("mul", p.scale))
    if p.shift != 0:
        steps.append(("add", p.shift))
    if p.power != 1:
        steps.append(("pow", p.power))
    return steps


@register("Power")
class Power(LayerConverter):
    """y = (shift + scale·x) ^ power."""

    def to_onnx(self, layer, g):
        x = layer.bottoms[0]
        steps = power_steps(layer.param.power_param)
        if not steps:
            g.node("Identity", [x], layer.tops)
            return
        for i, (op, value) in enumerate(steps):
            out = layer.tops[0] if i == len(steps) - 1 else g.tmp(f"{layer.name}/{op}")
            g.node(op.capitalize(), [x, g.const(np.array(value, np.float32),
                                                f"{layer.name}/{op}_c")], [out])
            x = out

    def to_torch(self, layer, ctx):
        import torch
        fns = {"mul": torch.mul, "add": torch.add, "pow": torch.pow}
        x = ctx.value(layer.bottoms[0])
        steps = power_steps(layer.param.power_param)
        for i, (op, value) in enumerate(steps):
            if i == len(steps) - 1:
                x = ctx.emit(layer.tops[0], fns[op], x, ctx.scalar(value))
            else:
                x = ctx.op(fns[op], x, ctx.scalar(value))
        ctx.define(layer.tops[0], x)
