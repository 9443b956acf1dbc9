"""Layers of the forks that only move values between channels and positions: ShuffleNet's
ShuffleChannel and the YOLOv2 forks' Reorg."""

from __future__ import annotations

import math

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (
    reorg_output_shape, reorg_view, shuffle_channel_groups,
)
from senet.errors import ShapeError


def _shuffle_group(layer, in_shape) -> tuple[int, int]:
    if len(in_shape) < 2:
        raise ShapeError(f"ShuffleChannel needs an N×C… input, got {list(in_shape)}",
                         layer=layer.name)
    group = layer.param.shuffle_channel_param.group
    return group, shuffle_channel_groups(in_shape[1], group, layer.name)


@register("ShuffleChannel", origin="ShuffleNet (farmingyard/ShuffleNet)")
class ShuffleChannel(LayerConverter):
    """Channels seen as group × C/group, transposed: output channel j·group + i is input
    channel i·(C/group) + j (any number of axes after the channel axis)."""

    def infer_shapes(self, layer, in_shapes):
        _shuffle_group(layer, in_shapes[0])
        return [in_shapes[0]]

    def to_onnx(self, layer, g):
        x, name = layer.bottoms[0], layer.name
        shape = g.shape(x)
        group, per_group = _shuffle_group(layer, shape)
        grouped, swapped = g.tmp(name + "/grouped"), g.tmp(name + "/swapped")
        g.node("Reshape", [x, g.ints([0, group, per_group, -1], name + "/groups")], [grouped])
        g.node("Transpose", [grouped], [swapped], perm=[0, 2, 1, 3])
        g.node("Reshape", [swapped, g.ints([0, *shape[1:]], name + "/shape")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        shape = ctx.shape(layer.bottoms[0])
        group, per_group = _shuffle_group(layer, shape)
        x = ctx.value(layer.bottoms[0])
        grouped = ctx.op(torch.reshape, x, (-1, group, per_group, math.prod(shape[2:])))
        swapped = ctx.op(torch.transpose, grouped, 1, 2)
        ctx.emit(layer.tops[0], torch.reshape, swapped, (-1, *shape[1:]))


def _reorg(layer) -> tuple[int, bool]:
    p = layer.param.reorg_param
    if not p.HasField("stride"):
        raise ShapeError("Reorg needs reorg_param { stride } (the fork's check)",
                         layer=layer.name)
    return p.stride, p.reverse


@register("Reorg", origin="YOLOv2 forks (Intel Caffe, darknet's reorg_cpu)")
class Reorg(LayerConverter):
    """darknet's reorg as the YOLOv2 Caffe forks run it (semantics.reorg_view): a reshape, a
    transpose and a reshape; not ONNX's SpaceToDepth channel order. Not in place (the fork
    refuses it)."""

    def infer_shapes(self, layer, in_shapes):
        if layer.param.top[0] == layer.param.bottom[0]:
            raise ShapeError("Reorg cannot run in place (the fork refuses top == bottom)",
                             layer=layer.name)
        stride, reverse = _reorg(layer)
        return [reorg_output_shape(tuple(in_shapes[0]), stride, reverse, layer.name)]

    def to_onnx(self, layer, g):
        name = layer.name
        view, perm, out = reorg_view(g.shape(layer.bottoms[0]), *_reorg(layer), layer.name)
        viewed, moved = g.tmp(name + "/view"), g.tmp(name + "/moved")
        g.node("Reshape", [layer.bottoms[0], g.ints([-1, *view[1:]], name + "/view")], [viewed])
        g.node("Transpose", [viewed], [moved], perm=list(perm))
        g.node("Reshape", [moved, g.ints([-1, *out[1:]], name + "/out")], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        view, perm, out = reorg_view(ctx.shape(layer.bottoms[0]), *_reorg(layer), layer.name)
        viewed = ctx.op(torch.reshape, ctx.value(layer.bottoms[0]), (-1, *view[1:]))
        moved = ctx.op(torch.permute, viewed, perm)
        ctx.emit(layer.tops[0], torch.reshape, moved, (-1, *out[1:]))
