"""Region-of-interest pooling of the detection forks: Fast/Faster R-CNN's ROIPooling (max over
each roi's bins) and R-FCN's PSROIPooling (position-sensitive average). Bottoms: an N×C×H×W
map and R rois (batch index, x1, y1, x2, y2 in image coordinates); the top has one item per
roi, so axis 0 is no batch, and R may differ at run time from its static size (a Proposal
layer's rois): the emitters never bake R in.

The bins follow semantics.roi_pool_bins / psroi_pool_bins, written once against float32 tensor
operations that each emitter provides (OnnxOps, TorchOps below).
"""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import psroi_channels, psroi_pool_bins, roi_pool_bins
from senet.errors import ShapeError


def _roi_shapes(layer, in_shapes) -> tuple[tuple[int, ...], int]:
    """(the map's N×C×H×W, R) after Caffe's checks: a 4-D map, rois of 5 values each."""
    x, rois = in_shapes
    if len(x) != 4:
        raise ShapeError(f"{layer.type} needs an N×C×H×W map, got {list(x)}", layer=layer.name)
    if not rois or int(np.prod(rois[1:])) != 5:
        raise ShapeError(f"{layer.type} needs R×5 rois (batch index, x1, y1, x2, y2), got "
                         f"{list(rois)}", layer=layer.name)
    return tuple(x), rois[0]


def _pooled(layer) -> tuple[int, int, float]:
    p = layer.param.roi_pooling_param
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        raise ShapeError("ROIPooling needs pooled_h and pooled_w > 0", layer=layer.name)
    return p.pooled_h, p.pooled_w, float(np.float32(p.spatial_scale))


def _position_sensitive(layer, channels: int) -> tuple[int, int, float]:
    """(output_dim, group_size, spatial_scale); all three are required fields of R-FCN's
    message, and the map must have output_dim · group_size² channels."""
    p = layer.param.psroi_pooling_param
    missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
    if missing:
        raise ShapeError(f"PSROIPooling needs psroi_pooling_param {', '.join(missing)}",
                         layer=layer.name)
    if p.output_dim <= 0 or p.group_size <= 0:
        raise ShapeError("PSROIPooling needs output_dim and group_size > 0", layer=layer.name)
    if channels != p.output_dim * p.group_size ** 2:
        raise ShapeError(f"PSROIPooling: {channels} channels are not output_dim · group_size² "
                         f"= {p.output_dim * p.group_size ** 2}", layer=layer.name)
    return p.output_dim, p.group_size, float(np.float32(p.spatial_scale))


class _RoiLayer(LayerConverter):
    min_bottoms = max_bottoms = 2

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return False  # axis 0 of the rois and the top counts rois, not images


@register("ROIPooling", origin="Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)")
class ROIPooling(_RoiLayer):
    """Top[r, c, ph, pw] = the max of map[batch index of r, c] over bin (ph, pw) of roi r
    (semantics.roi_pool_bins), 0 for an empty bin."""

    def infer_shapes(self, layer, in_shapes):
        (_, c, _, _), rois = _roi_shapes(layer, in_shapes)
        pooled_h, pooled_w, _ = _pooled(layer)
        return [(rois, c, pooled_h, pooled_w)]

    def to_onnx(self, layer, g):
        # onnxruntime's MaxRoiPool gives Caffe's numbers: test_roi_layers checks it on rois
        # at every rounding edge
        pooled_h, pooled_w, scale = _pooled(layer)
        rois = g.tmp(layer.name + "/rois")
        g.node("Reshape", [layer.bottoms[1], g.ints([-1, 5], layer.name + "/roi_shape")],
               [rois])
        g.node("MaxRoiPool", [layer.bottoms[0], rois], layer.tops,
               pooled_shape=[pooled_h, pooled_w], spatial_scale=scale)

    def to_torch(self, layer, ctx):
        pooled_h, pooled_w, scale = _pooled(layer)
        ctx.emit(layer.tops[0], roi_max_pool, ctx.value(layer.bottoms[0]),
                 ctx.value(layer.bottoms[1]), pooled_h, pooled_w, scale)


