"""Caffe's deploy net and blob shapes of a net as committed, without running the heavy layers.

`deploy_net` turns a train_val / test net (data layers, losses, accuracy) into the net Caffe
runs for inference: the TEST-phase layers of the file's NetState, each data layer's data tops
as inputs, training-only layers and whatever reads labels dropped. `blob_shapes` then gives
every blob's shape: convolution, deconvolution, inner product and SSD's PriorBox by their
size rules, every other layer by running its reference forward on zeros (cheap for those),
so a net can be shaped at its full declared size. `parameter_count` counts the learned values.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .caffe_forward import (V1_TYPE_NAMES, _run_layer, is_active, layer_type, net_layers,
                            param_shapes)
from .forward_spatial import _geometry, conv_output_size
from .forward_ssd import prior_box_count
from .prototxt_text import get, get_all

__all__ = ["deploy_net", "blob_shapes", "parameter_count", "DATA_TYPES"]

Message = dict[str, list[Any]]

# Layers that read a data set: BVLC's and the forks' (SegNet, DeepLab V1 and V2, SSD).
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData",
              "AnnotatedData", "VideoData", "DenseImageData", "ImageSegData", "IMAGE_SEG_DATA"}
# Layers that only score or store results: never part of inference.
SINK_TYPES = {"Accuracy", "Silence", "HDF5Output", "SegAccuracy", "SEG_ACCURACY", "MatWrite",
              "MAT_WRITE"}


def _state(net: Message) -> tuple[int, frozenset[str]]:
    state = get(net, "state", {}) or {}
    return int(get(state, "level", 0)), frozenset(get_all(state, "stage"))


def _is_data(layer: Message) -> bool:
    kind = layer_type(layer)
    return kind in DATA_TYPES or (kind == "Python" and not get_all(layer, "bottom"))


def _is_training_only(layer: Message) -> bool:
    kind = layer_type(layer)
    return kind in SINK_TYPES or kind.endswith("Loss") or kind.endswith("_LOSS")


def deploy_net(net: Message, input_shapes: dict[str, tuple[int, ...]]) -> Message:
    """The inference net of `net`: one Input layer holding every input (net-level inputs,
    Input layers and the data tops, not named like labels, that a kept layer reads; each
    of the shape `input_shapes` gives it, else the shape the file declares), then the
    TEST-phase compute layers. KeyError when an input has no shape either way."""
    level, stages = _state(net)
    declared = _declared_inputs(net)
    inputs: list[str] = list(declared)
    dropped: set[str] = set()
    from_data: set[str] = set()
    kept: list[Message] = []
    for layer in net_layers(net):
        active = is_active(layer, "TEST", level, stages)
        tops = get_all(layer, "top")
        if _is_data(layer):
            if active:
                data = [t for t in tops if "label" not in t.lower()]
                inputs += [t for t in data if t not in inputs]
                if layer_type(layer) == "DummyData":  # the one data layer declaring its shape
                    dummy = get_all(_sub(layer, "dummy_data_param"), "shape")
                    for k, top in enumerate(tops):
                        if top in data and dummy:
                            declared[top] = tuple(get_all(dummy[min(k, len(dummy) - 1)], "dim"))
                from_data.update(data)
                dropped.update(t for t in tops if t not in data)
        elif not active:
            continue
        elif layer_type(layer) == "Input":
            for k, top in enumerate(tops):
                shapes = get_all(_sub(layer, "input_param"), "shape")
                if shapes:
                    declared[top] = tuple(get_all(shapes[min(k, len(shapes) - 1)], "dim"))
                inputs.append(top)
        elif _is_training_only(layer) or any(b in dropped for b in get_all(layer, "bottom")):
            dropped.update(tops)
        else:
            kept.append(_fork_v1_type(layer) if get_all(net, "layers") else layer)
    read = {b for layer in kept for b in get_all(layer, "bottom")}
    # A data top only losses read (HDF5's "target_sentence") is no input of inference.
    inputs = [n for n in inputs if n in read or n not in from_data] or inputs
    shapes = {name: tuple(input_shapes.get(name) or declared[name]) for name in inputs}
    feed = {"name": ["deploy_inputs"], "type": ["Input"], "top": list(shapes),
            "input_param": [{"shape": [{"dim": list(s)} for s in shapes.values()]}]}
    key = "layers" if get_all(net, "layers") else "layer"
    return {"name": get_all(net, "name"), key: [feed] + kept}


def _fork_v1_type(layer: Message) -> Message:
    """A V1 layer whose enum type only a fork has (Synopsys' CROP) under the type string the
    fork's V1 upgrade gives it: the words capitalised and joined (CROP -> Crop)."""
    raw = get(layer, "type", "")
    if not isinstance(raw, str) or raw != raw.upper() or raw in V1_TYPE_NAMES:
        return layer
    return {**layer, "type": ["".join(w.capitalize() for w in raw.split("_"))]}


def _sub(layer: Message, key: str) -> Message:
    return get(layer, key, {}) or {}


def _declared_inputs(net: Message) -> dict[str, tuple[int, ...]]:
    """Net-level inputs with their input_shape or 4-D input_dim."""
    names, shapes, dims = get_all(net, "input"), get_all(net, "input_shape"), \
        get_all(net, "input_dim")
    out = {}
    for i, name in enumerate(names):
        if i < len(shapes):
            out[name] = tuple(get_all(shapes[i], "dim"))
        elif len(dims) >= 4 * (i + 1):
            out[name] = tuple(dims[4 * i:4 * i + 4])
    return out


def input_shapes_of(deploy: Message) -> dict[str, tuple[int, ...]]:
    """The inputs of a net made by `deploy_net`, by name."""
    feed = net_layers(deploy)[0]
    shapes = get_all(_sub(feed, "input_param"), "shape")
    return {top: tuple(get_all(s, "dim")) for top, s in zip(get_all(feed, "top"), shapes)}


def blob_shapes(deploy: Message) -> dict[str, tuple[int, ...]]:
    """Every blob's shape in a deploy net (a blob written in place: its final shape)."""
    inputs = input_shapes_of(deploy)
    blobs: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in net_layers(deploy):
        tops = get_all(layer, "top")
        in_shapes = [shapes[b] for b in get_all(layer, "bottom")]
        if layer_type(layer) in _SIZE_RULES:  # too heavy to run on zeros at full size
            out = _SIZE_RULES[layer_type(layer)](layer, in_shapes)
        else:
            arrays = _run_layer(layer, blobs, {n: np.zeros(s, np.float32)
                                               for n, s in inputs.items()},
                                _zero_blobs, np.float32)
            out = [a.shape for a in arrays]
        for top, shape in zip(tops, out):
            shapes[top] = tuple(int(d) for d in shape)
            # Layers run on zeros need real bottoms; a lazily broadcast zero costs nothing.
            blobs[top] = np.broadcast_to(np.float32(0), shapes[top])
    return shapes


def parameter_count(deploy: Message) -> int:
    """Learned values of every layer of a deploy net, by Caffe's blob shapes."""
    shapes = blob_shapes(deploy)
    total = 0
    for layer in net_layers(deploy):
        bottoms = [np.broadcast_to(np.float32(0), shapes[b]) for b in get_all(layer, "bottom")]
        total += sum(math.prod(s) for s in param_shapes(layer, bottoms))
    return total


def _zero_blobs(layer, bottoms, expected):
    return [np.zeros(s, np.float32) for s in expected]


def _conv_sizes(layer: Message, in_shapes, transposed: bool):
    """Convolution / Deconvolution tops: batch axes kept, num_output channels, and each
    spatial axis by Caffe's size rule (for deconvolution the rule run backwards)."""
    shape = in_shapes[0]
    g = _geometry(layer, shape)
    sizes = []
    for size, k, s, p, d, after in zip(shape[g["axis"] + 1:], g["kernel"], g["stride"],
                                       g["pad"], g["dilation"], g["pad_after"]):
        sizes.append(s * (size - 1) + d * (k - 1) + 1 - 2 * p if transposed
                     else conv_output_size(size, k, s, p, d, after))
    top = tuple(shape[:g["axis"]]) + (g["num_output"],) + tuple(sizes)
    return [top] * len(in_shapes)


def _inner_product_size(layer: Message, in_shapes):
    p = _sub(layer, "inner_product_param")
    shape = in_shapes[0]
    axis = int(get(p, "axis", 1)) % len(shape)
    return [tuple(shape[:axis]) + (int(get(p, "num_output")),)]


def _roi_pooling_size(layer: Message, in_shapes):
    """ROIPooling / PSROIPooling tops: one item per roi (bottom[1]'s axis 0)."""
    rois = in_shapes[1][0]
    if layer_type(layer) == "ROIPooling":
        p = _sub(layer, "roi_pooling_param")
        return [(rois, in_shapes[0][1], int(get(p, "pooled_h", 0)), int(get(p, "pooled_w", 0)))]
    p = _sub(layer, "psroi_pooling_param")
    group = int(get(p, "group_size", 0))
    return [(rois, int(get(p, "output_dim", 0)), group, group)]


def _prior_box_size(layer: Message, in_shapes):
    """PriorBox: 1 × 2 × (H·W·priors·4) of the feature map (bottom 0)."""
    h, w = in_shapes[0][2:]
    return [(1, 2, h * w * prior_box_count(_sub(layer, "prior_box_param")) * 4)]


_SIZE_RULES = {
    "PriorBox": _prior_box_size,
    "Convolution": lambda layer, shapes: _conv_sizes(layer, shapes, False),
    "Deconvolution": lambda layer, shapes: _conv_sizes(layer, shapes, True),
    "InnerProduct": _inner_product_size,
    # hundreds of proposals pooled in Python loops: too slow to run on zeros
    "ROIPooling": _roi_pooling_size,
    "PSROIPooling": _roi_pooling_size,
    # Caffe's setup shape; run on zeros it would give the forward's no-detection rows instead
    "DetectionOutput": lambda layer, shapes: [(1, 1, 1, 7)],
}
