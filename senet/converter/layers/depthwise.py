"""The forks' depthwise convolution layers, ConvolutionDepthwise and DepthwiseConvolution.

Without `group` (yonghenglh6's conv_dw_layer.cpp, which ShuffleNet and the MobileNet ports
use): one k×k filter per input channel whatever num_output says (the weight is C×1×kh×kw,
the output has C channels), i.e. BVLC's Convolution with group = num_output = channels. With
`group` given (Synopsys' conv_depthwise_layer.cpp, a BaseConvolutionLayer): BVLC's
Convolution as written, so num_output may be a multiple of the channels."""

from __future__ import annotations

import dataclasses

from senet.converter.layers import register
from senet.converter.layers.conv import Convolution, window


def as_grouped(layer, in_shape):
    """The layer as the equivalent BVLC Convolution on a blob of `in_shape`."""
    if layer.param.convolution_param.HasField("group"):
        return layer
    param = type(layer.param)()
    param.CopyFrom(layer.param)
    channels = window(layer, in_shape).channels
    param.convolution_param.group = channels
    param.convolution_param.num_output = channels
    return dataclasses.replace(layer, param=param)


@register("ConvolutionDepthwise", "DepthwiseConvolution",
          origin="depthwise forks (yonghenglh6/DepthwiseConvolution, ShuffleNet ports)")
class ConvolutionDepthwise(Convolution):
    def blob_shapes(self, layer, in_shapes):
        return super().blob_shapes(as_grouped(layer, in_shapes[0]), in_shapes)

    def infer_shapes(self, layer, in_shapes):
        return super().infer_shapes(as_grouped(layer, in_shapes[0]), in_shapes)

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return super().keeps_batch(as_grouped(layer, in_shapes[0]), in_shapes, out_shapes,
                                   batch)

    def to_onnx(self, layer, g):
        super().to_onnx(as_grouped(layer, g.shape(layer.bottoms[0])), g)

    def to_torch(self, layer, ctx):
        super().to_torch(as_grouped(layer, ctx.shape(layer.bottoms[0])), ctx)
