"""SSD's DetectionOutput: decoded boxes, per-class NMS and keep_top_k, Caffe's 1×1×K×7 rows.

The rules are senet.converter.detection_rules'. torch: the op ``senet::detection_output``
(senet.kernels.detection). ONNX: standard ops, onnxruntime's NonMaxSuppression made to give
Caffe's answer (checked by tests/converter/test_detection_output.py):

- its score_threshold and iou_threshold compare strictly (score > threshold kept, overlap >
  threshold suppressed), its visiting order is descending score with equal scores by index, and
  its IoU is w·h intersection over union in float, as SSD's JaccardOverlap;
- it normalises an inverted box's corners where SSD gives it size 0 (it then overlaps nothing):
  NMS sees such a box as a point, which onnxruntime likewise lets overlap nothing;
- it has one box set per batch item: every (image, class) pair is its own batch item, so the
  classes of share_location false keep their own boxes;
- its max_output_boxes_per_class cuts after NMS where nms top_k cuts before: a stable TopK
  (equal scores by lower index, as std::stable_sort) picks the candidates first.

Its selected rows come ordered by batch item (image, then class) and NMS order, which is
Caffe's output order; keep_top_k then masks rows in place (their rank in the image by score,
equal scores in row order, found with two stable TopK sorts).
"""

from __future__ import annotations

import numpy as np

from senet.converter.detection_rules import (
    ROW, SETUP_SHAPE, decode_boxes, detection_num_priors, detection_settings,
)
from senet.converter.layers import LayerConverter, register


def _settings_and_priors(layer, shapes):
    s = detection_settings(layer.param.detection_output_param, layer.name)
    return s, detection_num_priors(s, *shapes[:3], layer.name)


@register("DetectionOutput", origin="SSD (weiliu89/caffe)")
class DetectionOutput(LayerConverter):
    """Bottoms: location predictions, confidences (after softmax), the prior blob."""

    min_bottoms = max_bottoms = 3
    data_dependent = True

    def infer_shapes(self, layer, in_shapes):
        _settings_and_priors(layer, in_shapes)
        return [SETUP_SHAPE]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        # any batch: the prior blob's first image is read, the top's axis 0 is always 1
        return in_shapes[0][0] == in_shapes[1][0] == batch

    def to_torch(self, layer, ctx):
        import torch
        s, _ = _settings_and_priors(layer, [ctx.shape(b) for b in layer.bottoms])
        ctx.emit(layer.tops[0], torch.ops.senet.detection_output,
                 *[ctx.value(b) for b in layer.bottoms], s.num_classes, s.share_location,
                 s.background_label_id, s.code_type, s.variance_encoded_in_target,
                 s.keep_top_k, s.confidence_threshold, s.nms_threshold, s.nms_top_k)

    def to_onnx(self, layer, g):
        s, num_priors = _settings_and_priors(layer, [g.shape(b) for b in layer.bottoms])
        e = _Emitter(g, layer.name)
        loc, conf, prior = layer.bottoms
        images = e.op("Gather", e.op("Shape", loc), e.ints([0]), axis=0)  # [N]
        if s.labels:
            rows = _detections(e, s, num_priors, loc, conf, prior, images)
        else:  # every class is the background
            rows = e.const(np.zeros((0, ROW)))
        fallback = e.op("Concat", e.op("Cast", e.op("Unsqueeze", e.op(
            "Range", e.ints(0), e.op("Squeeze", images), e.ints(1)), e.ints([1])), to=1),
            e.op("Expand", e.const(-np.ones((1, ROW - 1))), e.op("Concat", images, e.ints(
                [ROW - 1]), axis=0)), axis=1)
        # rows when there are any, else one (i, -1, ...) per image: a Slice of both
        count = e.op("Gather", e.op("Shape", rows), e.ints([0]), axis=0)
        end = e.op("Where", e.op("Greater", count, e.ints([0])), count, images)
        both = e.op("Concat", rows, fallback, axis=0)
        g.node("Reshape", [e.op("Slice", both, e.ints([0]), end, e.ints([0])),
                           e.ints([1, 1, -1, ROW])], layer.tops)


def _detections(e, s, num_priors, loc, conf, prior, images):
    """M × 7 rows of every image's detections in Caffe's order."""
    labels = len(s.labels)
    boxes = _decoded(e, s, num_priors, loc, prior)  # N × P × loc_classes × 4
    boxes = e.op("Transpose", boxes, perm=[0, 2, 1, 3])
    if s.share_location:
        boxes = e.op("Expand", boxes, e.ints([1, labels, 1, 1]))
    else:
        boxes = e.op("Gather", boxes, e.ints(s.loc_labels), axis=1)
    boxes = e.op("Reshape", boxes, e.ints([-1, num_priors, 4]))  # (image, label) × P × 4
    scores = e.op("Reshape", conf, e.ints([-1, num_priors, s.num_classes]))
    scores = e.op("Gather", e.op("Transpose", scores, perm=[0, 2, 1]), e.ints(s.labels), axis=1)
    scores = e.op("Reshape", scores, e.ints([-1, num_priors]))  # (image, label) × P
    k = s.candidates_per_class(num_priors)
    if k < num_priors:  # nms top_k: the k best before NMS (TopK orders ties by index)
        scores, best = e.op("TopK", scores, e.ints([k]), largest=1, sorted=1, outputs=2)
        best = e.op("Expand", e.op("Unsqueeze", best, e.ints([2])), e.ints([1, 1, 4]))
        boxes = e.op("GatherElements", boxes, best, axis=1)
    selected = e.op("NonMaxSuppression", _points_for_inverted(e, boxes),
                    e.op("Unsqueeze", scores, e.ints([1])), e.ints([k]),
                    e.const([min(s.nms_threshold, 1.0)]), e.const([s.confidence_threshold]))
    where = e.op("Gather", selected, e.ints([0, 2]), axis=1)  # (item, candidate)
    item = e.op("Gather", selected, e.ints(0), axis=1)
    score = e.op("GatherND", scores, where)
    image = e.op("Div", item, e.ints(labels))
    label = e.op("Gather", e.ints(s.labels), e.op("Mod", item, e.ints(labels)))
    columns = [e.op("Unsqueeze", e.op("Cast", v, to=1), e.ints([1])) for v in (image, label)]
    rows = e.op("Concat", *columns, e.op("Unsqueeze", score, e.ints([1])),
                e.op("GatherND", boxes, where), axis=1)
    if s.keep_top_k >= 0:
        rows = e.op("Compress", rows, _within_keep_top_k(e, s, image, score, images), axis=0)
    return rows