@register("PSROIPooling", origin="R-FCN (daijifeng001/caffe-rfcn)")
class PSROIPooling(_RoiLayer):
    """Top[r, c, gh, gw] = the mean of map[batch index of r, (c·k + gh)·k + gw] over bin
    (gh, gw) of roi r (semantics.psroi_pool_bins, k = group_size), 0 for an empty bin.

    Both emitters sum a bin as four corners of the map's summed-area table, built in float64
    so that the differences lose nothing (Caffe sums the bin's cells in float)."""

    def infer_shapes(self, layer, in_shapes):
        (_, c, _, _), rois = _roi_shapes(layer, in_shapes)
        output_dim, group, _ = _position_sensitive(layer, c)
        return [(rois, output_dim, group, group)]

    def to_onnx(self, layer, g):
        (_, c, h, w), _ = _roi_shapes(layer, [g.shape(b) for b in layer.bottoms])
        output_dim, group, scale = _position_sensitive(layer, c)
        ops = OnnxOps(g, layer.name)
        name = layer.name
        rois = ops.fresh("rois")
        g.node("Reshape", [layer.bottoms[1], g.ints([-1, 5], name + "/roi_shape")], [rois])
        col = [ops.fresh(f"roi{k}") for k in range(5)]
        g.node("Split", [rois, g.ints([1] * 5, name + "/split")], col, axis=1)
        hs, he = psroi_pool_bins(ops, col[2], col[4], scale, group, h)  # R×k each
        ws, we = psroi_pool_bins(ops, col[1], col[3], scale, group, w)
        table = _onnx_summed_area(g, ops, layer.bottoms[0], h, w)
        batch = ops.cast_int(col[0])  # C++ int conversion: truncation, as Cast
        # flat index of table[b, channel, row, column]: b R×1×1×1, channel 1×D×k×k,
        # rows R×1×k×1, columns R×1×1×k
        plane = ops.add_int(ops.mul_int(ops.unsqueeze(batch, [2, 3]), c),
                            g.ints(psroi_channels(output_dim, group)[None], name + "/channel"))
        rows = {e: ops.mul_int(ops.unsqueeze(ops.cast_int(e), [1, 3]), w + 1) for e in (hs, he)}
        cols = {e: ops.unsqueeze(ops.cast_int(e), [1, 2]) for e in (ws, we)}
        base = ops.mul_int(plane, (h + 1) * (w + 1))

        def corner(row, column):
            index = ops.add_int(ops.add_int(base, rows[row]), cols[column])
            out = ops.fresh("corner")
            g.node("Gather", [table, index], [out], axis=0)
            return out

        total = ops.sub(ops.sub(corner(he, we), corner(he, ws)),
                        ops.sub(corner(hs, we), corner(hs, ws)))
        area = ops.mul(ops.unsqueeze(ops.sub(he, hs), [1, 3]),
                       ops.unsqueeze(ops.sub(we, ws), [1, 2]))
        mean = ops.fresh("sum32")
        g.node("Cast", [total], [mean], to=1)
        g.node("Div", [mean, ops.maximum(area, 1.0)], layer.tops)  # an empty bin sums 0

    def to_torch(self, layer, ctx):
        (_, c, _, _), _ = _roi_shapes(layer, [ctx.shape(b) for b in layer.bottoms])
        output_dim, group, scale = _position_sensitive(layer, c)
        ctx.emit(layer.tops[0], psroi_average_pool, ctx.value(layer.bottoms[0]),
                 ctx.value(layer.bottoms[1]), output_dim, group, scale)


def _onnx_summed_area(g, ops, x: str, h: int, w: int) -> str:
    """The map's summed-area table in float64, flattened: entry ((n·C + c)·(H+1) + i)·(W+1)
    + j is the sum of map[n, c, :i, :j]."""
    wide, rows, both, padded, flat = (ops.fresh(k) for k in
                                      ("f64", "cum_h", "cum_hw", "table", "flat"))
    g.node("Cast", [x], [wide], to=11)  # DOUBLE
    g.node("CumSum", [wide, g.ints(2, ops.name + "/axis_h")], [rows])
    g.node("CumSum", [rows, g.ints(3, ops.name + "/axis_w")], [both])
    g.node("Pad", [both, g.ints([0, 0, 1, 1, 0, 0, 0, 0], ops.name + "/pads")], [padded])
    g.node("Reshape", [padded, g.ints([-1], ops.name + "/flat_shape")], [flat])
    return flat


