"""Resizing layers of the Caffe forks: Interp (PSPNet, DeepLab; the size from a second bottom
in the Residual Attention networks' fork) and Upsample, which is two layers under one name:
SegNet's max-unpooling (two bottoms: the values and the argmax mask of a Pooling layer's second
top) and the YOLO forks' nearest-neighbour upsampling (one bottom). The bottom count decides,
as each fork's layer takes exactly that many."""

from __future__ import annotations

import operator

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import interp_output_size, unpool_output_size
from senet.errors import ShapeError


def _four_d(layer, shape, what: str = "input") -> None:
    if len(shape) != 4:
        raise ShapeError(f"{layer.type} needs an N×C×H×W {what}, got {list(shape)}",
                         layer=layer.name)


def interp_geometry(layer, in_shapes) -> tuple[tuple[int, int], tuple[int, int], int]:
    """((cropped H, W), (output H, W), crop start) of an Interp layer: the output size from
    zoom/shrink factors, height and width, or bottom[1]'s H×W — exactly one of these, as the
    fork checks (DeepLab's zoom with shrink counts as one)."""
    p = layer.param.interp_param
    x = in_shapes[0]
    _four_d(layer, x)
    factors = p.HasField("zoom_factor") or p.HasField("shrink_factor")
    explicit = p.HasField("height") and p.HasField("width")
    if factors + explicit + (len(in_shapes) == 2) != 1:
        raise ShapeError("Interp needs exactly one of zoom_factor/shrink_factor, "
                         "height+width, or a second bottom", layer=layer.name)
    zoom = p.zoom_factor if p.HasField("zoom_factor") else None
    shrink = p.shrink_factor if p.HasField("shrink_factor") else None
    sizes = [interp_output_size(size, p.pad_beg, p.pad_end, zoom, shrink, layer.name)
             for size in x[2:]]
    cropped = (sizes[0][0], sizes[1][0])
    if explicit:
        out = (p.height, p.width)
    elif len(in_shapes) == 2:
        _four_d(layer, in_shapes[1], "bottom[1]")
        out = tuple(in_shapes[1][2:])
    else:
        out = (sizes[0][1], sizes[1][1])
    if min(out) <= 0:
        raise ShapeError(f"Interp output size {list(out)} must be positive", layer=layer.name)
    return cropped, out, -p.pad_beg


@register("Interp", origin="PSPNet (hszhao/PSPNet), DeepLab v2; 2nd bottom: Residual "
                           "Attention (fwang91/residual-attention-network)")
class Interp(LayerConverter):
    """Bilinear resize with aligned corners (caffe_cpu_interp2: position i·(in-1)/(out-1)) of
    the input cropped by -pad_beg at the start and -pad_end at the end of H and W."""

    max_bottoms = 2

    def infer_shapes(self, layer, in_shapes):
        _, out, _ = interp_geometry(layer, in_shapes)
        return [tuple(in_shapes[0][:2]) + out]

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        in_shapes = [g.shape(b) for b in layer.bottoms]
        cropped, out, start = interp_geometry(layer, in_shapes)
        if cropped != tuple(in_shapes[0][2:]):
            crop = g.tmp(name + "/crop")
            g.node("Slice", [x, g.ints([start, start], name + "/starts"),
                             g.ints([start + cropped[0], start + cropped[1]], name + "/ends"),
                             g.ints([2, 3], name + "/axes")], [crop])
            x = crop
        if cropped == out:  # the fork copies
            g.node("Identity", [x], layer.tops)
            return
        g.node("Resize", [x, "", "", _onnx_sizes(g, x, out, name)], layer.tops,
               mode="linear", coordinate_transformation_mode="align_corners")

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        in_shapes = [ctx.shape(b) for b in layer.bottoms]
        cropped, out, start = interp_geometry(layer, in_shapes)
        x = ctx.value(layer.bottoms[0])
        if cropped != tuple(in_shapes[0][2:]):
            window = (Ellipsis, slice(start, start + cropped[0]), slice(start, start + cropped[1]))
            x = ctx.op(operator.getitem, x, window)
        if cropped == out:
            ctx.define(layer.tops[0], x)
            return
        ctx.emit(layer.tops[0], F.interpolate, x, size=out, mode="bilinear",
                 align_corners=True)


def _onnx_sizes(g, x: str, out: tuple[int, int], name: str) -> str:
    """Resize's `sizes` input N, C, out_h, out_w with N and C read from x at run time (the
    batch stays dynamic)."""
    sizes = g.tmp(name + "/sizes")
    g.node("Concat", [_leading_dims(g, x, name), g.ints(list(out), name + "/hw")], [sizes],
           axis=0)
    return sizes


def _leading_dims(g, x: str, name: str) -> str:
    """x's N and C as a 2-element int64 tensor read at run time."""
    shape, lead = g.tmp(name + "/shape"), g.tmp(name + "/nc")
    g.node("Shape", [x], [shape])
    g.node("Slice", [shape, g.ints([0], name + "/zero"), g.ints([2], name + "/two")], [lead])
    return lead


