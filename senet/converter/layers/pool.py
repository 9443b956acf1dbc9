"""Pooling (MAX with its optional argmax top, AVE) and SPP, with Caffe's ceil-and-clip output
size, AVE divisor and empty windows; and the Synopsys fork's asymmetric pad_t/pad_b/pad_l/pad_r
and AVE_EXC_PAD, and the forks' ceil_mode."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    PoolGeometry, asymmetric_pads, ave_pool_divisors, pool_geometry, pool_output_size,
    pool_rounds_up, spatial_param, spp_level_window, without_empty_windows,
)
from senet.errors import ShapeError

FLT_MAX = float(np.finfo(np.float32).max)
STOCHASTIC_REFUSED = ("STOCHASTIC pooling has no CPU forward in Caffe (pooling_layer.cpp: "
                      "NOT_IMPLEMENTED); its GPU-only TEST forward is not supported")


@dataclass(frozen=True)
class Pool:
    """One Caffe pooling of an N×C×H×W blob: MAX or AVE, and both spatial axes' windows."""

    is_max: bool
    h: PoolGeometry
    w: PoolGeometry
    is_global: bool = False
    exclude_pad: bool = False  # Synopsys' AVE_EXC_PAD: divide by the cells inside the input

    @property
    def empty_value(self) -> float:
        """What Caffe gives a window that covers no input cell: MAX's initial -FLT_MAX, AVE's
        0/0."""
        return -FLT_MAX if self.is_max else float("nan")


def _geometries(in_shape, kernel, pad, stride, ceil_mode, layer,
                after=None) -> tuple[PoolGeometry, ...]:
    """Both axes' geometry; `after`: the padding after the input when it differs from `pad`
    (Synopsys), else None."""
    if len(in_shape) != 4:
        raise ShapeError(f"pooling needs a 4-D input, got {list(in_shape)}", layer=layer)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ShapeError("pooling kernel and stride must be positive", layer=layer)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ShapeError(f"pooling pad {list(pad)} must be smaller than the kernel "
                         f"{list(kernel)}", layer=layer)
    after = after or pad
    any_pad = bool(pad[0] or pad[1] or after[0] or after[1])
    geoms = tuple(pool_geometry(size, k, p, s, ceil_mode, any_pad, a)
                  for size, k, p, s, a in zip(in_shape[2:], kernel, pad, stride, after))
    if geoms[0].output <= 0 or geoms[1].output <= 0:
        raise ShapeError(f"input {list(in_shape)} is smaller than the pooling kernel",
                         layer=layer)
    return geoms


def pool_of(layer, in_shape) -> Pool:
    """The pooling a Pooling layer does on a blob of `in_shape`."""
    p = layer.param.pooling_param
    if p.pool == p.STOCHASTIC:
        raise ShapeError(STOCHASTIC_REFUSED, layer=layer.name)
    is_max, exclude_pad = p.pool == p.MAX, p.pool == p.AVE_EXC_PAD
    asymmetric = asymmetric_pads(p, layer.name)
    if p.global_pooling:
        if len(in_shape) != 4:
            raise ShapeError(f"pooling needs a 4-D input, got {list(in_shape)}",
                             layer=layer.name)
        if asymmetric:
            raise ShapeError("global pooling takes no padding", layer=layer.name)
        height, width = in_shape[2], in_shape[3]
        return Pool(is_max, pool_geometry(height, height, 0, 1, True),
                    pool_geometry(width, width, 0, 1, True), is_global=True,
                    exclude_pad=exclude_pad)
    kernel = spatial_param(p, "kernel_size", 2, 0, layer.name)
    pad, after = asymmetric or (spatial_param(p, "pad", 2, 0, layer.name), None)
    stride = spatial_param(p, "stride", 2, 1, layer.name)
    gh, gw = _geometries(in_shape, kernel, pad, stride, pool_rounds_up(p, layer.name),
                         layer.name, after)
    return Pool(is_max, gh, gw, exclude_pad=exclude_pad)


