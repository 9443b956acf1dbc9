"""Convolution (grouped, dilated, per-axis kernel/pad/stride)."""

from __future__ import annotations

from dataclasses import dataclass

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import conv_output_size, spatial_param
from senet.errors import ShapeError


@dataclass(frozen=True)
class ConvSpec:
    num_output: int
    group: int
    kernel: tuple[int, ...]
    pad: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    bias: bool


def conv_spec(layer, n_spatial: int) -> ConvSpec:
    p = layer.param.convolution_param
    if p.axis != 1:
        raise ShapeError(f"convolution over axis {p.axis} is not supported (only 1)",
                         layer=layer.name)
    kernel = spatial_param(p, "kernel_size", n_spatial, 0, layer.name)
    pad = spatial_param(p, "pad", n_spatial, 0, layer.name)
    stride = spatial_param(p, "stride", n_spatial, 1, layer.name)
    dilation = spatial_param(p, "dilation", n_spatial, 1, layer.name)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ShapeError("kernel, stride and dilation must be positive", layer=layer.name)
    if p.num_output <= 0 or p.group <= 0 or p.num_output % p.group:
        raise ShapeError(f"num_output {p.num_output} is not a positive multiple of group "
                         f"{p.group}", layer=layer.name)
    return ConvSpec(p.num_output, p.group, kernel, pad, stride, dilation, p.bias_term)


@register("Convolution")
class Convolution(LayerConverter):
    def blob_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        spec = conv_spec(layer, len(x) - 2)
        if x[1] % spec.group:
            raise ShapeError(f"{x[1]} input channels do not split into {spec.group} groups",
                             layer=layer.name)
        shapes = [(spec.num_output, x[1] // spec.group) + spec.kernel]
        if spec.bias:
            shapes.append((spec.num_output,))
        return shapes

    def infer_shapes(self, layer, in_shapes):
        x = in_shapes[0]
        if len(x) < 3:
            raise ShapeError(f"convolution needs N×C×spatial input, got {list(x)}",
                             layer=layer.name)
        spec = conv_spec(layer, len(x) - 2)
        spatial = tuple(conv_output_size(s, k, p, st, d) for s, k, p, st, d in
                        zip(x[2:], spec.kernel, spec.pad, spec.stride, spec.dilation))
        if any(s <= 0 for s in spatial):
            raise ShapeError(f"input {list(x)} is smaller than the kernel", layer=layer.name)
        return [(x[0], spec.num_output) + spatial]

    def to_onnx(self, layer, g):
        spec = conv_spec(layer, len(g.shape(layer.bottoms[0])) - 2)
        inputs = [layer.bottoms[0], g.const(layer.blobs[0], layer.name + "/weight")]
        if spec.bias:
            inputs.append(g.const(layer.blobs[1], layer.name + "/bias"))
        g.node("Conv", inputs, layer.tops, kernel_shape=list(spec.kernel),
               pads=list(spec.pad) * 2, strides=list(spec.stride),
               dilations=list(spec.dilation), group=spec.group)

    def to_torch(self, layer, ctx):
        from torch.nn import functional as F
        n_spatial = len(ctx.shape(layer.bottoms[0])) - 2
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n_spatial)
        if conv is None:
            raise ShapeError(f"{n_spatial}-D convolution has no torch emitter (1-D to 3-D)",
                             layer=layer.name)
        spec = conv_spec(layer, n_spatial)
        weight = ctx.parameter("weight", layer.blobs[0])
        bias = ctx.parameter("bias", layer.blobs[1]) if spec.bias else None
        ctx.emit(layer.tops[0], conv, ctx.value(layer.bottoms[0]), weight, bias,
                 stride=spec.stride, padding=spec.pad, dilation=spec.dilation,
                 groups=spec.group)
