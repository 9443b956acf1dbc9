"""Convolution, Deconvolution and Im2col: Caffe's BaseConvolutionLayer geometry.

`convolution_param.axis` is the channel axis: the axes before it are all batch (folded into one
for the N×C×spatial operators), every axis after it is spatial (1 to 3 of them). Kernel, pad,
stride and dilation are one value for every spatial axis or one per axis (`_h`/`_w` in 2-D).
A Convolution or Deconvolution with several bottom/top pairs applies its one weight set to
each bottom (Caffe requires the bottoms to have one shape).

Fork fields: DeepLab v1's hole (hole_h/hole_w) is the dilation; the Synopsys fork's
pad_t/pad_b/pad_l/pad_r pad a 2-D Convolution differently before and after the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    asymmetric_pads, canonical_axis, conv_output_size, deconv_output_size, deeplab_hole,
    im2col_one_hot, spatial_param,
)
from senet.errors import ShapeError

MAX_SPATIAL_AXES = 3  # what ONNX Runtime's and PyTorch's convolutions cover


@dataclass(frozen=True)
class Window:
    """The sliding window of a convolution-like layer on one input shape."""

    axis: int  # the channel axis (canonical)
    channels: int
    kernel: tuple[int, ...]
    pad: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_after: tuple[int, ...] | None = None  # Synopsys' padding after the input, if not `pad`

    @property
    def after(self) -> tuple[int, ...]:
        return self.pad if self.pad_after is None else self.pad_after

    def onnx_attrs(self) -> dict:
        return {"kernel_shape": list(self.kernel), "pads": list(self.pad) + list(self.after),
                "strides": list(self.stride), "dilations": list(self.dilation)}

    def symmetric(self, layer) -> "Window":
        """This window, refusing asymmetric padding (Synopsys pads only its Convolution)."""
        if self.pad_after is not None:
            raise ShapeError(f"pad_t/pad_b/pad_l/pad_r are supported on Convolution only, "
                             f"not on {layer.type}", layer=layer.name)
        return self


def window(layer, in_shape) -> Window:
    """Caffe's window geometry of `layer` (its convolution_param) on `in_shape`."""
    p = layer.param.convolution_param
    axis = canonical_axis(p.axis, len(in_shape), layer.name)
    n_spatial = len(in_shape) - axis - 1
    if n_spatial < 1:
        raise ShapeError(f"{layer.type} needs a spatial axis after the channel axis {axis}; "
                         f"the input is {list(in_shape)}", layer=layer.name)
    for field in ("kernel", "pad", "stride"):
        listed = "kernel_size" if field == "kernel" else field
        if (p.HasField(f"{field}_h") or p.HasField(f"{field}_w")) and len(getattr(p, listed)):
            raise ShapeError(f"give either {listed} or {field}_h/{field}_w, not both",
                             layer=layer.name)
    kernel = spatial_param(p, "kernel_size", n_spatial, 0, layer.name)
    pad = spatial_param(p, "pad", n_spatial, 0, layer.name)
    stride = spatial_param(p, "stride", n_spatial, 1, layer.name)
    dilation = _dilation(p, n_spatial, layer.name)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ShapeError("kernel, stride and dilation must be positive", layer=layer.name)
    asymmetric = asymmetric_pads(p, layer.name)
    if asymmetric is None:
        return Window(axis, in_shape[axis], kernel, pad, stride, dilation)
    if n_spatial != 2 or axis != 1:
        raise ShapeError(f"pad_t/pad_b/pad_l/pad_r need an N×C×H×W input, got "
                         f"{list(in_shape)} with channel axis {axis}", layer=layer.name)
    before, after = asymmetric
    return Window(axis, in_shape[axis], kernel, before, stride, dilation,
                  None if after == before else after)


def _dilation(p, n_spatial: int, layer: str) -> tuple[int, ...]:
    """BVLC's dilation, or DeepLab v1's hole (the same thing); both given must agree."""
    dilation = spatial_param(p, "dilation", n_spatial, 1, layer)
    hole = deeplab_hole(p, n_spatial, layer)
    if hole is None:
        return dilation
    if len(p.dilation) and dilation != hole:
        raise ShapeError(f"dilation {list(dilation)} and hole {list(hole)} disagree",
                         layer=layer)
    return hole


@dataclass(frozen=True)
class ConvSpec:
    window: Window
    num_output: int
    group: int
    bias: bool


