"""Caffe's LSTM, RNN and LSTMUnit in NumPy, for the reference forward (nothing from senet).

Read from BVLC's recurrent_layer.cpp, lstm_layer.cpp, rnn_layer.cpp and lstm_unit_layer.cpp:
the recurrent layers unroll a net over the T timesteps of x (T, N, ...); cont (T, N) scales the
previous state before each step (0 starts a new sequence); an optional static input
x_static (N, ...) adds W_static·x_static to every step's pre-activation; with expose_hidden the
initial states are extra bottoms (1, N, H) and the final ones extra tops. Without it the state
is the one the previous forward call left: zeros for the first call of a fresh net, which is
what this reference gives.
"""

from __future__ import annotations

import numpy as np

from .caffe_forward import _name, _param, register_layer
from .prototxt_text import get

__all__ = ["lstm_unit_step"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf gives the right limit 0
        return 1 / (1 + np.exp(-x))


def _unit_tanh(x: np.ndarray) -> np.ndarray:
    """LSTMUnit's own tanh: 2·sigmoid(2x) − 1."""
    return 2 * _sigmoid(2 * x) - 1


def lstm_unit_step(c_prev: np.ndarray, gates: np.ndarray, cont: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(c, h) of one step for N streams: c_prev (N, H), gates (N, 4H) holding i, f, o, g in
    that order, cont (N,). The forget gate is cont·σ, and exactly 0 where cont is 0."""
    hidden = c_prev.shape[1]
    i, f, o, g = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    keep = cont[:, None]
    forget = np.where(keep == 0, 0, keep * _sigmoid(f)).astype(c_prev.dtype)
    c = forget * c_prev + _sigmoid(i) * _unit_tanh(g)
    return c, _sigmoid(o) * _unit_tanh(c)


def _recurrent_setup(layer, bottoms, states: int):
    """(H, exposed, x as (T, N, I), cont, x_static as (N, S) or None, initial states (N, H)
    each, zeros without expose_hidden), after Caffe's checks."""
    p = _param(layer, "recurrent_param")
    hidden = int(get(p, "num_output", 0))
    exposed = bool(get(p, "expose_hidden", False))
    if hidden <= 0:
        raise ValueError(f"{_name(layer)}: num_output must be positive")
    extra = states if exposed else 0
    if not 2 + extra <= len(bottoms) <= 3 + extra:
        raise ValueError(f"{_name(layer)}: {len(bottoms)} bottoms")
    x, cont = bottoms[0], bottoms[1]
    if x.ndim < 3 or cont.shape != x.shape[:2]:
        raise ValueError(f"{_name(layer)}: x {x.shape} / cont {cont.shape} are not "
                         "(T, N, ...) / (T, N)")
    steps, streams = x.shape[:2]
    static = None
    if len(bottoms) == 3 + extra:
        if bottoms[2].ndim < 2 or bottoms[2].shape[0] != streams:
            raise ValueError(f"{_name(layer)}: x_static {bottoms[2].shape} is not (N, ...)")
        static = bottoms[2].reshape(streams, -1)
    if exposed:
        initial = list(bottoms[len(bottoms) - states:])
        if any(s.shape != (1, streams, hidden) for s in initial):
            raise ValueError(f"{_name(layer)}: initial states must be (1, N, H)")
        initial = [s[0] for s in initial]
    else:
        initial = [np.zeros((streams, hidden), x.dtype) for _ in range(states)]
    return hidden, exposed, x.reshape(steps, streams, -1), cont, static, initial


def _shapes(gates: int, output_layer: bool):
    def shapes(layer, bottoms):
        p = _param(layer, "recurrent_param")
        rows = gates * int(get(p, "num_output", 0))
        out = [(rows, int(np.prod(bottoms[0].shape[2:]))), (rows,)]
        states = 2 if gates == 4 else 1
        extra = states if get(p, "expose_hidden", False) else 0
        if len(bottoms) == 3 + extra:
            out.append((rows, int(np.prod(bottoms[2].shape[1:]))))
        out.append((rows, rows // gates))
        if output_layer:
            out += [(rows, rows), (rows,)]
        return out
    return shapes


def _lstm(layer, bottoms, params):
    hidden, exposed, x, cont, static, (h, c) = _recurrent_setup(layer, bottoms, 2)
    w_xc, b_c, w_hc = params[0], params[1], params[-1]
    x_part = x @ w_xc.T + b_c  # Caffe's "x_transform": every timestep at once
    static_part = static @ params[2].T if static is not None else None
    hs = []
    for t in range(x.shape[0]):
        gates = (cont[t][:, None] * h) @ w_hc.T + x_part[t]
        if static_part is not None:
            gates = gates + static_part
        c, h = lstm_unit_step(c, gates, cont[t])
        hs.append(h)
    tops = [np.stack(hs)]
    return tops + [h[None], c[None]] if exposed else tops


def _rnn(layer, bottoms, params):
    hidden, exposed, x, cont, static, (h,) = _recurrent_setup(layer, bottoms, 1)
    w_xh, b_h, w_hh, w_ho, b_o = params[0], params[1], params[-3], params[-2], params[-1]
    x_part = x @ w_xh.T + b_h
    static_part = static @ params[2].T if static is not None else None
    outs = []
    for t in range(x.shape[0]):
        pre = (cont[t][:, None] * h) @ w_hh.T + x_part[t]
        if static_part is not None:
            pre = pre + static_part
        h = np.tanh(pre)
        outs.append(np.tanh(h @ w_ho.T + b_o))  # the net's output is o, not h
    tops = [np.stack(outs)]
    return tops + [h[None]] if exposed else tops


def _lstm_unit(layer, bottoms, params):
    c_prev, gates, cont = bottoms
    if (c_prev.ndim != 3 or gates.ndim != 3 or cont.ndim != 2 or c_prev.shape[0] != 1
            or gates.shape[:2] != c_prev.shape[:2] or cont.shape != c_prev.shape[:2]
            or gates.shape[2] != 4 * c_prev.shape[2]):
        raise ValueError(f"{_name(layer)}: bottoms {c_prev.shape}, {gates.shape}, "
                         f"{cont.shape} are not (1, N, H), (1, N, 4H), (1, N)")
    c, h = lstm_unit_step(c_prev[0], gates[0], cont[0])
    return [c[None], h[None]]


register_layer("LSTM", _lstm, _shapes(4, False))
register_layer("RNN", _rnn, _shapes(1, True))
register_layer("LSTMUnit", _lstm_unit)