def unpool_size(layer, in_shapes) -> tuple[int, int]:
    """SegNet Upsample's output H×W; the mask must have the values' shape (the fork's
    check)."""
    p = layer.param.upsample_param
    x, mask = in_shapes
    _four_d(layer, x)
    if tuple(mask) != tuple(x):
        raise ShapeError(f"Upsample mask {list(mask)} must have the shape of bottom[0] "
                         f"{list(x)}", layer=layer.name)
    explicit = p.HasField("upsample_h") and p.HasField("upsample_w")
    if p.HasField("scale_h") != p.HasField("scale_w") or (
            p.HasField("scale") and p.HasField("scale_h")):
        raise ShapeError("Upsample needs upsample_h and upsample_w, or scale, or scale_h "
                         "and scale_w", layer=layer.name)
    scales = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
    given = (p.upsample_h, p.upsample_w) if explicit else (None, None)
    return tuple(unpool_output_size(size, want, scale, pad, layer.name)
                 for size, want, scale, pad in zip(x[2:], given, scales,
                                                   (p.pad_out_h, p.pad_out_w)))


SEGNET_ONLY = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


def nearest_scale(layer, in_shape) -> int:
    """The YOLO forks' Upsample factor (upsample_param.scale, a positive integer). SegNet's
    size fields on a one-bottom Upsample mean its mask bottom is missing: refused, as
    upsampling without the mask is not SegNet's result."""
    _four_d(layer, in_shape)
    p = layer.param.upsample_param
    given = [f for f in SEGNET_ONLY if p.HasField(f)]
    if given:
        raise ShapeError(f"Upsample with {', '.join(given)} is SegNet's unpooling and needs "
                         "the Pooling mask as bottom[1]", layer=layer.name)
    if p.scale < 1:
        raise ShapeError("nearest Upsample needs a positive scale", layer=layer.name)
    return int(p.scale)


@register("Upsample", origin="SegNet (alexgkendall/caffe-segnet) with a mask bottom; "
                             "YOLOv3 forks (ChenYingpeng/caffe-yolov3) with one bottom")
class Upsample(LayerConverter):
    """Two bottoms: SegNet's unpooling — a zero top where each value x[n, c, i] is written at
    plane index mask[n, c, i] (in bottom order, so of two equal indices the later value
    stays). One bottom: top[h, w] = x[h / scale, w / scale]."""

    max_bottoms = 2

    def infer_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        if len(in_shapes) == 2:
            return [tuple(x[:2]) + unpool_size(layer, in_shapes)]
        s = nearest_scale(layer, x)
        return [(x[0], x[1], x[2] * s, x[3] * s)]

    def to_onnx(self, layer, g):
        if len(layer.bottoms) == 1:
            s = float(nearest_scale(layer, g.shape(layer.bottoms[0])))
            scales = g.const(np.array([1, 1, s, s], np.float32), layer.name + "/scales")
            g.node("Resize", [layer.bottoms[0], "", scales], layer.tops, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            return
        self._unpool_onnx(layer, g)

    def _unpool_onnx(self, layer, g):
        x, mask = layer.bottoms
        name = layer.name
        n_c = g.shape(x)[1]
        out = unpool_size(layer, [g.shape(b) for b in layer.bottoms])
        flat_x, flat_index, index, zeros_shape, zeros, scattered = (
            g.tmp(f"{name}/{h}") for h in ("values", "index_f", "index", "zeros_shape",
                                           "zeros", "scattered"))
        flat = g.ints([0, n_c, -1], name + "/flat")
        g.node("Reshape", [x, flat], [flat_x])
        g.node("Reshape", [mask, flat], [flat_index])
        g.node("Cast", [flat_index], [index], to=7)  # INT64; Caffe's static_cast<int>
        g.node("Concat", [_leading_dims(g, flat_x, name),
                          g.ints([out[0] * out[1]], name + "/plane")], [zeros_shape], axis=0)
        g.node("ConstantOfShape", [zeros_shape], [zeros])
        g.node("ScatterElements", [zeros, index, flat_x], [scattered], axis=2)
        g.node("Reshape", [scattered, g.ints([0, n_c, out[0], out[1]], name + "/out")],
               layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        x = ctx.value(layer.bottoms[0])
        if len(layer.bottoms) == 1:
            s = nearest_scale(layer, ctx.shape(layer.bottoms[0]))
            ctx.emit(layer.tops[0], torch.repeat_interleave,
                     ctx.op(torch.repeat_interleave, x, s, 2), s, 3)
            return
        out = unpool_size(layer, [ctx.shape(b) for b in layer.bottoms])
        channels = ctx.shape(layer.bottoms[0])[1]
        flat_x = ctx.op(torch.flatten, x, 2)
        index = ctx.method("long", ctx.op(torch.flatten, ctx.value(layer.bottoms[1]), 2))
        zeros = ctx.method("new_zeros", flat_x,
                           (ctx.method("size", flat_x, 0), channels, out[0] * out[1]))
        scattered = ctx.op(torch.scatter, zeros, 2, index, flat_x)
        ctx.emit(layer.tops[0], torch.reshape, scattered, (-1, channels, out[0], out[1]))

