"""Axpy, SENet's own layer: top = bottom[0] · bottom[1] + bottom[2].

bottom[0] is the N×C×1×1 excitation, broadcast over H×W of bottom[1]; bottom[2] is the residual.
OpenCV's importer swaps the operands; the order here is the SENet Caffe fork's. After
passes.fuse_axpy_relu the layer also applies the ReLU that followed it (``layer.fused_relu``).
"""

from __future__ import annotations

from senet.converter.layers import LayerConverter, register
from senet.errors import ShapeError


@register("Axpy", origin="SENet (hujie-frank/SENet)")
class Axpy(LayerConverter):
    min_bottoms = max_bottoms = 3

    def infer_shapes(self, layer, in_shapes):
        scale, x, y = in_shapes
        if tuple(x) != tuple(y):
            raise ShapeError(f"Axpy bottom[1] {list(x)} and bottom[2] {list(y)} differ",
                             layer=layer.name)
        if len(scale) != len(x) or scale[:2] != x[:2] or any(d != 1 for d in scale[2:]):
            raise ShapeError(f"Axpy bottom[0] {list(scale)} must be N×C×1×1 for bottom[1] "
                             f"{list(x)}", layer=layer.name)
        return [tuple(x)]

    def to_onnx(self, layer, g):
        scale, x, y = layer.bottoms
        product = g.tmp(layer.name + "/scaled")
        g.node("Mul", [scale, x], [product])
        if not layer.fused_relu:
            g.node("Add", [product, y], layer.tops)
            return
        total = g.tmp(layer.name + "/sum")
        g.node("Add", [product, y], [total])
        g.node("Relu", [total], layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        scale, x, y = (ctx.value(b) for b in layer.bottoms)
        ctx.emit(layer.tops[0], torch.ops.senet.axpy.default, scale, x, y,
                 relu=bool(layer.fused_relu))