def _decoded(e, s, num_priors, loc, prior):
    """N × P × loc_classes × 4 boxes (decode_boxes on P×1 prior and N×P×L×1 loc parts)."""
    first = e.op("Gather", prior, e.ints(0), axis=0)
    box_and_variance = e.op("Reshape", first, e.ints([2, num_priors, 1, 4]))
    parts = e.op("Split", box_and_variance, axis=3, outputs=4, split=[1, 1, 1, 1])
    halves = [e.op("Split", p, axis=0, outputs=2, split=[1, 1]) for p in parts]
    box = [_Value(e, h[0]) for h in halves]
    variance = [_Value(e, h[1]) for h in halves]
    offsets = e.op("Reshape", loc, e.ints([-1, num_priors, s.loc_classes, 4]))
    offsets = [_Value(e, v) for v in e.op("Split", offsets, axis=3, outputs=4,
                                          split=[1, 1, 1, 1])]
    decoded = decode_boxes(box, variance, offsets, s.code_type, s.variance_encoded_in_target,
                           lambda v: _Value(e, e.op("Exp", v.name)))
    return e.op("Concat", *[v.name for v in decoded], axis=3)


def _points_for_inverted(e, boxes):
    """The boxes NMS sees: an inverted one (xmax < xmin or ymax < ymin) as the point (xmin,
    ymin), which overlaps nothing in onnxruntime, as SSD's size-0 box overlaps nothing."""
    x1, y1, x2, y2 = e.op("Split", boxes, axis=2, outputs=4, split=[1, 1, 1, 1])
    inverted = e.op("Or", e.op("Less", x2, x1), e.op("Less", y2, y1))
    return e.op("Where", inverted, e.op("Concat", x1, y1, x1, y1, axis=2), boxes)


def _within_keep_top_k(e, s, image, score, images):
    """Per row: is its rank in its image (descending score, equal scores in row order) below
    keep_top_k? Two stable sorts: by score, then by image."""
    count = e.op("Shape", score)
    by_score = e.op("TopK", score, count, largest=1, sorted=1, outputs=2)[1]
    by_image = e.op("TopK", e.op("Cast", e.op("Gather", image, by_score), to=1), count,
                    largest=0, sorted=1, outputs=2)[1]
    order = e.op("Gather", by_score, by_image)  # rows by image, then score, then row
    sorted_image = e.op("Gather", image, order)
    image_ids = e.op("Range", e.ints(0), e.op("Squeeze", images), e.ints(1))
    per_image = e.op("ReduceSum", e.op("Cast", e.op("Equal", e.op(
        "Unsqueeze", sorted_image, e.ints([1])), image_ids), to=7), e.ints([0]), keepdims=0)
    first = e.op("CumSum", per_image, e.ints(0), exclusive=1)  # each image's first position
    rank = e.op("Sub", e.op("Range", e.ints(0), e.op("Squeeze", count), e.ints(1)),
                e.op("Gather", first, sorted_image))
    kept = e.op("Cast", e.op("Less", rank, e.ints(s.keep_top_k)), to=7)
    in_place = e.op("ScatterElements", e.op("Mul", kept, e.ints(0)), order, kept, axis=0)
    return e.op("Cast", in_place, to=9)


class _Emitter:
    """Nodes of one layer with fresh names: op(...) returns its output(s)."""

    def __init__(self, g, layer: str):
        self.g, self.layer = g, layer

    def op(self, op_type, *inputs, outputs=1, **attrs):
        if op_type == "Split":  # an input since opset 13, senet's lowest
            inputs = (*inputs, self.ints(attrs.pop("split")))
        names = [self.g.tmp(f"{self.layer}/{op_type.lower()}") for _ in range(outputs)]
        self.g.node(op_type, list(inputs), names, **attrs)
        return names[0] if outputs == 1 else names

    def ints(self, values):
        return self.g.ints(values, f"{self.layer}/ints")

    def const(self, values):
        return self.g.const(values, f"{self.layer}/const")


class _Value:
    """An ONNX value with + - * (by values or numbers), for decode_boxes."""

    def __init__(self, e: _Emitter, name: str):
        self.e, self.name = e, name

    def _apply(self, op_type, other):
        other = other.name if isinstance(other, _Value) else self.e.const(np.float32(other))
        return _Value(self.e, self.e.op(op_type, self.name, other))

    def __add__(self, other):
        return self._apply("Add", other)

    def __sub__(self, other):
        return self._apply("Sub", other)

    def __mul__(self, other):
        return self._apply("Mul", other)