class OnnxOps:
    """semantics' roi-bin operations as ONNX nodes on float32 tensors (plus the int64 index
    arithmetic of the emitters)."""

    def __init__(self, g, name: str):
        self.g, self.name = g, name

    def fresh(self, hint: str) -> str:
        return self.g.tmp(f"{self.name}/{hint}")

    def _value(self, v) -> str:
        return self.g.const(np.float32(v), f"{self.name}/c") if isinstance(v, float) else v

    def _node(self, op: str, *inputs, **attrs) -> str:
        out = self.fresh(op.lower())
        self.g.node(op, [self._value(v) for v in inputs], [out], **attrs)
        return out

    def add(self, a, b): return self._node("Add", a, b)
    def sub(self, a, b): return self._node("Sub", a, b)
    def mul(self, a, b): return self._node("Mul", a, b)
    def div(self, a, b): return self._node("Div", a, b)
    def maximum(self, a, b): return self._node("Max", a, b)
    def minimum(self, a, b): return self._node("Min", a, b)
    def floor(self, a): return self._node("Floor", a)
    def ceil(self, a): return self._node("Ceil", a)
    def abs(self, a): return self._node("Abs", a)
    def sign(self, a): return self._node("Sign", a)

    def at_least(self, a, b):
        return self._node("Cast", self._node("GreaterOrEqual", a, b), to=1)

    def steps(self, n: int, first: int) -> str:
        return self.g.const(np.arange(first, first + n, dtype=np.float32), f"{self.name}/steps")

    def cast_int(self, a) -> str:
        return self._node("Cast", a, to=7)  # INT64

    def add_int(self, a, b): return self._node("Add", a, b)

    def mul_int(self, a, factor: int) -> str:
        return self._node("Mul", a, self.g.ints(factor, f"{self.name}/factor"))

    def unsqueeze(self, a, axes) -> str:
        return self._node("Unsqueeze", a, self.g.ints(list(axes), f"{self.name}/axes"))


class TorchOps:
    """semantics' roi-bin operations on float32 torch tensors. Constants are 1-element tensors
    on the rois' device, not Python scalars: torch may divide by a scalar as a multiplication
    by its reciprocal, which is not float division."""

    def __init__(self, like):
        import torch
        self.torch, self.like = torch, like

    def _value(self, v):
        if isinstance(v, float):
            return self.torch.full((1,), v, dtype=self.torch.float32, device=self.like.device)
        return v

    def add(self, a, b): return self.torch.add(a, self._value(b))
    def sub(self, a, b): return self.torch.sub(a, self._value(b))
    def mul(self, a, b): return self.torch.mul(a, self._value(b))
    def div(self, a, b): return self.torch.div(a, self._value(b))
    def maximum(self, a, b): return self.torch.maximum(a, self._value(b))
    def minimum(self, a, b): return self.torch.minimum(a, self._value(b))
    def floor(self, a): return self.torch.floor(a)
    def ceil(self, a): return self.torch.ceil(a)
    def abs(self, a): return self.torch.abs(a)
    def sign(self, a): return self.torch.sign(a)

    def at_least(self, a, b):
        return self.torch.ge(a, self._value(b)).to(self.torch.float32)

    def steps(self, n: int, first: int):
        return self.torch.arange(first, first + n, dtype=self.torch.float32,
                                 device=self.like.device)


def _torch_rois(rois):
    """The rois as R×5 float32 and their batch indices (int64, truncated as C++ converts)."""
    import torch
    rois = torch.reshape(rois, (-1, 5)).to(torch.float32)
    return rois, rois[:, 0].to(torch.int64)


