"""py-faster-rcnn's region proposal layer, the Python layer rpn.proposal_layer.ProposalLayer
(also the PVANet fork's, which adds anchor ratios to its param_str). Its rules are in
senet.converter.rpn; its run-time settings (cfg.TEST) in CaffeNet.rpn.

The layer, for one image: anchors at every score-map position (feat_stride apart), moved by
the predicted deltas, clipped to the image, boxes narrower or lower than min_size·im_info[2]
dropped, the rest sorted by foreground score (ties by position: py-faster-rcnn's unstable
argsort()[::-1] leaves them unspecified; a stable descending sort is the one defined order),
the first pre_nms_top_n kept, greedy NMS with +1 pixel sizes (suppressed when IoU >
nms_thresh), the first post_nms_top_n kept. Tops: rois R×5 (0, x1, y1, x2, y2) and
optionally scores R×1.

Both emitters drop small boxes by sorting their scores as −inf (they come last, so they
cannot suppress a kept box) and remove them after NMS: every shape up to NMS is static.
ONNX: NonMaxSuppression on the boxes with x2, y2 moved by +1 (its IoU is then
py-faster-rcnn's but for how x2 − x1 + 1 rounds in float32 when x2 + 1 crosses a power of
two) and scores replaced by their rank (NonMaxSuppression may reorder equal scores).
torch: senet::nms with pixel offset 1, py-faster-rcnn's arithmetic exactly.
"""

from __future__ import annotations

import operator

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.converter.rpn import (
    PIXEL_OFFSET, PROPOSAL_LAYER, PROPOSAL_MODULE, anchor_geometry, check_proposal_inputs,
    parse_param_str, ranked_scores,
)


def _params(layer):
    return parse_param_str(layer.param.python_param.param_str, layer.name)


def _candidates(settings, count: int) -> int:
    """How many sorted boxes go to NMS: pre_nms_top_n of them (all when it is ≤ 0)."""
    top = settings.pre_nms_top_n
    return min(top, count) if top > 0 else count