def spp_levels(layer, in_shape) -> list[Pool]:
    """The poolings of an SPP layer's pyramid levels (see semantics.spp_level_window)."""
    p = layer.param.spp_param
    if p.pool == p.STOCHASTIC:
        raise ShapeError(STOCHASTIC_REFUSED, layer=layer.name)
    if p.pyramid_height < 1:
        raise ShapeError("SPP pyramid_height must be at least 1", layer=layer.name)
    if len(in_shape) != 4:
        raise ShapeError(f"SPP needs a 4-D input, got {list(in_shape)}", layer=layer.name)
    levels = []
    for level in range(p.pyramid_height):
        (kh, ph), (kw, pw) = (spp_level_window(size, level) for size in in_shape[2:])
        try:
            gh, gw = _geometries(in_shape, (kh, kw), (ph, pw), (kh, kw), True, layer.name)
        except ShapeError as error:
            raise ShapeError(f"pyramid level {level}: {error.what}", layer=layer.name) from None
        levels.append(Pool(p.pool == p.MAX, gh, gw))
    return levels


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


# ----------------------------------------------------------------------------- ONNX

def pool_to_onnx(g, pool: Pool, x: str, out: str, mask: str | None = None) -> None:
    """Nodes computing `pool` of `x` into `out` (and, for MAX, Caffe's argmax `mask`: the
    index h·W + w in the unpadded plane, as float). Windows that start past the input are
    no ONNX window: the others are pooled and these appended as Caffe's constant."""
    th, tw = without_empty_windows(pool.h), without_empty_windows(pool.w)
    empty = (pool.h.output - th.output, pool.w.output - tw.output)
    pooled = g.tmp(out + "/pooled") if any(empty) else out
    if pool.is_global and mask is None:
        g.node("GlobalMaxPool" if pool.is_max else "GlobalAveragePool", [x], [pooled])
    elif pool.is_max:
        indices = [g.tmp(out + "/indices")] if mask else []
        # MAX ignores padding cells, so explicit pads reproduce Caffe's clipped windows.
        g.node("MaxPool", [x], [pooled] + indices, kernel_shape=[th.kernel, tw.kernel],
               strides=[th.stride, tw.stride], pads=[th.pad, tw.pad, th.pad_end, tw.pad_end])
        if mask:
            argmax = g.tmp(mask + "/argmax") if any(empty) else mask
            _onnx_plane_index(g, indices[0], argmax, th.input_extent * tw.input_extent)
    elif pool.exclude_pad:
        # count_include_pad=0 over implicit pads divides by the cells inside the input
        g.node("AveragePool", [x], [pooled], kernel_shape=[th.kernel, tw.kernel],
               strides=[th.stride, tw.stride], pads=[th.pad, tw.pad, th.pad_end, tw.pad_end],
               count_include_pad=0)
    else:
        _onnx_ave(g, x, pooled, th, tw)
    if any(empty):
        _onnx_append_windows(g, pooled, out, empty, pool.empty_value)
        if mask:
            _onnx_append_windows(g, argmax, mask, empty, -1.0)


def _onnx_plane_index(g, indices: str, out: str, plane: int) -> None:
    # ONNX numbers MaxPool indices over the whole N×C×H×W tensor; Caffe within each plane
    local = g.tmp(out + "/local")
    g.node("Mod", [indices, g.ints(np.array(plane), out + "/plane")], [local])
    g.node("Cast", [local], [out], to=1)  # FLOAT


def _onnx_append_windows(g, x: str, out: str, counts: tuple[int, int], value: float) -> None:
    g.node("Pad", [x, g.ints([0, 0, 0, 0, 0, 0, counts[0], counts[1]], out + "/empty"),
                   g.const(np.array(value, np.float32), out + "/empty_value")], [out])


def _onnx_ave(g, x: str, out: str, gh: PoolGeometry, gw: PoolGeometry) -> None:
    # Caffe divides by the window clipped to the padded input [-pad, size+pad_after). Zero
    # padding made explicit counts those cells; the extra ceil-mode cells past it are excluded
    # by count_include_pad=0.
    if gh.pad or gw.pad or gh.after or gw.after:
        padded = g.tmp(out + "/padded")
        g.node("Pad", [x, g.ints([0, 0, gh.pad, gw.pad, 0, 0, gh.after, gw.after],
                                 out + "/pads")], [padded])
        x = padded
    g.node("AveragePool", [x], [out], kernel_shape=[gh.kernel, gw.kernel],
           strides=[gh.stride, gw.stride],
           pads=[0, 0, max(0, gh.pad_end - gh.after), max(0, gw.pad_end - gw.after)],
           count_include_pad=0)


# ----------------------------------------------------------------------------- torch

