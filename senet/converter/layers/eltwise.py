"""Eltwise: SUM (with per-bottom coefficients), PROD, MAX, and Caffe's in-place quirk."""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.errors import ShapeError


@register("Eltwise")
class Eltwise(LayerConverter):
    min_bottoms = 2
    max_bottoms = None

    def infer_shapes(self, layer, in_shapes):
        first = tuple(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if tuple(s) != first:
                raise ShapeError(f"bottom[{i}] {list(s)} differs from bottom[0] {list(first)}",
                                 layer=layer.name)
        p = layer.param.eltwise_param
        if p.coeff and p.operation != p.SUM:
            raise ShapeError("Eltwise coeff is only allowed with SUM", layer=layer.name)
        if p.coeff and len(p.coeff) != len(in_shapes):
            raise ShapeError(f"{len(p.coeff)} coefficients for {len(in_shapes)} bottoms",
                             layer=layer.name)
        return [first]

    @staticmethod
    def operands(layer) -> tuple[list[str], list[float]]:
        """The bottoms Caffe's forward actually combines, with their SUM coefficients.

        In place (top == bottom[0], the only in-place form Caffe's Net accepts) SUM first
        zeroes the top and MAX fills it with -FLT_MAX before reading bottom[0], so bottom[0]
        is lost and only bottoms[1:] count; PROD multiplies bottom[0] by bottom[1] before it
        writes, so it keeps every bottom."""
        p = layer.param.eltwise_param
        coeffs = [float(c) for c in p.coeff] or [1.0] * len(layer.bottoms)
        in_place = layer.param.top[0] == layer.param.bottom[0]
        if in_place and p.operation in (p.SUM, p.MAX):
            return list(layer.bottoms[1:]), coeffs[1:]
        return list(layer.bottoms), coeffs

    def to_onnx(self, layer, g):
        p = layer.param.eltwise_param
        inputs, coeffs = self.operands(layer)
        if p.operation == p.SUM:
            weighted = []
            for i, (name, c) in enumerate(zip(inputs, coeffs)):
                if c == 1:
                    weighted.append(name)
                    continue
                out = g.tmp(f"{layer.name}/weighted{i}")
                g.node("Mul", [name, g.const(np.array(c, np.float32), f"{layer.name}/coeff{i}")],
                       [out])
                weighted.append(out)
            inputs = weighted
        op = {p.SUM: "Sum", p.PROD: "Mul", p.MAX: "Max"}[p.operation]
        if len(inputs) == 1:
            g.node("Identity", inputs, layer.tops)
            return
        if op == "Mul":
            # Mul is binary in ONNX; chain it left to right as Caffe does.
            acc = inputs[0]
            for i, name in enumerate(inputs[1:], 1):
                out = layer.tops[0] if i == len(inputs) - 1 else g.tmp(f"{layer.name}/prod{i}")
                g.node("Mul", [acc, name], [out])
                acc = out
            return
        g.node(op, inputs, layer.tops)

    def to_torch(self, layer, ctx):
        import torch
        p = layer.param.eltwise_param
        names, coeffs = self.operands(layer)
        values = [ctx.value(b) for b in names]
        if p.operation == p.SUM:
            values = [v if c == 1 else ctx.op(torch.mul, v, ctx.scalar(c))
                      for v, c in zip(values, coeffs)]
        combine = {p.SUM: torch.add, p.PROD: torch.mul, p.MAX: torch.maximum}[p.operation]
        acc = values[0]
        if len(values) == 1:
            ctx.define(layer.tops[0], acc)
            return
        for i, v in enumerate(values[1:], 1):  # left to right, as Caffe accumulates
            if i == len(values) - 1:
                acc = ctx.emit(layer.tops[0], combine, acc, v)
            else:
                acc = ctx.op(combine, acc, v)