def conv_spec(layer, in_shape) -> ConvSpec:
    """Window plus Caffe's checks of num_output and group."""
    w = window(layer, in_shape)
    p = layer.param.convolution_param
    if p.num_output <= 0 or p.group <= 0 or p.num_output % p.group:
        raise ShapeError(f"num_output {p.num_output} is not a positive multiple of group "
                         f"{p.group}", layer=layer.name)
    if w.channels % p.group:
        raise ShapeError(f"{w.channels} input channels do not split into {p.group} groups",
                         layer=layer.name)
    return ConvSpec(w, p.num_output, p.group, p.bias_term)


def _check_pairs(layer, in_shapes) -> None:
    if len(layer.tops) != len(layer.bottoms):
        raise ShapeError(f"{len(layer.bottoms)} bottoms need as many tops, got "
                         f"{len(layer.tops)}", layer=layer.name)
    for shape in in_shapes[1:]:
        if tuple(shape) != tuple(in_shapes[0]):
            raise ShapeError(f"all bottoms must have one shape: {list(in_shapes[0])} vs "
                             f"{list(shape)}", layer=layer.name)


def _emitted_spatial_axes(layer, w: Window) -> int:
    n = len(w.kernel)
    if n > MAX_SPATIAL_AXES:
        raise ShapeError(f"{layer.type} over {n} spatial axes has no emitter (1 to "
                         f"{MAX_SPATIAL_AXES})", layer=layer.name)
    return n


def onnx_on_channel_axis(g, layer, axis: int, bottom: str, top: str, emit) -> None:
    """`emit(x, y)` writes an N×C×spatial node from x to y; axes before the channel axis
    `axis` are folded into N around it (Reshape), so any number of them works."""
    if axis == 1:
        emit(bottom, top)
        return
    folded, result = g.tmp(f"{top}/folded"), g.tmp(f"{top}/unfolded")
    in_shape, out_shape = g.shape(bottom), g.shape(top)
    g.node("Reshape", [bottom, g.ints([-1, *in_shape[axis:]], f"{layer.name}/fold")], [folded])
    emit(folded, result)
    # the leading axes but the first are static: -1 keeps the batch dynamic
    g.node("Reshape", [result, g.ints([-1, *out_shape[1:]], f"{layer.name}/unfold")], [top])


def torch_on_channel_axis(ctx, axis: int, bottom: str, top: str, fn, *args, **kwargs) -> None:
    """Define `top` as fn(x, *args, **kwargs) for an N×C×spatial fn, folding the axes before
    the channel axis `axis` into N around it."""
    import torch
    x = ctx.value(bottom)
    if axis == 1:
        ctx.emit(top, fn, x, *args, **kwargs)
        return
    in_shape, out_shape = ctx.shape(bottom), ctx.shape(top)
    folded = ctx.op(torch.reshape, x, (-1, *in_shape[axis:]))
    result = ctx.op(fn, folded, *args, **kwargs)
    ctx.emit(top, torch.reshape, result, (-1, *out_shape[1:]))


class _Windowed(LayerConverter):
    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        """Axis 0 is the batch unless it is the channel axis (the weights span it)."""
        return (window(layer, in_shapes[0]).axis > 0
                and super().keeps_batch(layer, in_shapes, out_shapes, batch))


class _Convolution(_Windowed):
    """Convolution and Deconvolution: one weight set over every bottom/top pair."""

    max_bottoms = None
    max_tops = None
    onnx_op = ""
    torch_fns = ()  # F.<op>1d, 2d, 3d names
    pads_asymmetrically = False  # Synopsys' pad_t/pad_b/pad_l/pad_r

    def spec(self, layer, in_shape) -> ConvSpec:
        spec = conv_spec(layer, in_shape)
        if not self.pads_asymmetrically:
            spec.window.symmetric(layer)
        return spec

    def weight_shape(self, spec: ConvSpec) -> tuple[int, ...]:
        raise NotImplementedError

    def spatial_size(self, size, kernel, pad, stride, dilation, pad_after) -> int:
        raise NotImplementedError

    def blob_shapes(self, layer, in_shapes):
        spec = self.spec(layer, in_shapes[0])
        return [self.weight_shape(spec)] + ([(spec.num_output,)] if spec.bias else [])

    def infer_shapes(self, layer, in_shapes):
        _check_pairs(layer, in_shapes)
        x = tuple(in_shapes[0])
        spec = self.spec(layer, x)
        w = spec.window
        spatial = tuple(self.spatial_size(*geometry) for geometry in
                        zip(x[w.axis + 1:], w.kernel, w.pad, w.stride, w.dilation, w.after))
        if any(s <= 0 for s in spatial):
            raise ShapeError(f"input {list(x)} gives an empty output {list(spatial)}",
                             layer=layer.name)
        return [x[:w.axis] + (spec.num_output,) + spatial] * len(layer.tops)

    def to_onnx(self, layer, g):
        spec = self.spec(layer, g.shape(layer.bottoms[0]))
        _emitted_spatial_axes(layer, spec.window)
        inputs = [g.const(layer.blobs[0], layer.name + "/weight")]
        if spec.bias:
            inputs.append(g.const(layer.blobs[1], layer.name + "/bias"))
        for bottom, top in zip(layer.bottoms, layer.tops):
            onnx_on_channel_axis(g, layer, spec.window.axis, bottom, top, lambda x, y: g.node(
                self.onnx_op, [x, *inputs], [y], group=spec.group, **spec.window.onnx_attrs()))

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        spec = self.spec(layer, ctx.shape(layer.bottoms[0]))
        w = spec.window
        fn = getattr(F, self.torch_fns[_emitted_spatial_axes(layer, w) - 1])
        weight = ctx.parameter("weight", layer.blobs[0])
        bias = ctx.parameter("bias", layer.blobs[1]) if spec.bias else None
        for bottom, top in zip(layer.bottoms, layer.tops):
            if w.pad_after is not None:  # PyTorch pads both sides alike: pad explicitly
                padded = ctx.op(F.pad, ctx.value(bottom),
                                (w.pad[1], w.pad_after[1], w.pad[0], w.pad_after[0]))
                ctx.emit(top, fn, padded, weight, bias, stride=w.stride, dilation=w.dilation,
                         groups=spec.group)
                continue
            torch_on_channel_axis(ctx, w.axis, bottom, top, fn, weight, bias, stride=w.stride,
                                  padding=w.pad, dilation=w.dilation, groups=spec.group)