def pool_to_torch(ctx, pool: Pool, x, want_mask: bool = False, top: str | None = None):
    """fx nodes (value, argmax mask or None) computing `pool` of the node `x` (see
    pool_to_onnx for the mask and the empty windows); the value's node is named after
    `top` when given."""
    import torch
    from torch.nn import functional as F

    def last(fn, *args, **kwargs):
        return ctx.emit(top, fn, *args, **kwargs) if top else ctx.op(fn, *args, **kwargs)

    th, tw = without_empty_windows(pool.h), without_empty_windows(pool.w)
    empty = (pool.h.output - th.output, pool.w.output - tw.output)
    make = ctx.op if any(empty) else last
    mask = None
    if covers_input(th) and covers_input(tw) and not want_mask:
        if pool.is_max:
            value = make(torch.amax, x, dim=(2, 3), keepdim=True)
        else:  # the SE block's squeeze
            value = make(torch.ops.senet.global_avg_pool.default, x)
    elif pool.is_max:
        value, mask = _torch_max(ctx, make, x, th, tw, want_mask)
    elif pool.exclude_pad or th.pad_after is not None or tw.pad_after is not None:
        value = _torch_window_sums(ctx, make, x, th, tw, pool.exclude_pad)
    else:
        value = _torch_ave(ctx, make, x, th, tw)
    if any(empty):
        widths = (0, empty[1], 0, empty[0])
        value = last(F.pad, value, widths, value=pool.empty_value)
        if mask is not None:
            mask = ctx.op(F.pad, mask, widths, value=-1.0)
    return value, mask


def _torch_max(ctx, make, x, gh: PoolGeometry, gw: PoolGeometry, want_mask: bool):
    from torch.nn import functional as F
    kernel, stride = (gh.kernel, gw.kernel), (gh.stride, gw.stride)
    pool = F.max_pool2d_with_indices if want_mask else F.max_pool2d
    make_pool = ctx.op if want_mask else make
    native = all(2 * g.pad <= g.kernel and torch_pool_output(g, g.pad) == g.output
                 for g in (gh, gw))
    if native:
        # PyTorch's own ceil mode clips windows as Caffe does here; padding never wins
        result = make_pool(pool, x, kernel, stride, padding=(gh.pad, gw.pad), ceil_mode=True)
    else:
        # -inf padding made explicit: floor-mode windows then are Caffe's clipped ones
        if gh.pad or gw.pad or gh.pad_end or gw.pad_end:
            x = ctx.op(F.pad, x, (gw.pad, gw.pad_end, gh.pad, gh.pad_end),
                       value=float("-inf"))
        result = make_pool(pool, x, kernel, stride)
    if not want_mask:
        return result, None
    value, index = make(operator.getitem, result, 0), ctx.op(operator.getitem, result, 1)
    if not native:
        index = _unpadded_index(ctx, index, gh, gw)
    return value, ctx.method("to", index, ctx.dtype)


def _unpadded_index(ctx, index, gh: PoolGeometry, gw: PoolGeometry):
    """Index h'·W' + w' in the explicitly padded plane as Caffe's h·W + w in the input
    (h = h' − pad_h, w = w' − pad_w): index + row·(W − W') − (pad_h·W + pad_w)."""
    import torch
    width, padded_width = gw.input_extent, gw.input_extent + gw.pad + gw.pad_end
    row = ctx.op(torch.div, index, padded_width, rounding_mode="floor")
    shifted = ctx.op(torch.add, index, row, alpha=width - padded_width)
    return ctx.op(torch.sub, shifted, gh.pad * width + gw.pad)


def _torch_ave(ctx, make, x, gh: PoolGeometry, gw: PoolGeometry):
    from torch.nn import functional as F
    kernel, stride = (gh.kernel, gw.kernel), (gh.stride, gw.stride)
    full = bool(np.all(ave_pool_divisors(gh, gw) == gh.kernel * gw.kernel))
    if full and all(2 * g.pad <= g.kernel and
                    torch_pool_output(g, g.pad, ceil_mode=False) == g.output
                    for g in (gh, gw)):
        # every window counts kernel cells, padding included: PyTorch's floor mode
        return make(F.avg_pool2d, x, kernel, stride, padding=(gh.pad, gw.pad),
                    count_include_pad=True)
    # Caffe divides by the window clipped to the padded input: zero padding made explicit
    # (counted), then ceil mode over it without implicit padding (overhang not counted).
    # With no empty window left every window starts inside the input, so PyTorch keeps all
    # of Caffe's windows, and at most one more that starts in the end padding.
    outputs = [torch_pool_output(PoolGeometry(g.kernel, g.stride, 0, g.output,
                                              g.input_extent + 2 * g.pad), 0)
               for g in (gh, gw)]
    if gh.pad or gw.pad:
        x = ctx.op(F.pad, x, (gw.pad, gw.pad, gh.pad, gh.pad))
    if outputs == [gh.output, gw.output]:
        return make(F.avg_pool2d, x, kernel, stride, ceil_mode=True, count_include_pad=False)
    pooled = ctx.op(F.avg_pool2d, x, kernel, stride, ceil_mode=True, count_include_pad=False)
    return make(operator.getitem, pooled, (Ellipsis, slice(0, gh.output), slice(0, gw.output)))


