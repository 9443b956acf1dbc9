"""SSD's DetectionOutput (weiliu89/caffe, branch ssd: detection_output_layer.cpp Forward_cpu and
util/bbox_util.cpp), its rules written once. The layer's shape rule, its ONNX emitter and the
torch op ``senet::detection_output`` all take them from here.

What the layer computes, per image i of the batch:

1. Boxes. The prior blob (1×2×P·4) holds P prior boxes (xmin, ymin, xmax, ymax), then their P
   variances; only its first image is read. Each location prediction (4 numbers per prior, one
   set per class when share_location is false) is decoded against its prior by `decode_boxes`.
   This version decodes without clipping (Forward_cpu: clip_bbox = false); older GPU forwards
   clipped the boxes they wrote, which is not reproduced.
2. Candidates per class c (every class but background_label_id; with share_location false the
   boxes of class c): the priors whose score is strictly greater than confidence_threshold
   (GetMaxScoreIndex; without a threshold every score > −FLT_MAX), sorted by descending score
   with std::stable_sort (equal scores in prior order), cut to the first nms top_k.
3. Greedy NMS over those candidates in that order (ApplyNMSFast with eta 1): a candidate is kept
   unless its Jaccard overlap with a box kept before is > nms_threshold. Overlap uses SSD's
   normalised sizes (w·h, 0 for an inverted box; `senet::nms` with offset 0).
4. keep_top_k: when the image has more than keep_top_k detections, the keep_top_k highest
   scores survive. Caffe sorts the (score, (label, prior)) pairs with std::sort on the score
   alone, which is not stable: reproduced is the stable order (equal scores in the order the
   pairs were made: label ascending, then NMS order). libstdc++'s std::sort is an insertion
   sort below 17 elements, so this is Caffe's exact result for up to 16 detections per image;
   beyond that Caffe's choice among equal scores at the cut is its sort's accident.
5. Output 1×1×K×7 rows (image, label, score, xmin, ymin, xmax, ymax): images in order, labels
   ascending, within a label the NMS order (descending score, equal scores by prior index); no
   padding. When no image has a detection, one row (i, −1, −1, −1, −1, −1, −1) per image.

Where Forward_cpu cannot run (share_location with background_label_id −1: DecodeBBoxesAll skips
loc label −1 and the forward dies on a fatal log), the GPU forward's and OpenCV's meaning is
taken: no class is background.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

from senet.errors import ShapeError, UnsupportedLayerError

FLT_MAX = 3.4028234663852886e38  # float32's largest value, as C's FLT_MAX
SETUP_SHAPE = (1, 1, 1, 7)  # DetectionOutputLayer::Reshape: one (fake) row until the forward
ROW = 7  # image, label, score, xmin, ymin, xmax, ymax
CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}


@dataclass(frozen=True)
class DetectionSettings:
    """A DetectionOutput layer's parameters as the forward uses them."""

    num_classes: int
    share_location: bool
    background_label_id: int
    code_type: str
    variance_encoded_in_target: bool
    keep_top_k: int  # < 0: no limit
    confidence_threshold: float  # a score must be greater; Caffe's default −FLT_MAX
    nms_threshold: float
    nms_top_k: int  # < 0: no limit

    @property
    def loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes

    @property
    def labels(self) -> list[int]:
        """The classes that get detections, ascending (all but the background)."""
        return [c for c in range(self.num_classes) if c != self.background_label_id]

    @property
    def loc_labels(self) -> list[int]:
        """For each of `labels`, the loc class its boxes come from."""
        return [0 if self.share_location else c for c in self.labels]

    def candidates_per_class(self, num_priors: int) -> int:
        """How many priors of a class can enter NMS: nms top_k, at most all of them."""
        return num_priors if self.nms_top_k < 0 else min(self.nms_top_k, num_priors)


