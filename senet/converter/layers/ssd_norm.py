"""SSD's Normalize (weiliu89/caffe, branch ssd, normalize_layer.cpp): L2 normalisation with a
learned scale, as in SSD's conv4_3_norm.

Per image, in Forward_cpu's order:
- across_spatial (default): norm = (Σ x² over C·H·W + eps)^½, one per image, and
  y = x · (1 / norm) (the reciprocal is taken once, then multiplied);
- otherwise: norm = (eps + Σ_c x²)^½ at each position, and y = x / norm (a division);
then y is multiplied by the scale blob: one value when channel_shared (default), else one
per channel. eps (1e-10) is added before the square root, never to the norm."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.layers.anchors import SSD
from senet.errors import ShapeError


def _checked(layer, in_shape) -> int:
    """The channel count; the fork reads the blob through num/channels/height/width, so it
    takes 2 to 4 axes."""
    if not 2 <= len(in_shape) <= 4:
        raise ShapeError(f"Normalize needs an N×C(×H×W) input, got {list(in_shape)}",
                         layer=layer.name)
    return in_shape[1]


def _scale_operand(layer, ndim: int) -> np.ndarray:
    """The scale blob shaped to broadcast against the N×C… input."""
    scale = np.asarray(layer.blobs[0], np.float32)
    if layer.param.norm_param.channel_shared:
        return scale.reshape(())
    return scale.reshape((-1,) + (1,) * (ndim - 2))


def _summed_axes(layer, ndim: int) -> list[int]:
    """The axes the squares are summed over: all but the batch, or only the channels."""
    return list(range(1, ndim)) if layer.param.norm_param.across_spatial else [1]


@register("Normalize", origin=SSD)
class Normalize(LayerConverter):

    def blob_shapes(self, layer, in_shapes):
        c = _checked(layer, in_shapes[0])
        # a 0-axis blob when shared (Blob(vector<int>(0))), else C values
        return [()] if layer.param.norm_param.channel_shared else [(c,)]

    def infer_shapes(self, layer, in_shapes):
        _checked(layer, in_shapes[0])
        return [in_shapes[0]]

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        ndim = len(g.shape(x))
        p = layer.param.norm_param
        square, total, shifted, norm, normed = (
            g.tmp(f"{name}/{h}") for h in ("square", "sum", "shifted", "norm", "normalised"))
        g.node("Mul", [x, x], [square])
        g.node("ReduceSum", [square, g.ints(_summed_axes(layer, ndim), name + "/axes")],
               [total], keepdims=1)
        g.node("Add", [total, g.const(np.float32(p.eps), name + "/eps")], [shifted])
        g.node("Sqrt", [shifted], [norm])
        if p.across_spatial:
            inverse = g.tmp(name + "/inverse")
            g.node("Reciprocal", [norm], [inverse])
            g.node("Mul", [x, inverse], [normed])
        else:
            g.node("Div", [x, norm], [normed])
        g.node("Mul", [normed, g.const(_scale_operand(layer, ndim), name + "/scale")],
               layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        ndim = len(ctx.shape(layer.bottoms[0]))
        p = layer.param.norm_param
        total = ctx.op(torch.sum, ctx.op(torch.mul, x, x), _summed_axes(layer, ndim),
                       keepdim=True)
        norm = ctx.op(torch.sqrt, ctx.op(torch.add, total, ctx.scalar(np.float32(p.eps))))
        if p.across_spatial:
            normed = ctx.op(torch.mul, x, ctx.op(torch.reciprocal, norm))
        else:
            normed = ctx.op(torch.div, x, norm)
        ctx.emit(layer.tops[0], torch.mul, normed,
                 ctx.parameter("scale", _scale_operand(layer, ndim)))
