"""LSTM, RNN and LSTMUnit, as BVLC Caffe computes them.

Caffe's LSTM and RNN unroll a net over the T timesteps of their input (fixed by the net's
shape), so both emitters do the same: one input transform for all timesteps, then T explicit
steps of MatMul/Add/Sigmoid/Tanh. An ONNX LSTM node cannot express Caffe's `cont` input, which
resets a stream's state at any timestep, and orders its gates differently.

The recurrences are written once, over `_OnnxOps` / `_TorchOps`: two small op vocabularies with
the same methods, one building ONNX nodes and one torch.fx nodes.

Without expose_hidden Caffe starts from the state its previous forward call left; senet gives
the state of a fresh net, zeros, as the first call of a loaded net does.
"""

from __future__ import annotations

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.semantics import (LSTM_GATES, RecurrentDims, lstm_unit_hidden,
                                       recurrent_blob_shapes, recurrent_dims)
from senet.errors import ShapeError


class _OnnxOps:
    """The op vocabulary as ONNX nodes; values are tensor names."""

    def __init__(self, layer, g):
        self.g, self.name = g, layer.name

    def _node(self, op, inputs, out, **attrs) -> str:
        name = out or self.g.tmp(f"{self.name}/{op.lower()}")
        self.g.node(op, inputs, [name], **attrs)
        return name

    def value(self, blob):
        return blob

    def alias(self, top, value):
        self.g.node("Identity", [value], [top])

    def matrix(self, key, weight):
        """A (rows, K) weight to multiply (..., K) values by, as Caffe's InnerProduct does."""
        return self.g.const(np.ascontiguousarray(weight.T), f"{self.name}/{key}_t")

    def vector(self, key, bias):
        return self.g.const(bias, f"{self.name}/{key}")

    def linear(self, x, weight, bias=None, out=None):
        if bias is None:
            return self._node("MatMul", [x, weight], out)
        return self._node("Add", [self._node("MatMul", [x, weight], None), bias], out)

    def add(self, a, b, out=None):
        return self._node("Add", [a, b], out)

    def mul(self, a, b, out=None):
        return self._node("Mul", [a, b], out)

    def sigmoid(self, x):
        return self._node("Sigmoid", [x], None)

    def tanh(self, x, out=None):
        return self._node("Tanh", [x], out)

    def reshape(self, x, shape):
        return self._node("Reshape", [x, self.g.ints(list(shape), f"{self.name}/shape")], None)

    def unsqueeze(self, x, axis):
        return self._node("Unsqueeze", [x, self.g.ints([axis], f"{self.name}/axes")], None)

    def step(self, x, t):
        """Timestep t of a (T, ...) value, keeping the axis: (1, ...)."""
        return self._node("Gather", [x, self.g.ints([t], f"{self.name}/t{t}")], None, axis=0)

    def split_last(self, x, size, count):
        outs = [self.g.tmp(f"{self.name}/gate") for _ in range(count)]
        self.g.node("Split", [x, self.g.ints([size] * count, f"{self.name}/gate_sizes")], outs,
                    axis=-1)
        return outs

    def concat(self, values, out=None):
        return self._node("Concat", values, out, axis=0)

    def zero_where_zero(self, cont, x):
        """x, but 0 wherever cont is 0 (whatever x is there)."""
        zero = self.g.const(np.float32(0), f"{self.name}/zero")
        is_zero = self._node("Equal", [cont, zero], None)
        return self._node("Where", [is_zero, zero, x], None)