def detection_settings(param, layer: str) -> DetectionSettings:
    """The settings of a DetectionOutputParameter, refusing what Caffe refuses (no num_classes,
    negative nms_threshold, eta outside (0, 1]) and what senet does not reproduce (adaptive
    NMS, eta < 1). Saving results to files and drawing them change nothing in the top: they
    are ignored with a warning."""
    if not param.HasField("num_classes") or param.num_classes < 1:
        raise ShapeError("DetectionOutput needs detection_output_param { num_classes } ≥ 1",
                         layer=layer)
    nms = param.nms_param
    if nms.nms_threshold < 0:
        raise ShapeError(f"nms_threshold must be non-negative, got {nms.nms_threshold}",
                         layer=layer)
    if not 0 < nms.eta <= 1:
        raise ShapeError(f"nms_param eta must be in (0, 1], got {nms.eta}", layer=layer)
    if nms.eta < 1:
        raise UnsupportedLayerError(
            f"adaptive NMS (eta {nms.eta}) is not supported: ONNX's NonMaxSuppression has one "
            "fixed threshold", layer=layer, hint="eta 1 is SSD's default")
    if param.code_type not in CODE_TYPES:
        raise ShapeError(f"unknown code_type {param.code_type}", layer=layer)
    if param.save_output_param.output_directory:
        warnings.warn(f"layer '{layer}': save_output_param (writing detections to "
                      f"{param.save_output_param.output_directory}) is ignored; the "
                      "detections are the layer's output", stacklevel=2)
    if param.visualize:
        warnings.warn(f"layer '{layer}': visualize (drawing detections) is ignored",
                      stacklevel=2)
    return DetectionSettings(
        num_classes=param.num_classes, share_location=param.share_location,
        background_label_id=param.background_label_id, code_type=CODE_TYPES[param.code_type],
        variance_encoded_in_target=param.variance_encoded_in_target,
        keep_top_k=param.keep_top_k,
        confidence_threshold=(param.confidence_threshold
                              if param.HasField("confidence_threshold") else -FLT_MAX),
        nms_threshold=nms.nms_threshold, nms_top_k=nms.top_k if nms.HasField("top_k") else -1)


def detection_num_priors(s: DetectionSettings, loc: tuple[int, ...], conf: tuple[int, ...],
                         prior: tuple[int, ...], layer: str) -> int:
    """P, the number of priors, checked as DetectionOutputLayer::Reshape does: P is axis 2 of
    the prior blob / 4; loc's axis 1 is P·loc_classes·4 and conf's P·num_classes, one image's
    values each (no other axis bigger than 1), both with the same batch."""
    def fail(what):
        raise ShapeError(what, layer=layer)

    if len(prior) < 3 or prior[1] != 2 or prior[2] % 4:
        fail(f"the prior blob must be 1×2×(4·priors) (boxes, then variances), got {list(prior)}")
    if math.prod(prior[3:]) != 1:
        fail(f"the prior blob must be 1×2×(4·priors), got {list(prior)}")
    num_priors = prior[2] // 4
    for name, shape, per_prior in (("location", loc, 4 * s.loc_classes),
                                   ("confidence", conf, s.num_classes)):
        if len(shape) < 2 or shape[1] != num_priors * per_prior or math.prod(shape[2:]) != 1:
            fail(f"the {name} blob must be N×{num_priors * per_prior} ({num_priors} priors × "
                 f"{per_prior}), got {list(shape)}")
    if loc[0] != conf[0]:
        fail(f"the location and confidence blobs have batches {loc[0]} and {conf[0]}")
    return num_priors


def decode_boxes(prior, variance, loc, code_type: str, variance_encoded_in_target: bool,
                 exp: Callable):
    """DecodeBBox: the box (xmin, ymin, xmax, ymax) a location prediction gives.

    `prior`, `variance` and `loc` are 4-sequences of values with + - * (NumPy or torch arrays,
    ONNX value wrappers), `exp` their exponential. The operations are Caffe's, in its order and
    grouping (float: the ½ of a sum is exact as · 0.5)."""
    if variance_encoded_in_target:
        offsets = list(loc)  # the network already predicts the variance-scaled offsets
    else:
        offsets = [v * d for v, d in zip(variance, loc)]
    if code_type == "CORNER":
        return tuple(p + o for p, o in zip(prior, offsets))
    width, height = prior[2] - prior[0], prior[3] - prior[1]
    if code_type == "CORNER_SIZE":
        sizes = (width, height, width, height)
        return tuple(p + o * size for p, o, size in zip(prior, offsets, sizes))
    center_x, center_y = (prior[0] + prior[2]) * 0.5, (prior[1] + prior[3]) * 0.5
    cx, cy = offsets[0] * width + center_x, offsets[1] * height + center_y
    half_w, half_h = exp(offsets[2]) * width * 0.5, exp(offsets[3]) * height * 0.5
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h
