"""SSD's PriorBox (weiliu89/caffe, branch ssd): the anchor boxes of one feature map.

The boxes depend only on the shapes of the two bottoms (the feature map's H×W, the image's
H×W) and on prior_box_param, so they are computed here once, at conversion time, in the
fork's own arithmetic (float32 where its C++ holds floats, double where it promotes), and
emitted as a constant: an ONNX initializer, a torch buffer. The top is 1 × 2 × (H·W·P·4),
row 0 the boxes (xmin, ymin, xmax, ymax, divided by the image size), row 1 the variances;
its axis 0 is 1 whatever the batch, so the layer keeps a net's batch dynamic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from senet.converter.layers import LayerConverter, register
from senet.errors import ShapeError

SSD = "SSD (weiliu89/caffe)"
_SAME_RATIO = 1e-6  # the fork's tolerance for a repeated aspect ratio and for ratio 1
_DEFAULT_VARIANCE = 0.1


@dataclass(frozen=True)
class PriorBoxSpec:
    """prior_box_param as PriorBoxLayer::LayerSetUp stores it."""

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[np.float32, ...]  # 1 first, then each new ratio (and 1/ratio)
    clip: bool
    variances: tuple[np.float32, ...]  # 1 or 4 values
    img_h: int  # 0: the second bottom's height
    img_w: int
    step_h: np.float32  # 0: image size / feature map size
    step_w: np.float32
    offset: np.float32

    @property
    def num_priors(self) -> int:
        return len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)


def prior_box_spec(layer) -> PriorBoxSpec:
    """The layer's parameters, checked as the fork's LayerSetUp CHECKs them (ShapeError
    naming the layer for what the fork would abort on)."""
    p, name = layer.param.prior_box_param, layer.name

    def refuse(what: str):
        raise ShapeError(f"PriorBox {what} (the SSD fork's check)", layer=name)

    if not p.min_size:
        refuse("needs prior_box_param { min_size }")
    if any(s <= 0 for s in p.min_size):
        refuse("min_size must be positive")
    ratios = [np.float32(1.0)]
    for ar in map(np.float32, p.aspect_ratio):
        # the fork compares in float and pushes 1/ar computed in double, stored as float
        if all(abs(ar - known) >= _SAME_RATIO for known in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(np.float32(1.0 / float(ar)))
    if p.max_size:
        if len(p.max_size) != len(p.min_size):
            refuse(f"needs as many max_size as min_size ({len(p.max_size)} vs "
                   f"{len(p.min_size)})")
        if any(hi <= lo for lo, hi in zip(p.min_size, p.max_size)):
            refuse("max_size must be greater than min_size")
    if len(p.variance) not in (0, 1, 4):
        refuse(f"takes 1 or 4 variance values, got {len(p.variance)}")
    if any(v <= 0 for v in p.variance):
        refuse("variance must be positive")
    variances = tuple(map(np.float32, p.variance)) or (np.float32(_DEFAULT_VARIANCE),)
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            refuse("takes img_size or img_h/img_w, not both")
        if p.img_h <= 0 or p.img_w <= 0:
            refuse("img_h and img_w must both be positive")
        img_h, img_w = p.img_h, p.img_w
    elif p.HasField("img_size"):
        if p.img_size <= 0:
            refuse("img_size must be positive")
        img_h = img_w = p.img_size
    else:
        img_h = img_w = 0
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            refuse("takes step or step_h/step_w, not both")
        if p.step_h <= 0 or p.step_w <= 0:
            refuse("step_h and step_w must both be positive")
        step_h, step_w = p.step_h, p.step_w
    elif p.HasField("step"):
        if p.step <= 0:
            refuse("step must be positive")
        step_h = step_w = p.step
    else:
        step_h = step_w = 0.0
    return PriorBoxSpec(tuple(p.min_size), tuple(p.max_size), tuple(ratios), p.clip,
                        variances, img_h, img_w, np.float32(step_h), np.float32(step_w),
                        np.float32(p.offset))


def _box_sizes(spec: PriorBoxSpec) -> list[tuple[np.float32, np.float32]]:
    """(width, height) of each prior at one position, in the fork's order: per min_size,
    the min_size square, the sqrt(min_size·max_size) square, then min_size·(√r, 1/√r) for
    each aspect ratio other than 1 in LayerSetUp's order (r, 1/r, r', 1/r', …). (One
    weiliu89 commit, 3b97386, scales the ratio boxes by sqrt(min_size·max_size) instead;
    the released SSD models, OpenCV and the forks built on SSD use min_size.)

    The fork reads min_size and max_size into ints (`int min_size_ = min_sizes_[s]`), so
    fractional sizes are truncated; sqrt of their int product is taken in double, as is
    the product with sqrt(ar), and each size is stored in a float."""
    sizes = []
    for k, min_size in enumerate(spec.min_sizes):
        lo = int(np.float32(min_size))
        sizes.append((np.float32(lo), np.float32(lo)))
        if spec.max_sizes:
            side = np.sqrt(float(lo * int(np.float32(spec.max_sizes[k]))))
            sizes.append((np.float32(side), np.float32(side)))
        for ar in spec.aspect_ratios:
            if abs(float(ar) - 1.0) < _SAME_RATIO:
                continue
            root = np.sqrt(float(ar))
            sizes.append((np.float32(lo * root), np.float32(lo / root)))
    return sizes


def prior_boxes(spec: PriorBoxSpec, feature_hw: tuple[int, int],
                image_hw: tuple[int, int]) -> np.ndarray:
    """The PriorBox top, float32 1 × 2 × (H·W·P·4), as Forward_cpu writes it: centres
    (w + offset)·step in float, corners (centre ∓ size / 2) / image size in double rounded
    to float, clipped to [0, 1] in float if asked, then the variances."""
    layer_h, layer_w = feature_hw
    img_h, img_w = (spec.img_h, spec.img_w) if spec.img_h and spec.img_w else image_hw
    if spec.step_h and spec.step_w:
        step_h, step_w = spec.step_h, spec.step_w
    else:
        step_h = np.float32(img_h) / np.float32(layer_h)
        step_w = np.float32(img_w) / np.float32(layer_w)
    # float32 centres: (int + float) · float, each step rounded to float
    cx = (np.arange(layer_w, dtype=np.float32) + spec.offset) * step_w
    cy = (np.arange(layer_h, dtype=np.float32) + spec.offset) * step_h
    sizes = np.array(_box_sizes(spec), np.float32)  # P × 2
    half_w = sizes[:, 0].astype(np.float64) / 2.0
    half_h = sizes[:, 1].astype(np.float64) / 2.0
    cx64 = cx.astype(np.float64)[None, :, None]  # 1 × W × 1
    cy64 = cy.astype(np.float64)[:, None, None]  # H × 1 × 1
    shape = (layer_h, layer_w, len(sizes))
    corners = np.stack([np.broadcast_to((cx64 - half_w) / img_w, shape),
                        np.broadcast_to((cy64 - half_h) / img_h, shape),
                        np.broadcast_to((cx64 + half_w) / img_w, shape),
                        np.broadcast_to((cy64 + half_h) / img_h, shape)], axis=-1)
    boxes = corners.astype(np.float32).reshape(-1)
    if spec.clip:
        boxes = np.minimum(np.maximum(boxes, np.float32(0)), np.float32(1))
    count = boxes.size
    variances = np.tile(np.array(spec.variances, np.float32), count // len(spec.variances))
    return np.stack([boxes, variances])[None]


def _geometry(layer, in_shapes) -> tuple[tuple[int, int], tuple[int, int]]:
    for what, shape in zip(("feature map", "image"), in_shapes):
        if len(shape) != 4:
            raise ShapeError(f"PriorBox needs an N×C×H×W {what} bottom, got {list(shape)}",
                             layer=layer.name)
    return tuple(in_shapes[0][2:]), tuple(in_shapes[1][2:])


@register("PriorBox", origin=SSD)
class PriorBox(LayerConverter):
    """Anchor boxes of a feature map (see `prior_boxes`); a constant of the net."""

    min_bottoms = max_bottoms = 2
    batch_independent = True

    def infer_shapes(self, layer, in_shapes):
        feature, _ = _geometry(layer, in_shapes)
        spec = prior_box_spec(layer)
        return [(1, 2, feature[0] * feature[1] * spec.num_priors * 4)]

    def keeps_batch(self, layer, in_shapes, out_shapes, batch):
        return True  # one set of boxes for every image of the batch (axis 0 is 1)

    def _boxes(self, layer, shape_of) -> np.ndarray:
        feature, image = _geometry(layer, [shape_of(b) for b in layer.bottoms])
        return prior_boxes(prior_box_spec(layer), feature, image)

    def to_onnx(self, layer, g):
        boxes = g.const(self._boxes(layer, g.shape), layer.name + "/priors")
        g.node("Identity", [boxes], layer.tops)

    def to_torch(self, layer, ctx):
        ctx.define(layer.tops[0], ctx.buffer("priors", self._boxes(layer, ctx.shape)))
