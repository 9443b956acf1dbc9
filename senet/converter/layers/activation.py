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


@register("Sigmoid")
class Sigmoid(LayerConverter):
    def to_onnx(self, layer, g):
        g.node("Sigmoid", layer.bottoms, layer.tops)


@register("TanH")
class TanH(LayerConverter):
    def to_onnx(self, layer, g):
        g.node("Tanh", layer.bottoms, layer.tops)


@register("Dropout")
class Dropout(LayerConverter):
    """Caffe's Dropout scales at train time only, so at test time it is the identity."""

    def to_onnx(self, layer, g):
        g.node("Identity", layer.bottoms, layer.tops)


@register("Power")
class Power(LayerConverter):
    """y = (shift + scale·x) ^ power."""

    def to_onnx(self, layer, g):
        p = layer.param.power_param
        x = layer.bottoms[0]
        steps = []
        if p.scale != 1:
            steps.append(("Mul", p.scale))
        if p.shift != 0:
            steps.append(("Add", p.shift))
        if p.power != 1:
            steps.append(("Pow", p.power))
        if not steps:
            g.node("Identity", [x], layer.tops)
            return
        for i, (op, value) in enumerate(steps):
            out = layer.tops[0] if i == len(steps) - 1 else g.tmp(f"{layer.name}/{op.lower()}")
            g.node(op, [x, g.const(np.array(value, np.float32), f"{layer.name}/{op.lower()}_c")],
                   [out])
            x = out
