"""Passes over a net: each returns a new one and leaves what it is given unchanged.

`deploy_layers` runs first, on the file's layers (it decides the inputs); the others are
IR → IR, and each after `remove_splits` is optional and keeps the net's outputs equal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import CaffeFile, RawLayer
from senet.converter.graph import CaffeNet, Layer
from senet.converter.semantics import (
    batchnorm_affine, batchnorm_uses_batch_statistics, canonical_axis, fold_affine_into_conv,
    prototxt_float,
)
from senet.errors import CaffeFormatError, UsageError

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)

_DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "AnnotatedData", "Python", "VideoData"}
_TRAINING_ONLY = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                  "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss",
                  "MultiBoxLoss", "HDF5Output"}


def _phase_included(param: pb.LayerParameter) -> bool:
    """Caffe's NetState rules for a TEST net (level 0, no stages)."""
    def meets(rule: pb.NetStateRule) -> bool:
        if rule.HasField("phase") and rule.phase != pb.TEST:
            return False
        if rule.HasField("min_level") and 0 < rule.min_level:
            return False
        if rule.HasField("max_level") and 0 > rule.max_level:
            return False
        return not rule.stage  # a required stage is never present
    # LayerParameter.phase is run-time state Caffe writes into snapshots (TRAIN for a training
    # snapshot), not a rule, so it is ignored here.
    if param.include:
        return any(meets(r) for r in param.include)
    if param.exclude:
        return not any(meets(r) for r in param.exclude)
    return True