class _TorchOps:
    """The op vocabulary as torch.fx nodes; values are nodes."""

    def __init__(self, ctx):
        import torch
        from torch.nn import functional as F
        self.ctx, self.torch, self.F = ctx, torch, F

    def _call(self, out, fn, *args):
        return self.ctx.emit(out, fn, *args) if out else self.ctx.op(fn, *args)

    def value(self, blob):
        return self.ctx.value(blob)

    def alias(self, top, value):
        self.ctx.define(top, value)

    def matrix(self, key, weight):
        return self.ctx.parameter(key, weight)  # F.linear multiplies by its transpose

    def vector(self, key, bias):
        return self.ctx.parameter(key, bias)

    def linear(self, x, weight, bias=None, out=None):
        return self._call(out, self.F.linear, x, weight, bias)

    def add(self, a, b, out=None):
        return self._call(out, self.torch.add, a, b)

    def mul(self, a, b, out=None):
        return self._call(out, self.torch.mul, a, b)

    def sigmoid(self, x):
        return self.ctx.op(self.torch.sigmoid, x)

    def tanh(self, x, out=None):
        return self._call(out, self.torch.tanh, x)

    def reshape(self, x, shape):
        return self.ctx.op(self.torch.reshape, x, tuple(shape))

    def unsqueeze(self, x, axis):
        return self.ctx.op(self.torch.unsqueeze, x, axis)

    def step(self, x, t):
        return self.ctx.op(self.torch.narrow, x, 0, t, 1)

    def split_last(self, x, size, count):
        return [self.ctx.op(self.torch.narrow, x, -1, k * size, size) for k in range(count)]

    def concat(self, values, out=None):
        return self._call(out, self.torch.cat, list(values), 0)

    def zero_where_zero(self, cont, x):
        return self.ctx.op(self.torch.where, self.ctx.op(self.torch.eq, cont, 0.0), 0.0, x)


def lstm_unit(ops, gates, c_prev, cont, hidden: int, outs=(None, None)):
    """Caffe's LSTMUnit: (c, h) from gate pre-activations (.., 4H) in order i, f, o, g, the
    previous cell c_prev (None: zeros) and cont broadcasting against (.., H).

    c = f·c_prev + i·g with f = cont·σ(f') (exactly 0 where cont is 0), h = o·tanh(c)."""
    pre = dict(zip(LSTM_GATES, ops.split_last(gates, hidden, len(LSTM_GATES))))
    ig = ops.mul(ops.sigmoid(pre["i"]), ops.tanh(pre["g"]))
    if c_prev is None:
        c = ig  # f·0 vanishes exactly; only the LSTM's first step without state has no c_prev
    else:
        forget = ops.zero_where_zero(cont, ops.mul(cont, ops.sigmoid(pre["f"])))
        c = ops.add(ops.mul(forget, c_prev), ig, out=outs[0])
    h = ops.mul(ops.sigmoid(pre["o"]), ops.tanh(c), out=outs[1])
    return c, h


class _Recurrent(LayerConverter):
    """What LSTM and RNN share: Caffe's checks, blob layout, top shapes, and the input
    transform of all timesteps at once (W_x·x + b [+ W_x_static·x_static])."""

    min_bottoms = 2
    gates = 1
    states = 1  # recurrent state blobs (h, and c for the LSTM)
    output_layer = False
    blob_names: tuple[str, ...] = ()  # Caffe's parameter names; the static weight third

    def dims(self, layer, in_shapes) -> RecurrentDims:
        p = layer.param.recurrent_param
        return recurrent_dims(in_shapes, p.num_output, p.expose_hidden, self.states, layer.name)

    def blob_shapes(self, layer, in_shapes):
        return recurrent_blob_shapes(self.dims(layer, in_shapes), self.gates, self.output_layer)

    def infer_shapes(self, layer, in_shapes):
        d = self.dims(layer, in_shapes)
        states = self.states if d.exposed else 0
        if len(layer.tops) != 1 + states:
            raise ShapeError(f"gives {1 + states} top(s) with expose_hidden "
                             f"{str(d.exposed).lower()}, got {len(layer.tops)}",
                             layer=layer.name)
        return [(d.steps, d.streams, d.hidden)] + [(1, d.streams, d.hidden)] * states

    def keeps_batch(self, layer, in_shapes, out_shapes, batch) -> bool:
        """Never: axis 0 is time (the streams are axis 1), and the steps are unrolled over T."""
        return False

    def to_onnx(self, layer, g):
        self.emit(layer, _OnnxOps(layer, g), g.shape)

    def to_torch(self, layer, ctx):
        self.emit(layer, _TorchOps(ctx), ctx.shape)

    def weights(self, layer, d: RecurrentDims) -> dict[str, np.ndarray]:
        names = list(self.blob_names)
        if d.static is None:
            del names[2]
        return dict(zip(names, layer.blobs))

    def prelude(self, layer, ops, shape_of):
        """(dims, weights by Caffe name, x transformed for every timestep (T, N, G·H), cont as
        (T, N, 1), the initial states or None): Caffe's unrolled net outside the loop.

        Every bottom is reshaped to the static shape the unrolled steps assume, so that other
        shapes fail at run (or export) time instead of giving a silent other result: Caffe
        itself refuses a changed T ("input number of timesteps changed")."""
        d = self.dims(layer, [shape_of(b) for b in layer.bottoms])
        w = self.weights(layer, d)
        names = self.blob_names
        bottom = ops.value
        x = ops.reshape(bottom(layer.bottoms[0]), (d.steps, d.streams, d.inputs))
        xw = ops.linear(x, ops.matrix(names[0], w[names[0]]), ops.vector(names[1], w[names[1]]))
        if d.static is not None:
            xs = ops.reshape(bottom(layer.bottoms[2]), (d.streams, d.static))
            xw = ops.add(xw, ops.linear(xs, ops.matrix(names[2], w[names[2]])))
        cont = ops.reshape(bottom(layer.bottoms[1]), (d.steps, d.streams, 1))
        state_shape = (1, d.streams, d.hidden)
        states = [ops.reshape(bottom(b), state_shape)
                  for b in layer.bottoms[len(layer.bottoms) - self.states:]] if d.exposed else None
        return d, w, xw, cont, states

    @staticmethod
    def carried(ops, key, weight):
        """(h, cont_t) -> W·(cont_t·h), the term the previous state adds to a step. The
        weight is made on first use: one step from a zero state never multiplies by it."""
        made = []

        def apply(h, cont_t):
            if not made:
                made.append(ops.matrix(key, weight))
            return ops.linear(ops.mul(h, cont_t), made[0])
        return apply