def roi_max_pool(x, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
    """ROIPooling in torch ops (torch.export-able, R dynamic): each bin's max read from a
    sparse table of the map's maxima over 2^a × 2^b windows, as the max of the four windows
    (which may overlap) covering the bin; empty bins give 0. The table holds ⌊log2 H⌋+1 ×
    ⌊log2 W⌋+1 copies of the map."""
    import torch
    _, c, h, w = x.shape
    rois, batch = _torch_rois(rois)
    ops = TorchOps(rois)
    hs, he = roi_pool_bins(ops, rois[:, 2:3], rois[:, 4:5], spatial_scale, pooled_h, h)
    ws, we = roi_pool_bins(ops, rois[:, 1:2], rois[:, 3:4], spatial_scale, pooled_w, w)
    levels_h, levels_w = h.bit_length(), w.bit_length()
    table = _window_maxima(x, levels_h, levels_w)  # (N·Lh·Lw·H·W) × C
    rows, cols = _windows(hs, he, levels_h, h), _windows(ws, we, levels_w, w)
    (h0, h1, level_h), (w0, w1, level_w) = rows, cols
    level = level_h[:, :, None] * levels_w + level_w[:, None, :]  # R×ph×pw
    base = (batch[:, None, None] * (levels_h * levels_w) + level) * h
    values = []
    for row in (h0, h1):
        for col in (w0, w1):
            index = (base + row[:, :, None]) * w + col[:, None, :]
            values.append(table[index])  # R×ph×pw×C
    pooled = torch.amax(torch.stack(values), dim=0).permute(0, 3, 1, 2)
    empty = (he <= hs)[:, None, :, None] | (we <= ws)[:, None, None, :]
    return torch.where(empty, torch.zeros_like(pooled), pooled)


def _window_maxima(x, levels_h: int, levels_w: int):
    """Rows (n, a, b, i, j) of the result (channels along columns): the max of
    x[n, :, i:i + 2^a, j:j + 2^b], for every window inside the map (others are padding)."""
    import torch
    from torch.nn import functional as F

    def doubled(t, axis: int, span: int):
        # max over [i, i + 2·span) from two windows of span; the tail is never read
        shifted = torch.narrow(t, axis, span, t.shape[axis] - span)
        pad = (0, span) if axis == 3 else (0, 0, 0, span)
        return torch.maximum(t, F.pad(shifted, pad))

    tall = [x]
    for a in range(1, levels_h):
        tall.append(doubled(tall[-1], 2, 1 << (a - 1)))
    levels = []
    for t in tall:
        levels.append(t)
        for b in range(1, levels_w):
            levels.append(doubled(levels[-1], 3, 1 << (b - 1)))
    table = torch.stack(levels, dim=1)  # N × (Lh·Lw) × C × H × W
    return table.permute(0, 1, 3, 4, 2).reshape(-1, x.shape[1])


def _windows(lo, hi, levels: int, size: int):
    """For bins [lo, hi) (float, R×P) of an axis of `size`: the starts of the two windows of
    span 2^a covering the bin, with 2^a <= length < 2^(a+1) (int64; an empty bin's are any
    cell of the map), and a."""
    import torch
    length = hi - lo
    level = torch.zeros_like(length)
    for a in range(1, levels):
        level = level + (length >= float(1 << a)).to(length.dtype)
    last = size - 1
    first = torch.clamp(lo, 0, last).to(torch.int64)
    second = torch.clamp(hi - torch.pow(2.0, level), 0, last).to(torch.int64)
    return first, second, level.to(torch.int64)


def psroi_average_pool(x, rois, output_dim: int, group: int, spatial_scale: float):
    """PSROIPooling in torch ops (torch.export-able, R dynamic): each bin's sum as four
    corners of the float64 summed-area table of its channel, over its cell count."""
    import torch
    from torch.nn import functional as F
    _, c, h, w = x.shape
    rois, batch = _torch_rois(rois)
    ops = TorchOps(rois)
    hs, he = psroi_pool_bins(ops, rois[:, 2:3], rois[:, 4:5], spatial_scale, group, h)
    ws, we = psroi_pool_bins(ops, rois[:, 1:2], rois[:, 3:4], spatial_scale, group, w)
    table = F.pad(torch.cumsum(torch.cumsum(x.to(torch.float64), 2), 3), (1, 0, 1, 0))
    table = table.reshape(-1)
    channel = torch.from_numpy(psroi_channels(output_dim, group)).to(x.device)
    base = (batch[:, None, None, None] * c + channel[None]) * ((h + 1) * (w + 1))
    rows = {k: e.to(torch.int64)[:, None, :, None] * (w + 1) for k, e in (("lo", hs),
                                                                         ("hi", he))}
    cols = {k: e.to(torch.int64)[:, None, None, :] for k, e in (("lo", ws), ("hi", we))}

    def corner(row: str, col: str):
        return table[base + rows[row] + cols[col]]

    total = (corner("hi", "hi") - corner("hi", "lo")) - (corner("lo", "hi") - corner("lo", "lo"))
    area = (he - hs)[:, None, :, None] * (we - ws)[:, None, None, :]
    return total.to(torch.float32) / torch.clamp(area, min=1.0)  # an empty bin sums 0
