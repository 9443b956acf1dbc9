"""Reference forward of Caffe's row-picking and constant layers: Tile, Embed, BatchReindex,
Filter, Parameter, Silence (BVLC CPU semantics). Imports nothing from senet."""

from __future__ import annotations

import numpy as np

from .caffe_forward import _axis, _param, register_layer
from .prototxt_text import get


def _rows(indices: np.ndarray, count: int, what: str) -> np.ndarray:
    """Float indices as static_cast<int> reads them (toward zero), each checked to be a row."""
    rows = np.trunc(indices).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= count):
        raise ValueError(f"{what}: index out of range [0, {count})")
    return rows


def _tile(layer, bottoms, params):
    x = bottoms[0]
    p = _param(layer, "tile_param")
    if "tiles" not in p:
        raise ValueError("Tile needs tiles")
    axis = _axis(int(get(p, "axis", 1)), x.ndim)
    reps = [1] * x.ndim
    reps[axis] = int(get(p, "tiles"))
    return [np.tile(x, reps)]


def _embed_shapes(layer, bottoms):
    p = _param(layer, "embed_param")
    weight = (int(get(p, "input_dim")), int(get(p, "num_output")))
    return [weight, (weight[1],)] if get(p, "bias_term", True) else [weight]


def _embed(layer, bottoms, params):
    table = params[0]
    out = table[_rows(bottoms[0], table.shape[0], "Embed")]
    return [out + params[1] if len(params) > 1 else out]


def _batch_reindex(layer, bottoms, params):
    x, indices = bottoms
    if indices.ndim != 1:
        raise ValueError("BatchReindex needs a 1-D index blob")
    return [x[_rows(indices, x.shape[0], "BatchReindex")]]


def _filter(layer, bottoms, params):
    *data, selector = bottoms
    if any(d != 1 for d in selector.shape[1:]):
        raise ValueError("Filter's selector must be (N, 1, ..., 1)")
    keep = selector.reshape(-1) != 0  # as C++ tests a float: NaN selects
    return [blob[keep] for blob in data]


def _parameter_shapes(layer, bottoms):
    shape = _param(_param(layer, "parameter_param"), "shape")
    return [tuple(int(d) for d in shape.get("dim", []))]


register_layer("Tile", _tile)
register_layer("Embed", _embed, _embed_shapes)
register_layer("BatchReindex", _batch_reindex)
register_layer("Filter", _filter)
register_layer("Parameter", lambda layer, bottoms, params: [params[0].copy()], _parameter_shapes)
register_layer("Silence", lambda layer, bottoms, params: [])
