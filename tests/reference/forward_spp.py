"""SPP (spatial pyramid pooling) for the float64 reference, written from BVLC's spp_layer.cpp.

Level l splits each spatial axis into 2**l bins: the kernel is the axis length divided by the
bins and rounded up, the padding half the cells missing to cover kernel*bins (rounded up),
the stride the kernel. Each level is an ordinary Caffe Pooling (ceil rounding, clipping
rule), flattened to N x (C*h*w); the levels are concatenated along axis 1. A pyramid of
height 1 is its single pooling, left 4-D.
"""

from __future__ import annotations

import numpy as np

from .caffe_forward import _name, _param, _pool2d, register_layer
from .prototxt_text import get


def _level_window(size: int, level: int) -> tuple[int, int]:
    bins = 2 ** level
    kernel = int(np.ceil(size / bins))
    return kernel, (kernel * bins - size + 1) // 2


def _spp(layer, bottoms, params):
    p = _param(layer, "spp_param")
    x = bottoms[0]
    height = int(get(p, "pyramid_height", 0))
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}.get(get(p, "pool"), get(p, "pool", "MAX"))
    if x.ndim != 4 or height < 1:
        raise ValueError(f"{_name(layer)}: SPP needs a 4-D blob and pyramid_height >= 1")
    levels = []
    for level in range(height):
        (kh, ph), (kw, pw) = (_level_window(size, level) for size in x.shape[2:])
        if ph >= kh or pw >= kw:
            raise ValueError(f"{_name(layer)}: level {level} pad >= kernel (Caffe refuses)")
        with np.errstate(divide="ignore", invalid="ignore"):
            levels.append(_pool2d(x, method, (kh, kw), (kh, kw), (ph, pw), "CEIL"))
    if height == 1:
        return levels
    return [np.concatenate([y.reshape(y.shape[0], -1) for y in levels], axis=1)]


register_layer("SPP", _spp)
