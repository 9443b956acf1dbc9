"""Element-wise layers of the Caffe forks: ReLU6, HardSwish (Synopsys), Mish (YOLOv4 ports,
Synopsys), SeLu, and Synopsys' broadcasting Mul."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.errors import ShapeError

# torch's SELU constants (SELU paper); the forks hard-code the same two numbers
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _scalar(g, layer, value: float, what: str) -> str:
    return g.const(np.array(value, np.float32), f"{layer.name}/{what}")


def _onnx_relu6(g, layer, x: str, out: str) -> None:
    g.node("Clip", [x, _scalar(g, layer, 0.0, "zero"), _scalar(g, layer, 6.0, "six")], [out])


@register("ReLU6", origin="MobileNet forks (min(max(x, 0), 6))")
class ReLU6(LayerConverter):
    def to_onnx(self, layer, g):
        _onnx_relu6(g, layer, layer.bottoms[0], layer.tops[0])

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        ctx.emit(layer.tops[0], F.hardtanh, ctx.value(layer.bottoms[0]), 0.0, 6.0)


@register("HardSwish", origin="Synopsys Caffe (hard_swish_layer.cpp)")
class HardSwish(LayerConverter):
    """y = x · min(max(x + 3, 0), 6) / 6."""

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        shifted, gate, product = (g.tmp(f"{name}/{h}") for h in ("shifted", "gate", "product"))
        g.node("Add", [x, _scalar(g, layer, 3.0, "three")], [shifted])
        _onnx_relu6(g, layer, shifted, gate)
        g.node("Mul", [x, gate], [product])
        g.node("Div", [product, _scalar(g, layer, 6.0, "divisor")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        x = ctx.value(layer.bottoms[0])
        gate = ctx.op(F.hardtanh, ctx.op(torch.add, x, 3.0), 0.0, 6.0)
        ctx.emit(layer.tops[0], torch.div, ctx.op(torch.mul, x, gate), 6.0)


@register("Mish", origin="YOLOv4 forks (ChenYingpeng/caffe-yolov3), Synopsys Caffe")
class Mish(LayerConverter):
    """y = x · tanh(softplus(x)); the fork's softplus switches to x above 20 and to e^x below
    -20, which differs from ln(1 + e^x) by less than float32 resolves."""

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        soft, gate = g.tmp(name + "/softplus"), g.tmp(name + "/tanh")
        g.node("Softplus", [x], [soft])
        g.node("Tanh", [soft], [gate])
        g.node("Mul", [x, gate], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        x = ctx.value(layer.bottoms[0])
        ctx.emit(layer.tops[0], torch.mul, x, ctx.op(torch.tanh, ctx.op(F.softplus, x)))


@register("SeLu", "SELU", origin="SNN forks (scale · (x > 0 ? x : alpha · (e^x - 1)))")
class SeLu(LayerConverter):
    def to_onnx(self, layer, g):
        g.node("Selu", layer.bottoms, layer.tops, alpha=SELU_ALPHA, gamma=SELU_SCALE)

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        ctx.emit(layer.tops[0], F.selu, ctx.value(layer.bottoms[0]))


def broadcast_shape(a, b, layer) -> tuple[int, ...]:
    """Synopsys Mul's output shape: the shapes aligned at their last axis, each pair of sizes
    equal or one of them 1 (NumPy's broadcasting, as mul_layer.cpp checks it)."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise ShapeError(f"Mul bottoms {list(a)} and {list(b)} do not broadcast (sizes must "
                         "be equal or 1)", layer=layer.name) from None


@register("Mul", origin="Synopsys Caffe (mul_layer.cpp), two bottoms")
class Mul(LayerConverter):
    """y = bottom[0] · bottom[1] with broadcasting. The fork's one-bottom form multiplies by
    a learned blob of mul_param.mul_shape, a field senet's schema lacks: not supported."""

    min_bottoms = max_bottoms = 2

    def infer_shapes(self, layer, in_shapes):
        if layer.param.top[0] in layer.param.bottom:
            raise ShapeError("Mul cannot run in place (the fork refuses it)", layer=layer.name)
        return [broadcast_shape(in_shapes[0], in_shapes[1], layer)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return all(len(s) == len(out_shapes[0]) for s in in_shapes) and super().keeps_batch(
            layer, in_shapes, out_shapes, batch)

    def to_onnx(self, layer, g):
        g.node("Mul", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        ctx.emit(layer.tops[0], torch.mul, *[ctx.value(b) for b in layer.bottoms])
