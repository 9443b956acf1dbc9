"""py-faster-rcnn's region proposal rules (the Python layer rpn.proposal_layer.ProposalLayer),
each written once: its param_str, the test-time settings of its config, the anchors and the
float32 box arithmetic. The layer module (layers/proposal.py) and both emitters call these.

Read from rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py, generate_anchors.py,
lib/fast_rcnn/bbox_transform.py and config.py, and from the PVANet fork
(sanghoon/pva-faster-rcnn), whose layer is the same one with an extra 'ratios' key: it reads
im_info[0, :3] only, so its 1×6 im_info is accepted.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, fields

import numpy as np

from senet.errors import ShapeError, UsageError

PROPOSAL_MODULE, PROPOSAL_LAYER = "rpn.proposal_layer", "ProposalLayer"
ANCHOR_BASE_SIZE = 16  # generate_anchors' base_size: the (0, 0, 15, 15) reference window
# The pixel convention of py-faster-rcnn's boxes: a box's width is x2 - x1 + 1 (its NMS too).
PIXEL_OFFSET = 1.0


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class RpnSettings:
    """cfg.TEST's RPN entries of py-faster-rcnn (lib/fast_rcnn/config.py), which the layer
    reads at run time: they are not in the Caffe files. A top-N of 0 or less keeps all."""

    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16

    def as_text(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def rpn_settings(values: RpnSettings | dict | str | None) -> RpnSettings:
    """Settings from a dict of some entries, a text "pre_nms_top_n=6000,nms_thresh=0.7", or
    None (py-faster-rcnn's defaults); UsageError for an unknown entry or a bad value."""
    if values is None or isinstance(values, RpnSettings):
        return values or RpnSettings()
    if isinstance(values, str):
        values = _settings_text(values)
    known = {f.name: f for f in fields(RpnSettings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"--rpn: unknown setting(s) {', '.join(unknown)}",
                         hint="known: " + ", ".join(known))
    checked = {}
    for name, value in values.items():
        integer = known[name].type == "int"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--rpn {name}={value} is not a number") from None
        if not math.isfinite(number) or integer and number != int(number):
            kind = "an integer" if integer else "finite"
            raise UsageError(f"--rpn {name}={value} must be {kind}")
        if name in ("nms_thresh", "min_size") and number < 0:
            raise UsageError(f"--rpn {name}={value} must not be negative")
        checked[name] = int(number) if integer else number
    return RpnSettings(**checked)


def _settings_text(text: str) -> dict:
    entries = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, value = entry.partition("=")
        if not sep:
            raise UsageError(f"--rpn '{text}': '{entry}' is not NAME=VALUE")
        entries[name.strip()] = value.strip()
    return entries


# ----------------------------------------------------------------------------- param_str

@dataclass(frozen=True)
class ProposalParams:
    """The layer's param_str: feat_stride (required), scales and ratios of the anchors."""

    feat_stride: float
    scales: tuple[float, ...] = (8, 16, 32)
    ratios: tuple[float, ...] = (0.5, 1, 2)

    @property
    def anchors_per_position(self) -> int:
        return len(self.scales) * len(self.ratios)


_BARE_KEY = re.compile(r"(^|[{,])\s*([A-Za-z_]\w*)\s*:")


def parse_param_str(text: str, layer: str) -> ProposalParams:
    """The param_str, a YAML mapping in py-faster-rcnn ("'feat_stride': 16" or
    "{'feat_stride': 16, 'scales': [8, 16, 32]}"), read as a Python literal only
    (ast.literal_eval: nothing is evaluated); bare keys (feat_stride: 16) are YAML too.
    ShapeError, naming the layer, for text that is no such mapping or has unknown keys."""
    body = text.strip()
    if not body.startswith("{"):
        body = "{" + body + "}"
    body = _BARE_KEY.sub(lambda m: f"{m.group(1)}'{m.group(2)}':", body)
    try:
        values = ast.literal_eval(body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ShapeError(f"param_str {text!r} is not a mapping of literal values "
                         "(as 'feat_stride': 16)", layer=layer) from None
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ShapeError(f"param_str {text!r} is not a mapping of names to values",
                         layer=layer)
    known = {f.name for f in fields(ProposalParams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ShapeError(f"param_str has unknown key(s) {', '.join(unknown)} (the layer "
                         f"reads {', '.join(sorted(known))})", layer=layer)
    if "feat_stride" not in values:
        raise ShapeError("param_str lacks 'feat_stride'", layer=layer)
    stride = _positive(values["feat_stride"], "feat_stride", layer)
    lists = {}
    for key in ("scales", "ratios"):
        if key in values:
            given = values[key]
            items = given if isinstance(given, (list, tuple)) else [given]
            if not items:
                raise ShapeError(f"param_str '{key}' is empty", layer=layer)
            lists[key] = tuple(_positive(v, key, layer) for v in items)
    return ProposalParams(feat_stride=stride, **lists)


def _positive(value, key: str, layer: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ShapeError(f"param_str '{key}' must be positive numbers, got {value!r}",
                         layer=layer)
    return value


# ----------------------------------------------------------------------------- anchors

def base_anchors(ratios, scales) -> np.ndarray:
    """generate_anchors (float64, A×4 as x1, y1, x2, y2), ratio-major then scale: the
    reference window (0, 0, 15, 15) reshaped to each ratio with the area kept,
    w = round(sqrt(256 / r)), h = round(w·r) (NumPy's round: halves to even), then each
    scaled by each scale about the window's centre (7.5, 7.5), corners ctr ± (size − 1)/2."""
    side = float(ANCHOR_BASE_SIZE)
    centre = 0.5 * (side - 1)
    ratios = np.asarray(ratios, np.float64)
    widths = np.round(np.sqrt(side * side / ratios))
    heights = np.round(widths * ratios)
    scales = np.asarray(scales, np.float64)
    ws = (widths[:, None] * scales[None, :]).ravel()
    hs = (heights[:, None] * scales[None, :]).ravel()
    return np.stack([centre - 0.5 * (ws - 1), centre - 0.5 * (hs - 1),
                     centre + 0.5 * (ws - 1), centre + 0.5 * (hs - 1)], axis=1)


def anchor_geometry(params: ProposalParams, height: int, width: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(widths, heights, ctr_x, ctr_y) of every shifted anchor as float32 vectors, in the
    layer's order: position (row-major over the H×W score map) then anchor. The anchors are
    cast to float32 first and measured in float32, as bbox_transform_inv does (w = x2 − x1 + 1,
    ctr = x1 + 0.5·w)."""
    anchors = base_anchors(params.ratios, params.scales)
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    shift_x = (xs.ravel() * params.feat_stride).astype(np.float64)
    shift_y = (ys.ravel() * params.feat_stride).astype(np.float64)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1)
    boxes = (shifts[:, None, :] + anchors[None, :, :]).reshape(-1, 4).astype(np.float32)
    one, half = np.float32(1), np.float32(0.5)
    widths = boxes[:, 2] - boxes[:, 0] + one
    heights = boxes[:, 3] - boxes[:, 1] + one
    return widths, heights, boxes[:, 0] + half * widths, boxes[:, 1] + half * heights


def check_proposal_inputs(params: ProposalParams, shapes, layer: str) -> tuple[int, int]:
    """(H, W) of the score map; ShapeError unless scores are 1×2A×H×W, deltas 1×4A×H×W and
    im_info has a row of at least (height, width, scale): the layer takes one image."""
    scores, deltas, im_info = (tuple(s) for s in shapes)
    a = params.anchors_per_position
    if len(scores) != 4 or scores[1] != 2 * a:
        raise ShapeError(f"scores {list(scores)} must be 1×{2 * a}×H×W ({a} anchors: "
                         f"{len(params.ratios)} ratios × {len(params.scales)} scales)",
                         layer=layer)
    if scores[0] != 1:
        raise ShapeError(f"takes one image (py-faster-rcnn asserts a batch of 1), got "
                         f"{scores[0]}", layer=layer)
    if deltas != (1, 4 * a, *scores[2:]):
        raise ShapeError(f"bbox deltas {list(deltas)} must be {[1, 4 * a, *scores[2:]]}",
                         layer=layer)
    if len(im_info) != 2 or im_info[0] != 1 or im_info[1] < 3:
        raise ShapeError(f"im_info {list(im_info)} must be 1×3 (height, width, scale) or "
                         "wider", layer=layer)
    return scores[2], scores[3]


def ranked_scores(count: int) -> np.ndarray:
    """count, count − 1, …, 1 (float32): scores that order candidates by position only, for an
    NMS that would reorder equal scores (the candidates arrive sorted, ties by index)."""
    return np.arange(count, 0, -1, dtype=np.float32)