@register("Convolution")
class Convolution(_Convolution):
    onnx_op = "Conv"
    torch_fns = ("conv1d", "conv2d", "conv3d")
    pads_asymmetrically = True

    def weight_shape(self, spec):
        return (spec.num_output, spec.window.channels // spec.group) + spec.window.kernel

    def spatial_size(self, size, kernel, pad, stride, dilation, pad_after):
        return conv_output_size(size, kernel, pad, stride, dilation, pad_after)


@register("Deconvolution")
class Deconvolution(_Convolution):
    """Transposed convolution; Caffe's weight is (C_in, num_output/group, kernel...), as
    ONNX ConvTranspose and PyTorch's conv_transpose take it. Explicit pads and no
    output_padding give exactly Caffe's output size (semantics.deconv_output_size)."""

    onnx_op = "ConvTranspose"
    torch_fns = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")

    def weight_shape(self, spec):
        return (spec.window.channels, spec.num_output // spec.group) + spec.window.kernel

    def spatial_size(self, size, kernel, pad, stride, dilation, pad_after):
        return deconv_output_size(size, kernel, pad, stride, dilation)


@register("Im2col")
class Im2col(_Windowed):
    """Caffe's im2col as a layer: channel c·K + j of the output (K kernel offsets, j in
    row-major order) is input channel c read at kernel offset j, zero in the padding. Both
    emitters run it as a grouped convolution with a constant one-hot weight, which is exact
    for finite inputs: every output is one input value times 1 plus zeros (an infinity
    elsewhere in the window would make a 0·inf NaN where Caffe copies the value)."""

    def infer_shapes(self, layer, in_shapes):
        x = tuple(in_shapes[0])
        w = window(layer, x).symmetric(layer)
        spatial = tuple(conv_output_size(*geometry) for geometry in
                        zip(x[w.axis + 1:], w.kernel, w.pad, w.stride, w.dilation))
        if any(s <= 0 for s in spatial):
            raise ShapeError(f"input {list(x)} is smaller than the kernel", layer=layer.name)
        return [x[:w.axis] + (w.channels * math.prod(w.kernel),) + spatial]

    def to_onnx(self, layer, g):
        w = window(layer, g.shape(layer.bottoms[0]))
        _emitted_spatial_axes(layer, w)
        weight = g.const(im2col_one_hot(w.channels, w.kernel), layer.name + "/one_hot")
        onnx_on_channel_axis(g, layer, w.axis, layer.bottoms[0], layer.tops[0],
                             lambda x, y: g.node("Conv", [x, weight], [y], group=w.channels,
                                                 **w.onnx_attrs()))

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        w = window(layer, ctx.shape(layer.bottoms[0]))
        fn = getattr(F, ("conv1d", "conv2d", "conv3d")[_emitted_spatial_axes(layer, w) - 1])
        weight = ctx.buffer("one_hot", im2col_one_hot(w.channels, w.kernel))
        torch_on_channel_axis(ctx, w.axis, layer.bottoms[0], layer.tops[0], fn, weight,
                              stride=w.stride, padding=w.pad, dilation=w.dilation,
                              groups=w.channels)
