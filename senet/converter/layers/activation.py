"""Element-wise layers: ReLU, PReLU, ELU, Sigmoid, TanH, Swish, AbsVal, BNLL, Threshold, Clip,
Power, Exp, Log, and Dropout (the identity at test time).

Each follows BVLC Caffe's CPU forward operation by operation (its constants rounded to float32
as Caffe rounds them), so float32 runtimes round as Caffe does."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    dropout_test_factor, exp_factors, log_base_scale, power_constant,
)
from senet.errors import ShapeError


@register("ReLU")
class ReLU(LayerConverter):
    """max(x, 0) + negative_slope·min(x, 0); the Synopsys fork's relu6: true then caps it at 6
    (relu_layer.cpp of synopsys-caffe)."""

    def to_onnx(self, layer, g):
        slope = layer.param.relu_param.negative_slope
        capped = layer.param.relu_param.relu6
        out = g.tmp(layer.tops[0] + "/relu") if capped else layer.tops[0]
        if slope:
            g.node("LeakyRelu", layer.bottoms, [out], alpha=float(slope))
        else:
            g.node("Relu", layer.bottoms, [out])
        if capped:
            g.node("Min", [out, g.const(np.array(6.0, np.float32), layer.name + "/six")],
                   layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        from torch.nn import functional as F
        slope = layer.param.relu_param.negative_slope
        capped = layer.param.relu_param.relu6
        x = ctx.value(layer.bottoms[0])
        make = ctx.op if capped else (lambda *args: ctx.emit(layer.tops[0], *args))
        y = make(F.leaky_relu, x, ctx.scalar(slope)) if slope else make(F.relu, x)
        if capped:
            ctx.emit(layer.tops[0], torch.clamp, y, None, 6.0)


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
    """Caffe's Dropout scales at train time only, so at test time it is the identity; with
    py-faster-rcnn's scale_train: false it scales at test time instead (by 1 − ratio).
    Bayesian SegNet's sample_weights_test (a new random mask on every test pass) is refused."""

    def infer_shapes(self, layer, in_shapes):
        if layer.param.dropout_param.sample_weights_test:
            raise ShapeError("sample_weights_test: true (Bayesian SegNet's Monte Carlo dropout) "
                             "draws a new random mask on every test pass, which no fixed model "
                             "reproduces", layer=layer.name,
                             hint="sample_weights_test: false gives the weight-averaged net")
        return super().infer_shapes(layer, in_shapes)

    @staticmethod
    def _factor(layer) -> float | None:
        p = layer.param.dropout_param
        return dropout_test_factor(p.dropout_ratio, p.scale_train)

    def to_onnx(self, layer, g):
        factor = self._factor(layer)
        if factor is None:
            g.node("Identity", layer.bottoms, layer.tops)
            return
        g.node("Mul", [layer.bottoms[0], g.const(np.array(factor, np.float32),
                                                 layer.name + "/scale")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        factor = self._factor(layer)
        if factor is None:
            ctx.define(layer.tops[0], ctx.value(layer.bottoms[0]))
            return
        ctx.emit(layer.tops[0], torch.mul, ctx.value(layer.bottoms[0]), factor)


@register("ELU")
class ELU(LayerConverter):
    """y = max(x, 0) + alpha·(exp(min(x, 0)) - 1): ONNX's and torch's ELU for every x."""

    def to_onnx(self, layer, g):
        g.node("Elu", layer.bottoms, layer.tops, alpha=float(layer.param.elu_param.alpha))

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        ctx.emit(layer.tops[0], F.elu, ctx.value(layer.bottoms[0]),
                 ctx.scalar(layer.param.elu_param.alpha))


@register("Swish")
class Swish(LayerConverter):
    """y = x·sigmoid(beta·x), beta·x rounded to float32 first as Caffe scales it."""

    def to_onnx(self, layer, g):
        x, beta = layer.bottoms[0], layer.param.swish_param.beta
        scaled = x
        if beta != 1:
            scaled = g.tmp(f"{layer.name}/beta_x")
            g.node("Mul", [x, _scalar(g, layer, beta, "beta")], [scaled])
        gate = g.tmp(f"{layer.name}/sigmoid")
        g.node("Sigmoid", [scaled], [gate])
        g.node("Mul", [x, gate], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x, beta = ctx.value(layer.bottoms[0]), layer.param.swish_param.beta
        scaled = x if beta == 1 else ctx.op(torch.mul, x, ctx.scalar(beta))
        ctx.emit(layer.tops[0], torch.mul, x, ctx.op(torch.sigmoid, scaled))


@register("AbsVal")
class AbsVal(LayerConverter):
    """y = |x|. Caffe refuses AbsVal in place, and so does senet."""

    def infer_shapes(self, layer, in_shapes):
        if layer.param.top[0] == layer.param.bottom[0]:
            raise ShapeError("AbsVal cannot run in place (Caffe refuses top == bottom)",
                             layer=layer.name)
        return super().infer_shapes(layer, in_shapes)

    def to_onnx(self, layer, g):
        g.node("Abs", layer.bottoms, layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        ctx.emit(layer.tops[0], torch.abs, ctx.value(layer.bottoms[0]))


@register("BNLL")
class BNLL(LayerConverter):
    """Caffe's overflow-safe softplus: x > 0 ? x + ln(1 + e^-x) : ln(1 + e^x), written as
    max(x, 0) + softplus(-|x|). The softplus argument is never positive, so even a runtime
    that evaluates ONNX's ln(e^x + 1) literally cannot overflow."""

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        magnitude, negated, tail, positive = (g.tmp(f"{name}/{part}") for part in
                                              ("abs", "neg", "softplus", "relu"))
        g.node("Abs", [x], [magnitude])
        g.node("Neg", [magnitude], [negated])
        g.node("Softplus", [negated], [tail])
        g.node("Relu", [x], [positive])
        g.node("Add", [positive, tail], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        negated = ctx.op(torch.neg, ctx.op(torch.abs, x))
        tail = ctx.op(torch.log1p, ctx.op(torch.exp, negated))
        ctx.emit(layer.tops[0], torch.add, ctx.op(torch.relu, x), tail)


@register("Threshold")
class Threshold(LayerConverter):
    """y = 1 where x > threshold (strictly: x == threshold gives 0, as does NaN), else 0."""

    def to_onnx(self, layer, g):
        above = g.tmp(f"{layer.name}/above")
        limit = _scalar(g, layer, layer.param.threshold_param.threshold, "threshold")
        g.node("Greater", [layer.bottoms[0], limit], [above])
        g.node("Cast", [above], layer.tops, to=1)  # TensorProto.FLOAT

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        above = ctx.op(torch.gt, x, ctx.scalar(layer.param.threshold_param.threshold))
        ctx.define(layer.tops[0], ctx.method("type_as", above, x))


def clip_bounds(layer) -> tuple[float, float]:
    """(min, max) of a Clip layer; both are required, as in Caffe's ClipParameter."""
    p = layer.param.clip_param
    missing = [f for f in ("min", "max") if not p.HasField(f)]
    if missing:
        raise ShapeError(f"Clip needs clip_param {{ min max }}; {' and '.join(missing)} "
                         "missing", layer=layer.name)
    return p.min, p.max


@register("Clip")
class Clip(LayerConverter):
    """y = std::max(min, std::min(x, max)), spelled with Caffe's comparisons: a NaN input
    gives min, and min > max gives min everywhere (ONNX's Clip and torch.clamp differ on both)."""

    def infer_shapes(self, layer, in_shapes):
        clip_bounds(layer)
        return super().infer_shapes(layer, in_shapes)

    def to_onnx(self, layer, g):
        lo, hi = (_scalar(g, layer, v, what) for v, what in zip(clip_bounds(layer),
                                                                ("min", "max")))
        x, name = layer.bottoms[0], layer.name
        over, capped, above_lo = (g.tmp(f"{name}/{part}") for part in
                                  ("over", "capped", "above_min"))
        g.node("Less", [hi, x], [over])                  # std::min(x, max): max < x ? max : x
        g.node("Where", [over, hi, x], [capped])
        g.node("Less", [lo, capped], [above_lo])         # std::max(min, t): min < t ? t : min
        g.node("Where", [above_lo, capped, lo], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        lo, hi = (ctx.scalar(v) for v in clip_bounds(layer))
        x = ctx.value(layer.bottoms[0])
        capped = ctx.op(torch.where, ctx.op(torch.gt, x, hi), hi, x)
        ctx.emit(layer.tops[0], torch.where, ctx.op(torch.gt, capped, lo), capped, lo)


def power_steps(p) -> list[tuple[str, float]]:
    """Caffe's Power with an input-dependent output, as (Mul | Add | Pow, constant) steps in
    Caffe's order, identity steps left out."""
    steps = []
    if p.scale != 1:
        steps.append(("Mul", p.scale))
    if p.shift != 0:
        steps.append(("Add", p.shift))
    if p.power != 1:
        steps.append(("Pow", p.power))
    return steps


@register("Power")
class Power(LayerConverter):
    """y = (shift + scale·x)^power; when power·scale is 0 Caffe ignores x and fills a constant
    (see semantics.power_constant), so an inf or NaN input does not reach the output."""

    def to_onnx(self, layer, g):
        p = layer.param.power_param
        value = power_constant(p.power, p.scale, p.shift)
        if value is None:
            _onnx_steps(layer, g, power_steps(p))
            return
        shape = g.tmp(f"{layer.name}/shape")
        g.node("Shape", layer.bottoms, [shape])
        g.node("Expand", [_scalar(g, layer, value, "value"), shape], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        p = layer.param.power_param
        value = power_constant(p.power, p.scale, p.shift)
        if value is None:
            _torch_steps(layer, ctx, power_steps(p))
            return
        ctx.emit(layer.tops[0], torch.full_like, ctx.value(layer.bottoms[0]), ctx.scalar(value))


def exp_steps(layer) -> list[tuple[str, float | None]]:
    """Caffe's Exp y = outer · exp(inner · x) as steps, identity factors left out."""
    p = layer.param.exp_param
    inner, outer = exp_factors(p.base, p.scale, p.shift, layer.name)
    return ([("Mul", inner)] if inner != 1 else []) + [("Exp", None)] + \
        ([("Mul", outer)] if outer != 1 else [])


class _Steps(LayerConverter):
    """A layer computed as a fixed sequence of element-wise steps: subclasses set
    `steps(layer) -> [(op, constant or None), ...]`."""

    def infer_shapes(self, layer, in_shapes):
        self.steps(layer)  # refuses the parameters Caffe refuses
        return super().infer_shapes(layer, in_shapes)

    def to_onnx(self, layer, g):
        _onnx_steps(layer, g, self.steps(layer))

    def to_torch(self, layer, ctx):
        _torch_steps(layer, ctx, self.steps(layer))


@register("Exp")
class Exp(_Steps):
    """y = base^(shift + scale·x), base -1 meaning e, evaluated as Caffe does (exp_steps)."""

    steps = staticmethod(exp_steps)


def log_steps(layer) -> list[tuple[str, float | None]]:
    """Caffe's Log y = ln(scale·x + shift) / ln(base) as steps: the base is applied last, to
    the logarithm of the scaled and shifted input."""
    p = layer.param.log_param
    factor = log_base_scale(p.base, layer.name)
    return ([("Mul", p.scale)] if p.scale != 1 else []) + \
        ([("Add", p.shift)] if p.shift != 0 else []) + [("Log", None)] + \
        ([("Mul", factor)] if factor != 1 else [])


@register("Log")
class Log(_Steps):
    """y = log_base(shift + scale·x), base -1 meaning e (log_steps)."""

    steps = staticmethod(log_steps)


def _scalar(g, layer, value: float, what: str) -> str:
    """A float32 scalar initializer named after the layer."""
    return g.const(np.array(value, np.float32), f"{layer.name}/{what}")


def _onnx_steps(layer, g, steps) -> None:
    """Bottom → top through (ONNX op, constant or None for a unary op) steps; none: Identity."""
    x = layer.bottoms[0]
    if not steps:
        g.node("Identity", [x], layer.tops)
    for i, (op, value) in enumerate(steps):
        out = layer.tops[0] if i == len(steps) - 1 else g.tmp(f"{layer.name}/{op.lower()}")
        inputs = [x] if value is None else [x, _scalar(g, layer, value, op.lower())]
        g.node(op, inputs, [out])
        x = out


def _torch_steps(layer, ctx, steps) -> None:
    """The same steps as torch calls (torch.mul, torch.add, torch.pow, torch.exp, torch.log)."""
    import torch
    x = ctx.value(layer.bottoms[0])
    for i, (op, value) in enumerate(steps):
        fn = getattr(torch, op.lower())
        operand = None if value is None else ctx.scalar(value)
        if op == "Pow":
            # A tensor exponent takes C's pow, as Caffe does; a Python one is turned into sqrt
            # or rsqrt for ±0.5, which differ at -inf and -0 (rsqrt(-0) = -inf, pow: +inf).
            operand = ctx.op(torch.scalar_tensor, operand, dtype=ctx.dtype)
        args = (x,) if operand is None else (x, operand)
        x = ctx.emit(layer.tops[0], fn, *args) if i == len(steps) - 1 else ctx.op(fn, *args)
    ctx.define(layer.tops[0], x)
