"""The ``senet::nms`` custom operator: greedy non-maximum suppression as the Caffe detectors run it.

One rule, shared by SSD's ApplyNMSFast (bbox_util.cpp) and py-faster-rcnn's nms (its GPU kernel
and py_cpu_nms): candidates are visited by descending score, equal scores in index order (a
stable sort, as SSD's std::stable_sort); a candidate is kept unless its overlap with a box kept
before it is greater than the threshold (strictly: an overlap equal to the threshold keeps it).

Overlap is intersection over union with Caffe's pixel convention `offset`: 0 for SSD's normalised
boxes (size = w·h), 1 for py-faster-rcnn's pixel boxes (size = (w + 1)·(h + 1), intersection
width max(0, x2 − x1 + 1)). A box with x2 < x1 or y2 < y1 has size 0 (SSD's BBoxSize). All of it
in the boxes' dtype, in the order the C++ computes it.

The output's length depends on the values, so the fake implementation returns a dynamically
sized tensor (torch.export traces it with an unbacked size).
"""

from __future__ import annotations

import torch
from torch import Tensor

from senet.errors import ShapeError


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"senet::nms: boxes must be N×4 (x1, y1, x2, y2), got "
                         f"{tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ShapeError(f"senet::nms: scores must have shape ({boxes.shape[0]},), got "
                         f"{tuple(scores.shape)}")


def overlap(box: Tensor, others: Tensor, offset: float) -> Tensor:
    """Caffe's intersection over union of one box (4,) with each row of `others` (M×4)."""
    def size(b):
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        inverted = (w < 0) | (h < 0)
        return torch.where(inverted, torch.zeros_like(w), (w + offset) * (h + offset))

    iw = (torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0]) + offset)
    ih = (torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1]) + offset)
    disjoint = (iw <= 0) | (ih <= 0)
    inter = torch.where(disjoint, torch.zeros_like(iw), iw * ih)
    union = size(box) + size(others) - inter
    return torch.where(disjoint, torch.zeros_like(iw), inter / union)


def nms_eager(boxes: Tensor, scores: Tensor, threshold: float, offset: float) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 < order.numel():
            suppressed[i + 1:] |= overlap(ordered[i], ordered[i + 1:], offset) > threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


@torch.library.custom_op("senet::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, threshold: float, offset: float = 0.0) -> Tensor:
    """Indices (int64) of the boxes greedy NMS keeps, in the order it keeps them (descending
    score, ties by index). boxes: N×4 (x1, y1, x2, y2); scores: N; see the module docstring."""
    _check(boxes, scores)
    return nms_eager(boxes, scores, threshold, offset)


@nms.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, threshold: float, offset: float = 0.0) -> Tensor:
    _check(boxes, scores)
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)
