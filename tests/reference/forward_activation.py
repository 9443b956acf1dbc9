"""Reference forward of BVLC Caffe's element-wise layers ELU, AbsVal, BNLL, Exp, Log, Threshold,
Clip and Swish, each written from its Forward_cpu (src/caffe/layers/<name>_layer.cpp), in the
order Caffe computes: its setup constants (Exp's ln(base)·scale, Log's 1/ln(base)) are formed
first and then applied, so a float32 run rounds where Caffe rounds.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import numpy as np

from .caffe_forward import _name, _param, register_layer
from .prototxt_text import get, get_all


def _elu(layer, bottoms, params):
    x = bottoms[0]
    alpha = x.dtype.type(get(_param(layer, "elu_param"), "alpha", 1.0))
    return [np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)]


def _absval(layer, bottoms, params):
    if get_all(layer, "top") == get_all(layer, "bottom"):
        raise ValueError(f"{_name(layer)}: AbsVal does not allow in-place computation")
    return [np.abs(bottoms[0])]


def _bnll(layer, bottoms, params):
    x = bottoms[0]
    # Both branches take exp of a non-positive number, so neither can overflow.
    tail = np.log(1 + np.exp(-np.abs(x)))
    return [np.where(x > 0, x + tail, tail)]


def _log_base(layer, key: str, dt) -> np.floating:
    """ln(base), exactly 1 for base -1 (meaning e); Caffe refuses other non-positive bases."""
    base = dt(get(_param(layer, key), "base", -1.0))
    if base == -1:
        return dt(1)
    if not base > 0:
        raise ValueError(f"{_name(layer)}: base must be strictly positive, got {base}")
    log_base = np.log(base)
    if not np.isfinite(log_base):
        raise ValueError(f"{_name(layer)}: log(base) = {log_base}")
    return log_base


def _exp(layer, bottoms, params):
    x, dt = bottoms[0], bottoms[0].dtype.type
    p = _param(layer, "exp_param")
    base, scale, shift = (dt(get(p, k, d)) for k, d in
                          (("base", -1.0), ("scale", 1.0), ("shift", 0.0)))
    inner = _log_base(layer, "exp_param", dt) * scale
    with np.errstate(over="ignore", invalid="ignore"):
        outer = dt(1) if shift == 0 else (np.exp(shift) if base == -1 else np.power(base, shift))
        y = np.exp(x) if inner == 1 else np.exp(inner * x)
        return [y * outer if outer != 1 else y]


def _log(layer, bottoms, params):
    x, dt = bottoms[0], bottoms[0].dtype.type
    p = _param(layer, "log_param")
    scale, shift = dt(get(p, "scale", 1.0)), dt(get(p, "shift", 0.0))
    with np.errstate(divide="ignore"):
        base_scale = dt(1) / _log_base(layer, "log_param", dt)
    if not np.isfinite(base_scale):
        raise ValueError(f"{_name(layer)}: 1/log(base) = {base_scale}")
    y = x * scale if scale != 1 else x
    y = y + shift if shift != 0 else y
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(y)
    return [y * base_scale if base_scale != 1 else y]


def _threshold(layer, bottoms, params):
    x = bottoms[0]
    t = x.dtype.type(get(_param(layer, "threshold_param"), "threshold", 0.0))
    return [(x > t).astype(x.dtype)]


def _clip(layer, bottoms, params):
    x = bottoms[0]
    p = _param(layer, "clip_param")
    if "min" not in p or "max" not in p:
        raise ValueError(f"{_name(layer)}: clip_param needs both min and max")
    lo, hi = x.dtype.type(get(p, "min")), x.dtype.type(get(p, "max"))
    # std::min(x, max) is (max < x ? max : x); std::max(min, t) is (min < t ? t : min).
    capped = np.where(hi < x, hi, x)
    return [np.where(lo < capped, capped, lo)]


def _swish(layer, bottoms, params):
    x = bottoms[0]
    beta = x.dtype.type(get(_param(layer, "swish_param"), "beta", 1.0))
    # Caffe scales x by beta, then runs its Sigmoid layer (the tanh form).
    return [x * (0.5 * np.tanh(0.5 * (beta * x)) + 0.5)]


for _kind, _fn in (("ELU", _elu), ("AbsVal", _absval), ("BNLL", _bnll), ("Exp", _exp),
                   ("Log", _log), ("Threshold", _threshold), ("Clip", _clip),
                   ("Swish", _swish)):
    register_layer(_kind, _fn)
