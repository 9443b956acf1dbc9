"""The forks' BN layer, one type name for two layers told apart by their blobs:

- PSPNet's (hszhao/PSPNet, from yjxiong's fork; also the Residual Attention networks): four
  1×C×1×1 blobs slope, bias, mean, variance; at test time (or `frozen`) it uses the stored
  statistics: y = (x - mean) · (var + eps)^-0.5 · slope + bias, eps = bn_param.eps (1e-5).
- SegNet's (alexgkendall/caffe-segnet; ENet uses it too): two 1×C×1×1 blobs scale, shift.
  bn_mode INFERENCE is y = x · scale + shift; the default LEARN normalises with the batch's
  own mean and its variance E(x²) - E(x)² (not centred first), eps 1e-9, in every phase.

With stored weights their count decides (2: SegNet, 4: PSPNet); without, a bn_mode field
means SegNet's, anything else PSPNet's."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import batch_statistics_axes, bn_inverse_std
from senet.errors import ShapeError

SEGNET_EPS = 1e-9  # hard-coded in SegNet's BNLayer::LayerSetUp


def is_segnet(layer) -> bool:
    """Whether a BN layer is SegNet's (two blobs) rather than PSPNet's (four)."""
    if len(layer.blobs) in (2, 4):
        return len(layer.blobs) == 2
    return layer.param.bn_param.HasField("bn_mode")


def segnet_learns(layer) -> bool:
    p = layer.param.bn_param
    return p.bn_mode != p.INFERENCE


def _channels(layer, in_shape) -> int:
    if not 2 <= len(in_shape) <= 4:
        raise ShapeError(f"BN needs an N×C(×H×W) input, got {list(in_shape)}",
                         layer=layer.name)
    return in_shape[1]


def _along_channels(array, ndim: int) -> np.ndarray:
    """A C-vector shaped C×1… to broadcast against an N×C… blob."""
    return np.asarray(array, np.float32).reshape((-1,) + (1,) * (ndim - 2))


def affine_steps(layer, ndim: int) -> list[tuple[str, np.ndarray]]:
    """The (ONNX op, C×1… constant) steps of a BN that uses stored values, in the fork's
    order of operations."""
    if is_segnet(layer):
        scale, shift = layer.blobs
        return [("Mul", _along_channels(scale, ndim)), ("Add", _along_channels(shift, ndim))]
    slope, bias, mean, var = layer.blobs
    inv_std = bn_inverse_std(np.asarray(var).reshape(-1), layer.param.bn_param.eps)
    return [("Sub", _along_channels(mean, ndim)), ("Mul", _along_channels(inv_std, ndim)),
            ("Mul", _along_channels(slope, ndim)), ("Add", _along_channels(bias, ndim))]


@register("BN", origin="PSPNet (hszhao/PSPNet) 4 blobs; SegNet (alexgkendall/caffe-segnet) "
                       "2 blobs")
class BN(LayerConverter):
    def blob_shapes(self, layer, in_shapes):
        c = _channels(layer, in_shapes[0])
        return [(1, c, 1, 1)] * (2 if is_segnet(layer) else 4)

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        ndim = len(g.shape(x))
        steps = affine_steps(layer, ndim)
        if is_segnet(layer) and segnet_learns(layer):
            normalised = g.tmp(name + "/normalised")
            _batch_statistics_onnx(g, layer, x, normalised)
            x = normalised
        for i, (op, value) in enumerate(steps):
            out = layer.tops[0] if i == len(steps) - 1 else g.tmp(f"{name}/{op.lower()}")
            g.node(op, [x, g.const(value, f"{name}/{op.lower()}_operand")], [out])
            x = out

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        ndim = len(ctx.shape(layer.bottoms[0]))
        steps = affine_steps(layer, ndim)
        if is_segnet(layer) and segnet_learns(layer):
            x = _batch_statistics_torch(ctx, x, ndim)
        fns = {"Sub": torch.sub, "Mul": torch.mul, "Add": torch.add}
        keys = iter(("shift", "scale") if is_segnet(layer) else
                    ("mean", "inv_std", "slope", "bias"))
        for i, (op, value) in enumerate(steps):
            operand = ctx.buffer(next(keys), value)
            if i == len(steps) - 1:
                ctx.emit(layer.tops[0], fns[op], x, operand)
            else:
                x = ctx.op(fns[op], x, operand)


def _batch_statistics_onnx(g, layer, x: str, out: str) -> None:
    """(x - E x) / sqrt(E x² - (E x)² + 1e-9) over the batch and spatial axes."""
    name = layer.name
    axes = batch_statistics_axes(len(g.shape(x)))

    square, mean_sq, var, centred, shifted, std = (
        g.tmp(f"{name}/{h}") for h in ("square", "mean_square", "var", "centred", "shifted",
                                       "std"))
    mean = g.reduce_mean(x, axes, f"{name}/mean")
    g.node("Mul", [x, x], [square])
    g.node("Mul", [mean, mean], [mean_sq])
    g.node("Sub", [g.reduce_mean(square, axes, f"{name}/mean_of_square"), mean_sq], [var])
    g.node("Sub", [x, mean], [centred])
    g.node("Add", [var, g.const(np.array(SEGNET_EPS, np.float32), name + "/eps")], [shifted])
    g.node("Sqrt", [shifted], [std])
    g.node("Div", [centred, std], [out])


def _batch_statistics_torch(ctx, x, ndim: int):
    import torch
    axes = batch_statistics_axes(ndim)
    mean = ctx.op(torch.mean, x, axes, keepdim=True)
    mean_of_square = ctx.op(torch.mean, ctx.op(torch.mul, x, x), axes, keepdim=True)
    var = ctx.op(torch.sub, mean_of_square, ctx.op(torch.mul, mean, mean))
    std = ctx.op(torch.sqrt, ctx.op(torch.add, var, SEGNET_EPS))
    return ctx.op(torch.div, ctx.op(torch.sub, x, mean), std)