def deploy_layers(cf: CaffeFile, input_shape: tuple[int, ...] | None
                  ) -> tuple[dict[str, tuple[int, ...]], list[RawLayer], list[str]]:
    """The deploy net of a file: its inputs (name → shape), the layers of the TEST net (Caffe's
    NetState rules) that compute from them, and the inputs whose shape was defaulted.

    Data layers become inputs (of `input_shape`, the crop size, or the default shape); loss,
    accuracy and other training-only layers, and whatever reads labels, are dropped. Unlike
    the IR passes this one works on the file's raw layers, before SSA names are given, since
    it decides what the inputs are. `cf` is not changed; the kept layers are its own.
    """
    inputs: dict[str, tuple[int, ...]] = {}
    net = cf.net
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            shape = tuple(net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            shape = tuple(net.input_dim[4 * i:4 * i + 4])
        else:
            shape = input_shape or DEFAULT_INPUT_SHAPE
        inputs[name] = shape
    dropped_blobs: set[str] = set()
    kept = []
    defaulted: list[str] = []
    # A training snapshot holds only TRAIN-phase data layers: they still name the image input.
    data_layers = [raw for raw in cf.layers if raw.param.type in _DATA_TYPES]
    chosen_data = [raw for raw in data_layers if _phase_included(raw.param)] or data_layers[:1]
    for raw in cf.layers:
        p = raw.param
        if p.type in _DATA_TYPES:
            if raw in chosen_data and p.top:
                image = _image_top(p)
                inputs[image] = _data_layer_shape(p, input_shape)
                if input_shape is None and not p.transform_param.crop_size:
                    defaulted.append(image)
                dropped_blobs.update(t for t in p.top if t != image)
            continue
        if not _phase_included(p):
            continue
        if p.type == "Input":
            shapes = list(p.input_param.shape)
            for k, top in enumerate(p.top):
                if shapes:
                    inputs[top] = tuple(shapes[min(k, len(shapes) - 1)].dim)
                else:
                    inputs[top] = tuple(input_shape or DEFAULT_INPUT_SHAPE)
            continue
        if p.type in _TRAINING_ONLY or p.type.endswith("Loss"):
            dropped_blobs.update(p.top)
            continue
        if any(b in dropped_blobs for b in p.bottom):
            # Consumes labels (e.g. a Slice of the label blob): not part of inference.
            dropped_blobs.update(p.top)
            continue
        kept.append(raw)
    if not inputs and all(raw.param.bottom for raw in kept):  # a Parameter layer needs none
        raise CaffeFormatError("the net has no input, Input layer or data layer", where=cf.path)
    if input_shape is not None:
        if len(inputs) != 1:
            raise UsageError(f"--input-shape is ambiguous: the net has {len(inputs)} inputs "
                             f"({', '.join(inputs)})")
        name = next(iter(inputs))
        declared = inputs[name]
        if name not in defaulted and len(declared) != len(input_shape):
            raise UsageError(f"--input-shape has {len(input_shape)} dimensions, the net's input "
                             f"'{name}' has {len(declared)} ({','.join(map(str, declared))})")
        inputs[name] = tuple(input_shape)
    return inputs, kept, defaulted


def _image_top(p: pb.LayerParameter) -> str:
    """The top of a data layer that carries images: Data/ImageData put it first, HDF5Data
    orders tops by dataset name, so a top named like a label is skipped."""
    for top in p.top:
        if "label" not in top.lower():
            return top
    return p.top[0]


def _data_layer_shape(p: pb.LayerParameter, input_shape):
    if input_shape is not None:
        return tuple(input_shape)
    crop = p.transform_param.crop_size
    if crop:
        return (1, 3, crop, crop)
    return DEFAULT_INPUT_SHAPE


def remove_splits(net: CaffeNet) -> CaffeNet:
    """Drop Split layers (Caffe inserts them when one blob feeds several layers): every use of a
    split top reads the split's bottom instead, so default outputs are real blobs, not copies.
    Returns a new net; `net` is unchanged."""
    alias: dict[str, str] = {}
    kept = []
    for layer in net.layers:
        bottoms = [alias.get(b, b) for b in layer.bottoms]
        if layer.type == "Split":
            for top in layer.tops:
                alias[top] = bottoms[0]
            continue
        kept.append(replace(layer, bottoms=bottoms))
    return replace(net, layers=kept,
                   shapes={b: s for b, s in net.shapes.items() if b not in alias},
                   final_names={caffe: alias.get(ssa, ssa)
                                for caffe, ssa in net.final_names.items()})


class _Rewrite:
    """The edits a fusing pass makes to a net: layers dropped or replaced and blobs forgotten,
    collected while the pass reads `net` and applied to a copy by `result()`."""

    def __init__(self, net: CaffeNet, outputs: list[str] | None):
        self.net = net
        # SSA names the pass must keep computing: the outputs asked for, or the default ones.
        self._keep = {ssa for _, ssa in net.output_pairs(outputs)}
        self._uses = net.consumers()
        self._index = {id(layer): i for i, layer in enumerate(net.layers)}
        self._dropped: set[int] = set()
        self._replaced: dict[int, Layer] = {}
        self._gone: set[str] = set()

    def sole_consumer(self, blob: str) -> Layer | None:
        """The one layer reading `blob`, if exactly one does and the blob is not kept."""
        readers = self._uses.get(blob, [])
        return readers[0] if len(readers) == 1 and blob not in self._keep else None

    def drop(self, layer: Layer) -> None:
        self._dropped.add(self._index[id(layer)])

    def replace(self, layer: Layer, new: Layer) -> None:
        self._replaced[self._index[id(layer)]] = new

    def forget(self, blob: str) -> None:
        """The blob is no longer computed: its shape and any Caffe name for it go."""
        self._gone.add(blob)

    def result(self) -> CaffeNet:
        """A copy of the net with the edits applied."""
        net, gone = self.net, self._gone
        layers = [self._replaced.get(i, layer) for i, layer in enumerate(net.layers)
                  if i not in self._dropped]
        return replace(net, layers=layers,
                       shapes={b: s for b, s in net.shapes.items() if b not in gone},
                       final_names={c: s for c, s in net.final_names.items() if s not in gone})


def fold_batchnorm(net: CaffeNet, outputs: list[str] | None = None,
                   dtype=np.float32) -> CaffeNet:
    """Convolution → BatchNorm [→ Scale] chains become one Convolution with a bias.

    Folded only where the convolution's output feeds that BatchNorm alone (and the
    BatchNorm's that per-channel Scale alone) and no blob of the chain but its last is in
    `outputs` (default: the net's default outputs), so every output keeps its value. The
    arithmetic is float64; the new weights are stored as `dtype`. The chain's last top names
    the result. Returns a new net; `net` is unchanged.
    """
    rewrite = _Rewrite(net, outputs)
    for conv in net.layers:
        if conv.type != "Convolution" or len(conv.bottoms) != 1 or len(conv.tops) != 1:
            continue
        if _channel_axis(net, conv) != 1:  # BatchNorm's channels are axis 1, not the conv's
            continue
        bn = rewrite.sole_consumer(conv.tops[0])
        if (bn is None or bn.type != "BatchNorm"
                or batchnorm_uses_batch_statistics(bn.param)):  # no constant affine map
            continue
        channels = net.shapes[conv.tops[0]][1]
        chain = [bn]
        scale = rewrite.sole_consumer(bn.tops[0])
        if scale is not None and _is_channel_scale(net, scale, channels):
            chain.append(scale)
        a, b = batchnorm_affine(*bn.blobs[:3], prototxt_float(bn.param.batch_norm_param.eps))
        if len(chain) == 2:
            gamma = np.asarray(scale.blobs[0], np.float64).reshape(-1)
            beta = (np.asarray(scale.blobs[1], np.float64).reshape(-1)
                    if scale.param.scale_param.bias_term else 0.0)
            a, b = gamma * a, gamma * b + beta
        p = conv.param.convolution_param
        weight, bias = fold_affine_into_conv(conv.blobs[0], conv.blobs[1] if p.bias_term
                                             else None, a, b)
        param = pb.LayerParameter()
        param.CopyFrom(conv.param)
        param.convolution_param.bias_term = True
        rewrite.replace(conv, replace(conv, param=param, tops=[chain[-1].tops[0]],
                                      blobs=[weight.astype(dtype), bias.astype(dtype)]))
        for layer in chain:
            rewrite.drop(layer)
        for blob in [conv.tops[0]] + [layer.tops[0] for layer in chain[:-1]]:
            rewrite.forget(blob)
    return rewrite.result()


def _channel_axis(net: CaffeNet, conv: Layer) -> int:
    ndim = len(net.shapes[conv.bottoms[0]])
    return canonical_axis(conv.param.convolution_param.axis, ndim, conv.name)


def _is_channel_scale(net: CaffeNet, layer: Layer, channels: int) -> bool:
    """A Scale with a learned factor of one value per channel (its operand starts at axis 1
    and has C elements)."""
    if layer.type != "Scale" or len(layer.bottoms) != 1:
        return False
    ndim = len(net.shapes[layer.bottoms[0]])
    axis = layer.param.scale_param.axis
    return (axis + ndim if axis < 0 else axis) == 1 and layer.blobs[0].size == channels


def fuse_axpy_relu(net: CaffeNet, outputs: list[str] | None = None) -> CaffeNet:
    """An Axpy whose output feeds only a plain ReLU (negative_slope 0, in place or not)
    becomes one Axpy with ``fused_relu`` set, writing the ReLU's top. The Axpy's own output
    must not be in `outputs` (default: the net's default outputs). Returns a new net."""
    rewrite = _Rewrite(net, outputs)
    for axpy in net.layers:
        if axpy.type != "Axpy" or axpy.fused_relu:
            continue
        relu = rewrite.sole_consumer(axpy.tops[0])
        if (relu is None or relu.type != "ReLU" or relu.param.relu_param.negative_slope != 0
                or relu.param.relu_param.relu6):
            continue
        rewrite.replace(axpy, replace(axpy, tops=list(relu.tops), fused_relu=True))
        rewrite.drop(relu)
        rewrite.forget(axpy.tops[0])
    return rewrite.result()
