"""The ``senet::detection_output`` custom operator: SSD's DetectionOutput layer as Caffe's forward
computes it (the rules: senet.converter.detection_rules), eager in torch with ``senet::nms`` per
class, and a fake implementation whose number of rows is dynamic (torch.export traces it with
an unbacked size).
"""

from __future__ import annotations

import torch
from torch import Tensor

from senet.converter.detection_rules import ROW, DetectionSettings, decode_boxes
from senet.errors import ShapeError
from senet.kernels import nms as _nms  # noqa: F401  (registers senet::nms)


def _settings(num_classes, share_location, background_label_id, code_type,
              variance_encoded_in_target, keep_top_k, confidence_threshold, nms_threshold,
              nms_top_k) -> DetectionSettings:
    return DetectionSettings(num_classes, share_location, background_label_id, code_type,
                             variance_encoded_in_target, keep_top_k, confidence_threshold,
                             nms_threshold, nms_top_k)


def _check(loc: Tensor, conf: Tensor, prior: Tensor, s: DetectionSettings) -> int:
    if prior.dim() < 3 or prior.shape[1] != 2 or prior.shape[2] % 4:
        raise ShapeError(f"senet::detection_output: prior must be 1×2×(4·priors), got "
                         f"{tuple(prior.shape)}")
    num_priors = prior.shape[2] // 4
    if loc[0].numel() != num_priors * s.loc_classes * 4 or \
            conf[0].numel() != num_priors * s.num_classes or loc.shape[0] != conf.shape[0]:
        raise ShapeError(f"senet::detection_output: loc {tuple(loc.shape)} and conf "
                         f"{tuple(conf.shape)} do not fit {num_priors} priors")
    return num_priors


def decoded_boxes(loc: Tensor, prior: Tensor, s: DetectionSettings, num_priors: int) -> Tensor:
    """Every location prediction decoded: N × P × loc_classes × 4."""
    priors = prior[0].reshape(2, num_priors, 1, 4)
    box, variance = priors[0].unbind(-1), priors[1].unbind(-1)  # each P×1
    offsets = loc.reshape(loc.shape[0], num_priors, s.loc_classes, 4).unbind(-1)
    return torch.stack(decode_boxes(box, variance, offsets, s.code_type,
                                    s.variance_encoded_in_target, torch.exp), -1)


def _class_detections(boxes: Tensor, scores: Tensor, s: DetectionSettings) -> Tensor:
    """Indices of one class's detections in NMS order: scores > threshold, the nms top_k best
    (stable: equal scores in prior order), greedy NMS."""
    candidates = torch.nonzero(scores > s.confidence_threshold).flatten()
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    if s.nms_top_k >= 0:
        order = order[:s.nms_top_k]
    candidates = candidates[order]
    kept = torch.ops.senet.nms(boxes[candidates], scores[candidates], s.nms_threshold, 0.0)
    return candidates[kept]


def _image_rows(image: int, boxes: Tensor, scores: Tensor, s: DetectionSettings) -> Tensor:
    """One image's rows, labels ascending, each label's in NMS order, cut to keep_top_k."""
    rows = []
    for label, loc_label in zip(s.labels, s.loc_labels):
        kept = _class_detections(boxes[:, loc_label], scores[:, label], s)
        row = torch.empty((kept.numel(), ROW), dtype=boxes.dtype, device=boxes.device)
        row[:, 0], row[:, 1], row[:, 2] = image, label, scores[kept, label]
        row[:, 3:] = boxes[kept, loc_label]
        rows.append(row)
    rows = torch.cat(rows) if rows else boxes.new_empty((0, ROW))
    if 0 <= s.keep_top_k < rows.shape[0]:
        # the best keep_top_k scores (equal scores in row order), left in row order
        best = torch.sort(rows[:, 2], descending=True, stable=True).indices[:s.keep_top_k]
        rows = rows[torch.sort(best).values]
    return rows


@torch.library.custom_op("senet::detection_output", mutates_args=())
def detection_output(loc: Tensor, conf: Tensor, prior: Tensor, num_classes: int,
                     share_location: bool, background_label_id: int, code_type: str,
                     variance_encoded_in_target: bool, keep_top_k: int,
                     confidence_threshold: float, nms_threshold: float,
                     nms_top_k: int) -> Tensor:
    """SSD's detections, 1 × 1 × K × 7 (image, label, score, xmin, ymin, xmax, ymax), from loc
    (N × P·loc_classes·4), conf (N × P·num_classes, after softmax) and the prior blob
    (1 × 2 × P·4, only its first image read): see senet.converter.detection_rules."""
    s = _settings(num_classes, share_location, background_label_id, code_type,
                  variance_encoded_in_target, keep_top_k, confidence_threshold, nms_threshold,
                  nms_top_k)
    num_priors = _check(loc, conf, prior, s)
    boxes = decoded_boxes(loc, prior, s, num_priors)
    scores = conf.reshape(conf.shape[0], num_priors, num_classes)
    rows = torch.cat([_image_rows(i, boxes[i], scores[i], s) for i in range(loc.shape[0])])
    if rows.shape[0] == 0:  # no detection in the whole batch: (i, -1, ..., -1) per image
        rows = torch.full((loc.shape[0], ROW), -1.0, dtype=loc.dtype, device=loc.device)
        rows[:, 0] = torch.arange(loc.shape[0], dtype=loc.dtype, device=loc.device)
    return rows.reshape(1, 1, -1, ROW)


@detection_output.register_fake
def _detection_output_fake(loc, conf, prior, num_classes, share_location, background_label_id,
                           code_type, variance_encoded_in_target, keep_top_k,
                           confidence_threshold, nms_threshold, nms_top_k):
    count = torch.library.get_ctx().new_dynamic_size()
    return loc.new_empty((1, 1, count, ROW))