def _torch_window_sums(ctx, make, x, gh: PoolGeometry, gw: PoolGeometry, exclude_pad: bool):
    """Caffe's AVE as each window's sum over the zero-padded input divided by its divisor
    (a constant): any padding, AVE_EXC_PAD's divisor as well as AVE's."""
    import torch
    from torch.nn import functional as F
    x = ctx.op(F.pad, x, (gw.pad, gw.pad_end, gh.pad, gh.pad_end))
    sums = ctx.op(F.avg_pool2d, x, (gh.kernel, gw.kernel), (gh.stride, gw.stride),
                  divisor_override=1)
    sums = ctx.op(operator.getitem, sums, (Ellipsis, slice(0, gh.output), slice(0, gw.output)))
    divisors = ave_pool_divisors(gh, gw, exclude_pad).astype(np.float32)
    return make(torch.div, sums, ctx.buffer("divisors", divisors))


# ----------------------------------------------------------------------------- layers

@register("Pooling")
class Pooling(LayerConverter):
    max_tops = 2

    def infer_shapes(self, layer, in_shapes):
        pool = pool_of(layer, in_shapes[0])
        if len(layer.tops) == 2 and not pool.is_max:
            raise ShapeError("only MAX pooling has a second (argmax mask) top",
                             layer=layer.name)
        x = in_shapes[0]
        return [(x[0], x[1], pool.h.output, pool.w.output)] * len(layer.tops)

    def to_onnx(self, layer, g):
        pool = pool_of(layer, g.shape(layer.bottoms[0]))
        pool_to_onnx(g, pool, layer.bottoms[0], layer.tops[0],
                     layer.tops[1] if len(layer.tops) == 2 else None)

    def to_torch(self, layer, ctx):
        pool = pool_of(layer, ctx.shape(layer.bottoms[0]))
        _, mask = pool_to_torch(ctx, pool, ctx.value(layer.bottoms[0]),
                                want_mask=len(layer.tops) == 2, top=layer.tops[0])
        if mask is not None:
            ctx.define(layer.tops[1], mask)


@register("SPP")
class SPP(LayerConverter):
    """Spatial pyramid pooling: each level pooled, flattened to N×(C·bins) and concatenated
    on axis 1; a pyramid of height 1 is its one pooling, not flattened (as in spp_layer.cpp)."""

    def infer_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        levels = spp_levels(layer, x)
        if len(levels) == 1:
            return [(x[0], x[1], levels[0].h.output, levels[0].w.output)]
        return [(x[0], sum(x[1] * p.h.output * p.w.output for p in levels))]

    def to_onnx(self, layer, g):
        x, top = layer.bottoms[0], layer.tops[0]
        levels = spp_levels(layer, g.shape(x))
        if len(levels) == 1:
            pool_to_onnx(g, levels[0], x, top)
            return
        flat = []
        for i, pool in enumerate(levels):
            pooled, level = g.tmp(f"{layer.name}/level{i}"), g.tmp(f"{layer.name}/flat{i}")
            pool_to_onnx(g, pool, x, pooled)
            g.node("Flatten", [pooled], [level], axis=1)
            flat.append(level)
        g.node("Concat", flat, [top], axis=1)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        levels = spp_levels(layer, ctx.shape(layer.bottoms[0]))
        if len(levels) == 1:
            pool_to_torch(ctx, levels[0], x, top=layer.tops[0])
            return
        flat = [ctx.op(torch.flatten, pool_to_torch(ctx, pool, x)[0], 1) for pool in levels]
        ctx.emit(layer.tops[0], torch.cat, flat, 1)
