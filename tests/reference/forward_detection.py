"""Reference forward of SSD's DetectionOutput, written from weiliu89/caffe (branch ssd)
detection_output_layer.cpp Forward_cpu and util/bbox_util.cpp: GetLocPredictions,
GetConfidenceScores, GetPriorBBoxes, DecodeBBox, GetMaxScoreIndex, ApplyNMSFast,
JaccardOverlap, IntersectBBox, BBoxSize. Loops over images, classes and priors follow the
C++ index arithmetic; the NMS here is its own.

In float64: on float32 inputs Caffe's float rounding decides survival only where an overlap
or a score lies within float32 rounding of a threshold, which seeded data does not hit and the
tie cases are built to avoid (their values are exact in both precisions).

Nothing here imports ``senet``.
"""

from __future__ import annotations

import numpy as np

from .caffe_forward import FLT_MAX, _param, register_layer
from .prototxt_text import get


def _loc_predictions(loc, num_priors, loc_classes):
    """loc[i] -> {loc class: [P boxes]}: image i's values are prior-major, then loc class."""
    out = []
    for i in range(loc.shape[0]):
        flat = loc[i].reshape(-1)
        per_class = {}
        for p in range(num_priors):
            start = p * loc_classes * 4
            for c in range(loc_classes):
                per_class.setdefault(c, []).append(flat[start + c * 4:start + c * 4 + 4])
        out.append(per_class)
    return out


def _decode(prior, var, box, code_type, encoded):
    """DecodeBBox, one box."""
    px0, py0, px1, py1 = prior
    bx0, by0, bx1, by1 = box
    v = (1.0, 1.0, 1.0, 1.0) if encoded else var
    if code_type == "CORNER":
        return (px0 + v[0] * bx0, py0 + v[1] * by0, px1 + v[2] * bx1, py1 + v[3] * by1)
    pw, ph = px1 - px0, py1 - py0
    if code_type == "CORNER_SIZE":
        return (px0 + v[0] * bx0 * pw, py0 + v[1] * by0 * ph,
                px1 + v[2] * bx1 * pw, py1 + v[3] * by1 * ph)
    if code_type != "CENTER_SIZE":
        raise ValueError(f"unknown code_type {code_type}")
    pcx, pcy = (px0 + px1) / 2, (py0 + py1) / 2
    cx, cy = v[0] * bx0 * pw + pcx, v[1] * by0 * ph + pcy
    w, h = np.exp(v[2] * bx1) * pw, np.exp(v[3] * by1) * ph
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _size(b):
    """BBoxSize, normalised: 0 for an inverted box."""
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def _jaccard(a, b):
    """JaccardOverlap with IntersectBBox's empty intersection for disjoint boxes."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter = (0.0, 0.0, 0.0, 0.0)
    else:
        inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    iw, ih = inter[2] - inter[0], inter[3] - inter[1]
    if iw > 0 and ih > 0:
        isize = iw * ih
        return isize / (_size(a) + _size(b) - isize)
    return 0.0


def _nms_fast(boxes, scores, score_threshold, nms_threshold, top_k):
    """ApplyNMSFast (eta 1): candidates above the threshold by stable descending score, the
    first top_k, each kept unless it overlaps a kept one by more than nms_threshold."""
    pairs = [(scores[i], i) for i in range(len(scores)) if scores[i] > score_threshold]
    pairs.sort(key=lambda pair: -pair[0])  # Python's sort is stable, as std::stable_sort
    if top_k > -1:
        pairs = pairs[:top_k]
    kept = []
    for _, idx in pairs:
        if all(_jaccard(boxes[idx], boxes[k]) <= nms_threshold for k in kept):
            kept.append(idx)
    return kept


def _detection_output(layer, bottoms, params):
    p = _param(layer, "detection_output_param")
    nms = get(p, "nms_param", {}) or {}
    num_classes = int(get(p, "num_classes"))
    share = bool(get(p, "share_location", True))
    background = int(get(p, "background_label_id", 0))
    code_type = get(p, "code_type", "CORNER")
    encoded = bool(get(p, "variance_encoded_in_target", False))
    keep_top_k = int(get(p, "keep_top_k", -1))
    threshold = float(np.float32(get(p, "confidence_threshold", -FLT_MAX)))
    nms_threshold = float(np.float32(get(nms, "nms_threshold", 0.3)))
    top_k = int(get(nms, "top_k", -1))
    loc, conf, prior = bottoms
    dt = loc.dtype.type
    num = loc.shape[0]
    num_priors = prior.shape[2] // 4
    loc_classes = 1 if share else num_classes

    flat_prior = prior.reshape(-1)
    priors = [flat_prior[i * 4:i * 4 + 4] for i in range(num_priors)]
    variances = [flat_prior[(num_priors + i) * 4:(num_priors + i) * 4 + 4]
                 for i in range(num_priors)]
    all_loc = _loc_predictions(loc, num_priors, loc_classes)

    detections = []  # per image: {label: [prior indices]} and its decoded boxes, scores
    for i in range(num):
        decoded = {c: [_decode(priors[q], variances[q], all_loc[i][c][q], code_type, encoded)
                       for q in range(num_priors)] for c in range(loc_classes)}
        flat_conf = conf[i].reshape(-1)
        scores = {c: [flat_conf[q * num_classes + c] for q in range(num_priors)]
                  for c in range(num_classes)}
        indices = {}
        for c in range(num_classes):
            if c == background:
                continue
            boxes = decoded[0 if share else c]
            indices[c] = _nms_fast(boxes, scores[c], threshold, nms_threshold, top_k)
        total = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and total > keep_top_k:
            pairs = [(scores[c][q], c, q) for c in sorted(indices) for q in indices[c]]
            pairs.sort(key=lambda t: -t[0])  # stable: see detection_rules on std::sort
            indices = {}
            for _, c, q in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(q)
        detections.append((indices, decoded, scores))

    rows = []
    for i, (indices, decoded, scores) in enumerate(detections):
        for c in sorted(indices):
            boxes = decoded[0 if share else c]
            for q in indices[c]:
                rows.append([i, c, scores[c][q], *boxes[q]])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
    return [np.array(rows, dtype=dt).reshape(1, 1, len(rows), 7)]


register_layer("DetectionOutput", _detection_output)