@register("LSTM")
class LSTM(_Recurrent):
    max_bottoms = 5
    max_tops = 3
    gates = len(LSTM_GATES)
    states = 2
    blob_names = ("W_xc", "b_c", "W_xc_static", "W_hc")

    def emit(self, layer, ops, shape_of):
        d, w, xw, cont, states = self.prelude(layer, ops, shape_of)
        carried = self.carried(ops, "W_hc", w["W_hc"])
        h, c = states or (None, None)
        hs = []
        for t in range(d.steps):
            gates, cont_t = ops.step(xw, t), None
            if h is not None:  # W_hc·(cont_t·h_{t-1}) + W_xc·x_t + b_c
                cont_t = ops.step(cont, t)
                gates = ops.add(carried(h, cont_t), gates)
            c, h = lstm_unit(ops, gates, c, cont_t, d.hidden)
            hs.append(h)
        ops.concat(hs, out=layer.tops[0])
        if d.exposed:
            ops.alias(layer.tops[1], h)
            ops.alias(layer.tops[2], c)


@register("RNN")
class RNN(_Recurrent):
    max_bottoms = 4
    max_tops = 2
    output_layer = True
    blob_names = ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")

    def emit(self, layer, ops, shape_of):
        d, w, xw, cont, states = self.prelude(layer, ops, shape_of)
        carried = self.carried(ops, "W_hh", w["W_hh"])
        h = states[0] if states else None
        hs = []
        for t in range(d.steps):
            pre = ops.step(xw, t)
            if h is not None:  # W_hh·(cont_t·h_{t-1}) + W_xh·x_t + b_h
                pre = ops.add(carried(h, ops.step(cont, t)), pre)
            h = ops.tanh(pre)
            hs.append(h)
        # o_t = tanh(W_ho·h_t + b_o), for all timesteps at once
        output = ops.linear(ops.concat(hs), ops.matrix("W_ho", w["W_ho"]),
                            ops.vector("b_o", w["b_o"]))
        ops.tanh(output, out=layer.tops[0])
        if d.exposed:
            ops.alias(layer.tops[1], h)


@register("LSTMUnit")
class LSTMUnit(LayerConverter):
    """One LSTM step: bottoms c_prev (1, N, H), gates (1, N, 4H), cont (1, N); tops c, h."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2

    def infer_shapes(self, layer, in_shapes):
        lstm_unit_hidden(in_shapes, layer.name)
        return [in_shapes[0]] * 2

    def to_onnx(self, layer, g):
        self.emit(layer, _OnnxOps(layer, g), g.shape)

    def to_torch(self, layer, ctx):
        self.emit(layer, _TorchOps(ctx), ctx.shape)

    def emit(self, layer, ops, shape_of):
        hidden = lstm_unit_hidden([shape_of(b) for b in layer.bottoms], layer.name)
        c_prev, gates, cont = (ops.value(b) for b in layer.bottoms)
        lstm_unit(ops, gates, c_prev, ops.unsqueeze(cont, 2), hidden, outs=layer.tops)
