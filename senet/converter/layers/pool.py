"""Pooling, MAX and AVE, with Caffe's ceil-and-clip output size and AVE divisor."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import PoolGeometry, pool_geometry
from senet.errors import ShapeError


def _pair(p, single: str, h: str, w: str, default: int) -> tuple[int, int]:
    if p.HasField(h) or p.HasField(w):
        return getattr(p, h), getattr(p, w)
    value = getattr(p, single) if p.HasField(single) else default
    return value, value


def pool_geometries(layer, in_shape) -> tuple[PoolGeometry, PoolGeometry]:
    """Caffe's geometry of both spatial axes for a Pooling layer on a 4-D input."""
    p = layer.param.pooling_param
    if len(in_shape) != 4:
        raise ShapeError(f"pooling needs a 4-D input, got {list(in_shape)}", layer=layer.name)
    height, width = in_shape[2], in_shape[3]
    if p.global_pooling:
        return (pool_geometry(height, height, 0, 1, True), pool_geometry(width, width, 0, 1, True))
    kh, kw = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    ph, pw = _pair(p, "pad", "pad_h", "pad_w", 0)
    sh, sw = _pair(p, "stride", "stride_h", "stride_w", 1)
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0:
        raise ShapeError("pooling kernel and stride must be positive", layer=layer.name)
    if ph >= kh or pw >= kw:
        raise ShapeError("pooling pad must be smaller than the kernel", layer=layer.name)
    ceil_mode = p.round_mode == p.CEIL
    any_pad = bool(ph or pw)
    geoms = (pool_geometry(height, kh, ph, sh, ceil_mode, any_pad),
             pool_geometry(width, kw, pw, sw, ceil_mode, any_pad))
    if geoms[0].output <= 0 or geoms[1].output <= 0:
        raise ShapeError(f"input {list(in_shape)} is smaller than the pooling kernel",
                         layer=layer.name)
    return geoms


@register("Pooling")
class Pooling(LayerConverter):
    def infer_shapes(self, layer, in_shapes):
        p = layer.param.pooling_param
        if p.pool == p.STOCHASTIC:
            raise ShapeError("STOCHASTIC pooling is not supported", layer=layer.name)
        gh, gw = pool_geometries(layer, in_shapes[0])
        x = in_shapes[0]
        return [(x[0], x[1], gh.output, gw.output)]

    def to_onnx(self, layer, g):
        p = layer.param.pooling_param
        x = layer.bottoms[0]
        gh, gw = pool_geometries(layer, g.shape(x))
        is_max = p.pool == p.MAX
        if p.global_pooling:
            g.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], layer.tops)
            return
        kernel, strides = [gh.kernel, gw.kernel], [gh.stride, gw.stride]
        if is_max:
            # MAX ignores padding cells, so explicit pads reproduce Caffe's clipped windows.
            g.node("MaxPool", [x], layer.tops, kernel_shape=kernel, strides=strides,
                   pads=[gh.pad, gw.pad, gh.pad_end, gw.pad_end])
            return
        # AVE: Caffe divides by the window clipped to the padded input [-pad, size+pad). Zero
        # padding made explicit counts those cells; the extra ceil-mode cells past it are
        # excluded by count_include_pad=0.
        if gh.pad or gw.pad:
            padded = g.tmp(layer.name + "/padded")
            g.node("Pad", [x, g.ints([0, 0, gh.pad, gw.pad, 0, 0, gh.pad, gw.pad],
                                     layer.name + "/pads")], [padded])
            x = padded
        g.node("AveragePool", [x], layer.tops, kernel_shape=kernel, strides=strides,
               pads=[0, 0, max(0, gh.pad_end - gh.pad), max(0, gw.pad_end - gw.pad)],
               count_include_pad=0)