@register(f"Python {PROPOSAL_MODULE}.{PROPOSAL_LAYER}", origin="py-faster-rcnn (rbgirshick)")
class ProposalLayer(LayerConverter):
    """Bottoms: foreground/background scores 1×2A×H×W (the second A channels are the
    foreground), bbox deltas 1×4A×H×W, im_info 1×3 (height, width, scale; wider accepted).
    Tops: rois, optionally scores."""

    min_bottoms, max_bottoms = 3, 3
    min_tops, max_tops = 1, 2
    data_dependent = True

    def infer_shapes(self, layer, in_shapes):
        check_proposal_inputs(_params(layer), in_shapes, layer.name)
        # Caffe's setup shapes; the scores top is R×1 from the first forward on (its
        # 1×1×1×1 setup placeholder never reaches a consumer), so it is given that rank.
        return [(1, 5), (1, 1)][:len(layer.tops)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return False  # one image only (the layer asserts it)

    # --- ONNX ------------------------------------------------------------------------------

    def to_onnx(self, layer, g):
        params, name = _params(layer), layer.name
        scores_in, deltas_in, im_info = layer.bottoms
        height, width = check_proposal_inputs(
            params, [g.shape(b) for b in layer.bottoms], name)
        a = params.anchors_per_position
        count = height * width * a
        geometry = anchor_geometry(params, height, width)
        widths, heights, ctr_x, ctr_y = (g.const(v, f"{name}/anchor_{k}") for v, k in
                                         zip(geometry, ("w", "h", "ctr_x", "ctr_y")))

        def op(kind, inputs, hint, **attrs):
            out = g.tmp(f"{name}/{hint}")
            g.node(kind, inputs, [out], **attrs)
            return out

        def scalar(value, hint):
            return g.const(np.float32(value), f"{name}/{hint}")

        def positions(blob, channels, hint):  # 1×C×H×W -> (H·W·A)×(C/A), rows (h, w, a)
            moved = op("Transpose", [blob], hint + "_hwc", perm=[0, 2, 3, 1])
            return op("Reshape", [moved, g.ints([count, channels // a], f"{name}/{hint}_rows")],
                      hint)

        foreground = op("Slice", [scores_in, g.ints([a], f"{name}/fg_start"),
                                  g.ints([2 * a], f"{name}/fg_end"),
                                  g.ints([1], f"{name}/fg_axis")], "fg")
        score = op("Reshape", [positions(foreground, a, "fg_rows"),
                               g.ints([count], f"{name}/flat")], "score")
        deltas = positions(deltas_in, 4 * a, "deltas")
        dx, dy, dw, dh = (op("Gather", [deltas, g.ints(j, f"{name}/col{j}")], f"d{j}", axis=1)
                          for j in range(4))
        half = scalar(0.5, "half")
        centre_x = op("Add", [op("Mul", [dx, widths], "dx_w"), ctr_x], "pred_ctr_x")
        centre_y = op("Add", [op("Mul", [dy, heights], "dy_h"), ctr_y], "pred_ctr_y")
        half_w = op("Mul", [half, op("Mul", [op("Exp", [dw], "exp_dw"), widths], "pred_w")],
                    "half_w")
        half_h = op("Mul", [half, op("Mul", [op("Exp", [dh], "exp_dh"), heights], "pred_h")],
                    "half_h")

        info = op("Reshape", [im_info, g.ints([-1], f"{name}/info_flat")], "info")
        im_h, im_w, im_scale = (op("Gather", [info, g.ints(k, f"{name}/info{k}")], f"info{k}",
                                   axis=0) for k in range(3))
        one, zero = scalar(1, "one"), scalar(0, "zero")
        limit_x = op("Sub", [im_w, one], "max_x")
        limit_y = op("Sub", [im_h, one], "max_y")

        def clipped(value, limit, hint):
            return op("Max", [op("Min", [value, limit], hint + "_min"), zero], hint)

        x1 = clipped(op("Sub", [centre_x, half_w], "x1_raw"), limit_x, "x1")
        y1 = clipped(op("Sub", [centre_y, half_h], "y1_raw"), limit_y, "y1")
        x2 = clipped(op("Add", [centre_x, half_w], "x2_raw"), limit_x, "x2")
        y2 = clipped(op("Add", [centre_y, half_h], "y2_raw"), limit_y, "y2")

        least = op("Mul", [scalar(g.net.rpn.min_size, "min_size"), im_scale], "least")
        wide = op("GreaterOrEqual", [op("Add", [op("Sub", [x2, x1], "w0"), one], "ws"), least],
                  "wide")
        tall = op("GreaterOrEqual", [op("Add", [op("Sub", [y2, y1], "h0"), one], "hs"), least],
                  "tall")
        big = op("And", [wide, tall], "big")
        kept = op("ReduceSum", [op("Cast", [big], "big_int", to=7)], "kept", keepdims=0)
        ranked = op("Where", [big, score, scalar(-np.inf, "minus_inf")], "ranked")

        candidates = _candidates(g.net.rpn, count)
        order = g.tmp(f"{name}/order")
        g.node("TopK", [ranked, g.ints([candidates], f"{name}/pre_nms_top_n")],
               [g.tmp(f"{name}/sorted"), order], axis=0, largest=1, sorted=1)
        columns = [op("Unsqueeze", [c, g.ints([1], f"{name}/col_axis")], f"c{k}")
                   for k, c in enumerate((x1, y1, x2, y2))]
        boxes = op("Gather", [op("Concat", columns, "boxes_all", axis=1), order], "boxes",
                   axis=0)
        top_scores = op("Gather", [score, order], "top_scores", axis=0)

        pixel = g.const(np.array([0, 0, PIXEL_OFFSET, PIXEL_OFFSET], np.float32),
                        f"{name}/pixel")
        nms_boxes = op("Unsqueeze", [op("Add", [boxes, pixel], "pixel_boxes"),
                                     g.ints([0], f"{name}/batch_axis")], "nms_boxes")
        nms_scores = g.const(ranked_scores(candidates).reshape(1, 1, -1), f"{name}/rank")
        post = g.net.rpn.post_nms_top_n
        selected = op("NonMaxSuppression", [
            nms_boxes, nms_scores, g.ints([post if post > 0 else candidates], f"{name}/post"),
            g.const(np.array([g.net.rpn.nms_thresh], np.float32), f"{name}/nms_thresh")],
            "selected", center_point_box=0)
        picked = op("Gather", [selected, g.ints(2, f"{name}/box_column")], "picked", axis=1)
        # NMS picks by rank, so the dropped small boxes (ranked last) are the last picks
        picked = op("Compress", [picked, op("Less", [picked, kept], "real")], "keep", axis=0)

        rois = op("Gather", [boxes, picked], "roi_boxes", axis=0)
        zeros_shape = op("Concat", [op("Shape", [picked], "count"),
                                    g.ints([1], f"{name}/one_col")], "zeros_shape", axis=0)
        batch_index = op("ConstantOfShape", [zeros_shape], "batch_index")
        g.node("Concat", [batch_index, rois], [layer.tops[0]], axis=1)
        if len(layer.tops) > 1:
            g.node("Unsqueeze", [op("Gather", [top_scores, picked], "roi_scores", axis=0),
                                 g.ints([1], f"{name}/score_axis")], [layer.tops[1]])

    # --- torch -----------------------------------------------------------------------------

    def to_torch(self, layer, ctx):
        params = _params(layer)
        height, width = check_proposal_inputs(
            params, [ctx.shape(b) for b in layer.bottoms], layer.name)
        a = params.anchors_per_position
        count = height * width * a
        widths, heights, ctr_x, ctr_y = (
            ctx.buffer(key, value) for key, value in
            zip(("anchor_w", "anchor_h", "anchor_ctr_x", "anchor_ctr_y"),
                anchor_geometry(params, height, width)))
        scores_in, deltas_in, im_info = (ctx.value(b) for b in layer.bottoms)
        rpn = ctx.net.rpn
        tops = ctx.op(_proposals, scores_in, deltas_in, im_info, widths, heights, ctr_x,
                      ctr_y, a, count, _candidates(rpn, count), rpn.post_nms_top_n,
                      float(np.float32(rpn.min_size)), float(np.float32(rpn.nms_thresh)),
                      len(layer.tops))
        for k, top in enumerate(layer.tops):
            ctx.emit(top, operator.getitem, tops, k)


def _proposals(scores, deltas, im_info, widths, heights, ctr_x, ctr_y, a: int, count: int,
               candidates: int, post: int, min_size: float, nms_thresh: float, n_tops: int):
    """The layer's forward in torch ops (see the module docstring); returns its tops."""
    import torch
    score = scores[:, a:].permute(0, 2, 3, 1).reshape(count)
    d = deltas.permute(0, 2, 3, 1).reshape(count, 4)
    centre_x = d[:, 0] * widths + ctr_x
    centre_y = d[:, 1] * heights + ctr_y
    half_w = 0.5 * (torch.exp(d[:, 2]) * widths)
    half_h = 0.5 * (torch.exp(d[:, 3]) * heights)
    info = im_info.reshape(-1)
    limit_x, limit_y = info[1] - 1, info[0] - 1
    x1 = torch.minimum(centre_x - half_w, limit_x).clamp_min(0)
    y1 = torch.minimum(centre_y - half_h, limit_y).clamp_min(0)
    x2 = torch.minimum(centre_x + half_w, limit_x).clamp_min(0)
    y2 = torch.minimum(centre_y + half_h, limit_y).clamp_min(0)
    least = min_size * info[2]
    big = ((x2 - x1 + 1) >= least) & ((y2 - y1 + 1) >= least)
    ranked = torch.where(big, score, torch.full_like(score, float("-inf")))
    ordered, order = torch.sort(ranked, descending=True, stable=True)
    order, ordered = order[:candidates], ordered[:candidates]
    boxes = torch.stack([x1, y1, x2, y2], dim=1)[order]
    # ordered is descending with the small boxes (−inf) last: senet::nms visits in this order
    keep = torch.ops.senet.nms(boxes, ordered, nms_thresh, 1.0)
    keep = keep[keep < big.sum()]
    if post > 0:
        keep = keep[:post]
    rois = torch.cat([torch.zeros_like(boxes[keep][:, :1]), boxes[keep]], dim=1)
    return (rois, score[order][keep].unsqueeze(1))[:n_tops]
