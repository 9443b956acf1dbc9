"""Reference forward of py-faster-rcnn's Python layer rpn.proposal_layer.ProposalLayer (and the
PVANet fork's, which reads 'ratios' too), TEST phase.

Written from rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py, generate_anchors.py,
lib/fast_rcnn/bbox_transform.py (bbox_transform_inv, clip_boxes) and the greedy NMS of
lib/nms (py_cpu_nms.py; the GPU kernel computes the same overlaps in float32). The arithmetic
stays in the blobs' dtype as NumPy keeps it there: float32 in Caffe (float64 in a float64 run).
Anchors are made in float64 by per-anchor loops, as generate_anchors enumerates them, and
cast to the deltas' dtype as bbox_transform_inv does. NMS is a loop over the sorted boxes.

Equal scores: the original sorts with argsort()[::-1] (unstable, so its tie order is not
defined); this reference takes ties in index order (a stable descending sort).

The run-time settings (cfg.TEST) are `CFG_TEST`; change them with `configured(...)`. The
param_str is read with yaml.safe_load, as the original reads it with yaml.load.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import yaml

from .caffe_forward import _name, _param, register_layer
from .prototxt_text import get

CFG_TEST = {"pre_nms_top_n": 6000, "post_nms_top_n": 300, "nms_thresh": 0.7, "min_size": 16}


@contextlib.contextmanager
def configured(**settings):
    """Run the reference with other cfg.TEST values (restored afterwards)."""
    saved = dict(CFG_TEST)
    CFG_TEST.update(settings)
    try:
        yield
    finally:
        CFG_TEST.clear()
        CFG_TEST.update(saved)


def layer_params(layer) -> dict:
    text = get(_param(layer, "python_param"), "param_str", "")
    params = yaml.safe_load(text)
    if not isinstance(params, dict) or "feat_stride" not in params:
        raise ValueError(f"{_name(layer)}: param_str {text!r} has no feat_stride")
    return params


def generate_anchors(ratios, scales, base_size: int = 16) -> np.ndarray:
    """The A×4 reference anchors (float64), one ratio after another, each with every scale."""
    x1, y1, x2, y2 = 0.0, 0.0, base_size - 1.0, base_size - 1.0
    w, h = x2 - x1 + 1, y2 - y1 + 1
    cx, cy = x1 + 0.5 * (w - 1), y1 + 0.5 * (h - 1)
    rows = []
    for ratio in ratios:
        rw = np.round(np.sqrt(w * h / float(ratio)))
        rh = np.round(rw * float(ratio))
        for scale in scales:
            sw, sh = rw * float(scale), rh * float(scale)
            rows.append([cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1),
                         cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)])
    return np.array(rows, np.float64)


def nms(boxes: np.ndarray, thresh, offset: int = 1) -> list[int]:
    """Greedy NMS over boxes already in visiting order; a box is dropped when its overlap
    (sizes with +1 pixels; `offset` 0 is the wrong convention trap tests compare with) with a
    kept one is greater than `thresh`. Each kept box is compared with all later ones at once,
    element by element as the loop of py_cpu_nms does."""
    dt = boxes.dtype.type
    one, zero = dt(offset), dt(0)
    thresh = dt(thresh)
    x1, y1, x2, y2 = (boxes[:, c] for c in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    suppressed = np.zeros(boxes.shape[0], bool)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        later = slice(i + 1, None)
        iw = np.maximum(np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]) + one, zero)
        ih = np.maximum(np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]) + one, zero)
        inter = iw * ih
        suppressed[later] |= inter / (areas[i] + areas[later] - inter) > thresh
    return keep


def _proposal(layer, bottoms, params):
    scores_blob, deltas_blob, im_info_blob = bottoms
    dt = deltas_blob.dtype.type
    p = layer_params(layer)
    anchors = generate_anchors(p.get("ratios", (0.5, 1, 2)), p.get("scales", (8, 16, 32)))
    a = anchors.shape[0]
    if scores_blob.shape[0] != 1:
        raise ValueError(f"{_name(layer)}: only single item batches are supported")
    if scores_blob.shape[1] != 2 * a or deltas_blob.shape[1] != 4 * a:
        raise ValueError(f"{_name(layer)}: {a} anchors, blobs {scores_blob.shape} "
                         f"{deltas_blob.shape}")
    stride = p["feat_stride"]
    im_h, im_w, im_scale = im_info_blob[0, 0], im_info_blob[0, 1], im_info_blob[0, 2]
    height, width = scores_blob.shape[2:]

    # every (y, x, anchor) in that order, as the layer's reshapes order them
    boxes, scores = [], []
    for y in range(height):
        for x in range(width):
            for k in range(a):
                shifted = anchors[k] + np.array([x * stride, y * stride] * 2, np.float64)
                boxes.append(shifted.astype(dt))
                scores.append(scores_blob[0, a + k, y, x])
    one, half = dt(1), dt(0.5)
    proposals = []
    for n, anchor in enumerate(boxes):
        y, rest = divmod(n, width * a)
        x, k = divmod(rest, a)
        dx, dy, dw, dh = (deltas_blob[0, 4 * k + j, y, x] for j in range(4))
        w = anchor[2] - anchor[0] + one
        h = anchor[3] - anchor[1] + one
        cx = anchor[0] + half * w
        cy = anchor[1] + half * h
        pcx, pcy = dx * w + cx, dy * h + cy
        pw, ph = np.exp(dw) * w, np.exp(dh) * h
        box = [pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph]
        limits = [im_w - one, im_h - one] * 2
        proposals.append([max(min(v, lim), dt(0)) for v, lim in zip(box, limits)])
    proposals = np.array(proposals, dt).reshape(-1, 4)
    scores = np.array(scores, dt)

    least = dt(CFG_TEST["min_size"]) * im_scale
    ws = proposals[:, 2] - proposals[:, 0] + one
    hs = proposals[:, 3] - proposals[:, 1] + one
    big = np.where((ws >= least) & (hs >= least))[0]
    proposals, scores = proposals[big], scores[big]

    order = np.argsort(-scores, kind="stable")
    if CFG_TEST["pre_nms_top_n"] > 0:
        order = order[:CFG_TEST["pre_nms_top_n"]]
    proposals, scores = proposals[order], scores[order]
    keep = nms(proposals, CFG_TEST["nms_thresh"])
    if CFG_TEST["post_nms_top_n"] > 0:
        keep = keep[:CFG_TEST["post_nms_top_n"]]
    keep = np.array(keep, np.int64)
    proposals, scores = proposals[keep], scores[keep]
    rois = np.hstack([np.zeros((len(keep), 1), dt), proposals.reshape(-1, 4)])
    return [rois, scores.reshape(-1, 1)][:len(layer["top"])]


register_layer("Python rpn.proposal_layer.ProposalLayer", _proposal)
