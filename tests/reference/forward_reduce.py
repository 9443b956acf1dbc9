"""Reference forward of Caffe's reducing layers: ArgMax, MVN, Reduction (BVLC CPU semantics,
float arithmetic in the run's dtype). Imports nothing from senet."""

from __future__ import annotations

import numpy as np

from .caffe_forward import _axis, _param, register_layer
from .prototxt_text import get

_REDUCTIONS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


def _caffe_order(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k first (value, position) pairs in descending pair order, as
    std::partial_sort with std::greater<pair> leaves them: equal values, larger position first."""
    positions = np.arange(values.size)
    return np.lexsort((-positions, -values))[:k]


def _argmax(layer, bottoms, params):
    x = bottoms[0]
    p = _param(layer, "argmax_param")
    k, out_max_val = int(get(p, "top_k", 1)), bool(get(p, "out_max_val", False))
    if "axis" not in p:
        rows = x.reshape(x.shape[0], -1)
        if k > rows.shape[1]:
            raise ValueError("top_k exceeds the values of a sample")
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[1], shape[2] = x.shape[0], 2 if out_max_val else 1, k
        top = np.empty((x.shape[0], 2 if out_max_val else 1, k), x.dtype)
        for n, row in enumerate(rows):
            order = _caffe_order(row, k)
            top[n, 0] = order
            if out_max_val:
                top[n, 1] = row[order]
        return [top.reshape(shape)]
    axis = _axis(int(get(p, "axis")), x.ndim)
    if k > x.shape[axis]:
        raise ValueError("top_k exceeds the axis")
    moved = np.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    top = np.empty((rows.shape[0], k), x.dtype)
    for i, row in enumerate(rows):
        order = _caffe_order(row, k)
        top[i] = row[order] if out_max_val else order
    return [np.moveaxis(top.reshape(moved.shape[:-1] + (k,)), -1, axis)]


def _mvn(layer, bottoms, params):
    x = bottoms[0]
    if x.ndim > 4:
        raise ValueError("MVN uses Caffe's legacy 4-D accessors: at most 4 axes")
    p = _param(layer, "mvn_param")
    shape4 = x.shape + (1,) * (4 - x.ndim)
    per = x.shape[0] if get(p, "across_channels", False) else shape4[0] * shape4[1]
    rows = x.reshape(per, -1)
    centred = rows - rows.mean(axis=1, keepdims=True)
    if get(p, "normalize_variance", True):
        # BVLC mvn_layer.cpp: sqrt of the (biased) variance, then eps added to it.
        std = np.sqrt((centred * centred).mean(axis=1, keepdims=True))
        centred = centred / (std + x.dtype.type(get(p, "eps", 1e-9)))
    return [centred.reshape(shape4)]


def _reduction(layer, bottoms, params):
    x = bottoms[0]
    p = _param(layer, "reduction_param")
    op = get(p, "operation", "SUM")
    op = _REDUCTIONS.get(op, op)
    axis = _axis(int(get(p, "axis", 0)), x.ndim)
    rows = x.reshape(x.shape[:axis] + (-1,))
    terms = {"SUM": rows, "MEAN": rows, "ASUM": np.abs(rows), "SUMSQ": rows * rows}[op]
    coeff = x.dtype.type(get(p, "coeff", 1.0))
    if op == "MEAN":
        coeff = coeff / rows.shape[-1]
    return [np.asarray(terms.sum(axis=-1) * coeff, dtype=x.dtype)]


register_layer("ArgMax", _argmax)
register_layer("MVN", _mvn)
register_layer("Reduction", _reduction)
