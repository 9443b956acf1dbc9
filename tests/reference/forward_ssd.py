"""Reference forward of SSD's Normalize and PriorBox (weiliu89/caffe, branch ssd:
normalize_layer.cpp and prior_box_layer.cpp, Forward_cpu).

Normalize runs in the requested dtype. PriorBox depends on shapes only; the fork computes it
with C++ floats and doubles, and truncates min_size / max_size to int, so the loops below
keep each C++ variable in its own type (np.float32 for a `float`, a Python float for a
`double`) and give the float32 values in the requested dtype. Loops follow Forward_cpu's
index arithmetic (one box after another), to check a vectorised formulation.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math

import numpy as np

from .caffe_forward import _param, register_layer
from .prototxt_text import get, get_all

F32 = np.float32


# ----------------------------------------------------------------------------- Normalize

def _normalize_shapes(layer, bottoms):
    p = _param(layer, "norm_param")
    return [()] if get(p, "channel_shared", True) else [(bottoms[0].shape[1],)]


def _normalize(layer, bottoms, params):
    x = bottoms[0]
    dt = x.dtype.type
    p = _param(layer, "norm_param")
    eps = dt(F32(get(p, "eps", 1e-10)))
    scale = np.asarray(params[0], x.dtype).reshape(-1)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)  # N × C × (H·W)
    out = np.empty_like(flat)
    for i in range(n):
        if get(p, "across_spatial", True):
            norm = np.sqrt(np.sum(flat[i] * flat[i]) + eps)
            out[i] = flat[i] * (dt(1.0) / norm)
        else:
            for s in range(flat.shape[2]):  # norm starts at eps, the squares are added
                norm = np.sqrt(eps + np.sum(flat[i, :, s] * flat[i, :, s]))
                out[i, :, s] = flat[i, :, s] / norm
        if get(p, "channel_shared", True):
            out[i] *= scale[0]
        else:
            out[i] *= scale[:, None]
    return [out.reshape(x.shape)]


# ----------------------------------------------------------------------------- PriorBox

def _ratios(p) -> list[np.float32]:
    ratios = [F32(1.0)]
    for ar in get_all(p, "aspect_ratio"):
        ar = F32(ar)
        if not any(abs(ar - r) < 1e-6 for r in ratios):
            ratios.append(ar)
            if get(p, "flip", True):
                ratios.append(F32(1.0 / float(ar)))
    return ratios


def _steps_and_image(p, feature, image):
    layer_h, layer_w = feature
    if "img_h" in p or "img_w" in p:
        img_h, img_w = int(get(p, "img_h")), int(get(p, "img_w"))
    elif "img_size" in p:
        img_h = img_w = int(get(p, "img_size"))
    else:
        img_h, img_w = image
    if "step_h" in p or "step_w" in p:
        step_h, step_w = F32(get(p, "step_h")), F32(get(p, "step_w"))
    elif "step" in p:
        step_h = step_w = F32(get(p, "step"))
    else:  # static_cast<float>(img) / layer, a float division
        step_h, step_w = F32(img_h) / F32(layer_h), F32(img_w) / F32(layer_w)
    return img_h, img_w, step_h, step_w


def prior_box_count(p) -> int:
    """Priors per position: |ratios| per min_size, plus one per max_size."""
    return len(_ratios(p)) * len(get_all(p, "min_size")) + len(get_all(p, "max_size"))


def _prior_box(layer, bottoms, params):
    p = _param(layer, "prior_box_param")
    dt = bottoms[0].dtype
    layer_h, layer_w = bottoms[0].shape[2:]
    img_h, img_w, step_h, step_w = _steps_and_image(p, (layer_h, layer_w),
                                                    bottoms[1].shape[2:])
    offset = F32(get(p, "offset", 0.5))
    min_sizes, max_sizes = get_all(p, "min_size"), get_all(p, "max_size")
    ratios = _ratios(p)
    boxes: list[np.float32] = []

    def corners(cx, cy, box_w, box_h):
        # (float - float / 2.) / int: double arithmetic, stored into the float top
        boxes.extend([F32((float(cx) - float(box_w) / 2.0) / img_w),
                      F32((float(cy) - float(box_h) / 2.0) / img_h),
                      F32((float(cx) + float(box_w) / 2.0) / img_w),
                      F32((float(cy) + float(box_h) / 2.0) / img_h)])

    for h in range(layer_h):
        for w in range(layer_w):
            center_x = F32(F32(w) + offset) * step_w
            center_y = F32(F32(h) + offset) * step_h
            for s, size in enumerate(min_sizes):
                min_size = int(F32(size))  # `int min_size_ = min_sizes_[s]`
                corners(center_x, center_y, F32(min_size), F32(min_size))
                if max_sizes:
                    max_size = int(F32(max_sizes[s]))
                    side = F32(math.sqrt(min_size * max_size))
                    corners(center_x, center_y, side, side)
                for ar in ratios:
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    corners(center_x, center_y, F32(min_size * math.sqrt(float(ar))),
                            F32(min_size / math.sqrt(float(ar))))
    top = np.empty((1, 2, len(boxes)), dt)
    values = np.array(boxes, F32)
    if get(p, "clip", False):
        values = np.array([min(max(v, F32(0.0)), F32(1.0)) for v in values], F32)
    top[0, 0] = values
    variances = [F32(v) for v in get_all(p, "variance")] or [F32(0.1)]
    if len(variances) not in (1, 4):
        raise ValueError(f"PriorBox {get(layer, 'name')!r}: 1 or 4 variances (the fork's check)")
    if len(variances) == 1:
        top[0, 1] = variances[0]
    else:
        for k in range(len(boxes)):
            top[0, 1, k] = variances[k % 4]
    return [top]


register_layer("Normalize", _normalize, _normalize_shapes)
register_layer("PriorBox", _prior_box)
