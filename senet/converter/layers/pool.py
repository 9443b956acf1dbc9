"""Pooling, MAX and AVE, with Caffe's ceil-and-clip output size and AVE divisor."""

from __future__ import annotations

import operator

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    PoolGeometry, ave_pool_divisors, pool_geometry, pool_output_size, spatial_param,
)
from senet.errors import ShapeError


def pool_geometries(layer, in_shape) -> tuple[PoolGeometry, PoolGeometry]:
    """Caffe's geometry of both spatial axes for a Pooling layer on a 4-D input."""
    p = layer.param.pooling_param
    if len(in_shape) != 4:
        raise ShapeError(f"pooling needs a 4-D input, got {list(in_shape)}", layer=layer.name)
    height, width = in_shape[2], in_shape[3]
    if p.global_pooling:
        return (pool_geometry(height, height, 0, 1, True), pool_geometry(width, width, 0, 1, True))
    kh, kw = spatial_param(p, "kernel_size", 2, 0, layer.name)
    ph, pw = spatial_param(p, "pad", 2, 0, layer.name)
    sh, sw = spatial_param(p, "stride", 2, 1, layer.name)
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


def covers_input(g: PoolGeometry) -> bool:
    """One unpadded window over the whole axis (global pooling, or a kernel as large as the
    input such as SE-ResNet's final 7×7 AVE pooling)."""
    return g.output == 1 and g.pad == 0 and g.kernel == g.input_extent


def torch_pool_output(g: PoolGeometry, pad: int, ceil_mode: bool = True) -> int:
    """PyTorch's output length for g's kernel and stride with `pad` on both sides (in ceil mode
    PyTorch drops a last window starting past input + pad whether or not there is padding;
    Caffe only when the layer is padded; floor mode drops none)."""
    return pool_output_size(g.input_extent, g.kernel, pad, g.stride, ceil_mode=ceil_mode,
                            any_pad=ceil_mode)


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

    def to_torch(self, layer, ctx):
        import torch
        p = layer.param.pooling_param
        x = ctx.value(layer.bottoms[0])
        gh, gw = pool_geometries(layer, ctx.shape(layer.bottoms[0]))
        top = layer.tops[0]
        if covers_input(gh) and covers_input(gw):
            if p.pool == p.MAX:
                ctx.emit(top, torch.amax, x, dim=(2, 3), keepdim=True)
            else:  # the SE block's squeeze
                ctx.emit(top, torch.ops.senet.global_avg_pool.default, x)
            return
        if p.pool == p.MAX:
            self._max_to_torch(ctx, top, x, gh, gw)
        else:
            self._ave_to_torch(ctx, layer, top, x, gh, gw)

    @staticmethod
    def _max_to_torch(ctx, top, x, gh, gw):
        from torch.nn import functional as F
        kernel, stride = (gh.kernel, gw.kernel), (gh.stride, gw.stride)
        if all(2 * g.pad <= g.kernel and torch_pool_output(g, g.pad) == g.output
               for g in (gh, gw)):
            # PyTorch's own ceil mode clips windows as Caffe does here; padding never wins
            ctx.emit(top, F.max_pool2d, x, kernel, stride, padding=(gh.pad, gw.pad),
                     ceil_mode=True)
            return
        # -inf padding made explicit: floor-mode windows then are Caffe's clipped ones
        if gh.pad or gw.pad or gh.pad_end or gw.pad_end:
            x = ctx.op(F.pad, x, (gw.pad, gw.pad_end, gh.pad, gh.pad_end), value=float("-inf"))
        ctx.emit(top, F.max_pool2d, x, kernel, stride)

    @staticmethod
    def _ave_to_torch(ctx, layer, top, x, gh, gw):
        from torch.nn import functional as F
        kernel, stride = (gh.kernel, gw.kernel), (gh.stride, gw.stride)
        full = bool(np.all(ave_pool_divisors(gh, gw) == gh.kernel * gw.kernel))
        if full and all(2 * g.pad <= g.kernel and
                        torch_pool_output(g, g.pad, ceil_mode=False) == g.output
                        for g in (gh, gw)):
            # every window counts kernel cells, padding included: PyTorch's floor mode
            ctx.emit(top, F.avg_pool2d, x, kernel, stride, padding=(gh.pad, gw.pad),
                     count_include_pad=True)
            return
        # Caffe divides by the window clipped to the padded input: zero padding made explicit
        # (counted), then ceil mode over it without implicit padding (overhang not counted).
        outputs = [torch_pool_output(g, 0) for g in (
            PoolGeometry(g.kernel, g.stride, 0, g.output, g.input_extent + 2 * g.pad)
            for g in (gh, gw))]
        if outputs[0] < gh.output or outputs[1] < gw.output:
            raise ShapeError("AVE pooling whose last window starts past the input has no "
                             "torch emitter", layer=layer.name)
        if gh.pad or gw.pad:
            x = ctx.op(F.pad, x, (gw.pad, gw.pad, gh.pad, gh.pad))
        if outputs == [gh.output, gw.output]:
            ctx.emit(top, F.avg_pool2d, x, kernel, stride, ceil_mode=True,
                     count_include_pad=False)
            return
        # PyTorch keeps a last window that Caffe drops (it starts in the end padding)
        pooled = ctx.op(F.avg_pool2d, x, kernel, stride, ceil_mode=True, count_include_pad=False)
        ctx.emit(top, operator.getitem, pooled,
                 (Ellipsis, slice(0, gh.output), slice(0, gw.output)))
