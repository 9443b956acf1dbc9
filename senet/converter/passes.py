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

# Layers that read a data set (BVLC's, and the forks': SegNet's DenseImageData, DeepLab's
# ImageSegData, SSD's AnnotatedData); a Python layer without bottoms is one too.
_DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "AnnotatedData", "VideoData", "DenseImageData", "ImageSegData"}
_TRAINING_ONLY = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                  "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss",
                  "MultiBoxLoss", "HDF5Output", "SegAccuracy", "MatWrite"}

Shapes = tuple[int, ...] | dict[str, tuple[int, ...]] | None


def _state(net: pb.NetParameter) -> tuple[int, set[str]]:
    """Level and stages of the net's TEST state: what the file's `state` declares."""
    return net.state.level, set(net.state.stage)


def _phase_included(param: pb.LayerParameter, level: int = 0,
                    stages: frozenset[str] | set[str] = frozenset()) -> bool:
    """Caffe's NetState rules (StateMeetsRule) for a TEST net of this level and stages."""
    def meets(rule: pb.NetStateRule) -> bool:
        if rule.HasField("phase") and rule.phase != pb.TEST:
            return False
        if rule.HasField("min_level") and level < rule.min_level:
            return False
        if rule.HasField("max_level") and level > rule.max_level:
            return False
        return (all(s in stages for s in rule.stage)
                and not any(s in stages for s in rule.not_stage))
    # LayerParameter.phase is run-time state Caffe writes into snapshots (TRAIN for a training
    # snapshot), not a rule, so it is ignored here.
    if param.include:
        return any(meets(r) for r in param.include)
    if param.exclude:
        return not any(meets(r) for r in param.exclude)
    return True


def _is_data_layer(p: pb.LayerParameter) -> bool:
    return p.type in _DATA_TYPES or (p.type == "Python" and not p.bottom)


def deploy_layers(cf: CaffeFile, input_shape: Shapes
                  ) -> tuple[dict[str, tuple[int, ...]], list[RawLayer], list[str]]:
    """The deploy net of a file: its inputs (name → shape), the layers of the TEST net (Caffe's
    NetState rules, the file's `state`) that compute from them, and the inputs whose shape
    was defaulted (nothing in the file declares it).

    Data layers become inputs (of the declared or crop size, else the default shape); loss,
    accuracy and other training-only layers, and whatever reads labels, are dropped, and so
    is a data layer's input that nothing kept reads. `input_shape` replaces the shape of the
    only input (a tuple) or of inputs by name (a dict). Unlike the IR passes this one works
    on the file's raw layers, before SSA names are given, since it decides what the inputs
    are. `cf` is not changed; the kept layers are its own.
    """
    level, stages = _state(cf.net)
    inputs = _net_inputs(cf.net)
    from_data: set[str] = set()
    dropped: set[str] = set()
    kept = []
    # A training snapshot holds only TRAIN-phase data layers: they still name the image input,
    # unless the net declares its inputs (U-Net's input_dim beside a TRAIN-only HDF5Data).
    data_layers = [raw for raw in cf.layers if _is_data_layer(raw.param)]
    chosen = [raw for raw in data_layers if _phase_included(raw.param, level, stages)]
    if not chosen and not inputs and not any(raw.param.type == "Input" for raw in cf.layers):
        chosen = data_layers[:1]
    for raw in cf.layers:
        p = raw.param
        if _is_data_layer(p):
            if raw in chosen and p.top:
                data = _data_tops(p)
                for top in data:
                    inputs[top] = _data_layer_shape(p, top)
                from_data.update(data)
                dropped.update(t for t in p.top if t not in data)
        elif not _phase_included(p, level, stages):
            continue
        elif p.type == "Input":
            shapes = list(p.input_param.shape)
            for k, top in enumerate(p.top):
                inputs[top] = tuple(shapes[min(k, len(shapes) - 1)].dim) if shapes else None
        elif (p.type in _TRAINING_ONLY or p.type.endswith("Loss")
              or any(b in dropped for b in p.bottom)):
            dropped.update(p.top)  # reads labels (a Slice of the label blob): not inference
        else:
            kept.append(raw)
    if not inputs and all(raw.param.bottom for raw in kept):  # a Parameter layer needs none
        raise CaffeFormatError("the net has no input, Input layer or data layer", where=cf.path)
    read = {b for raw in kept for b in raw.param.bottom}
    for name in from_data - read:
        if len(inputs) > 1:  # a data top that only losses read (HDF5's "target_sentence")
            del inputs[name]
    shaped, defaulted = _shaped_inputs(inputs, input_shape)
    return shaped, kept, defaulted


def _net_inputs(net: pb.NetParameter) -> dict[str, tuple[int, ...] | None]:
    """Net-level `input`s with their `input_shape` or 4-D `input_dim` (None: undeclared)."""
    inputs: dict[str, tuple[int, ...] | None] = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            inputs[name] = tuple(net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            inputs[name] = tuple(net.input_dim[4 * i:4 * i + 4])
        else:
            inputs[name] = None
    return inputs


def _shaped_inputs(inputs: dict[str, tuple[int, ...] | None], given: Shapes):
    """(inputs with every shape set, names defaulted): `given` replaces declared shapes
    (keeping their rank), an undeclared one takes the default shape."""
    if given is not None and not isinstance(given, dict):
        if len(inputs) != 1:
            raise UsageError(f"--input-shape is ambiguous: the net has {len(inputs)} inputs "
                             f"({', '.join(inputs)})", hint="give each by name: "
                             + " ".join(f"--input-shape {n}=..." for n in inputs))
        given = {next(iter(inputs)): tuple(given)}
    given = given or {}
    unknown = [name for name in given if name not in inputs]
    if unknown:
        raise UsageError(f"--input-shape names {', '.join(unknown)}, not an input of the net",
                         hint="its inputs: " + ", ".join(inputs))
    shaped, defaulted = {}, []
    for name, declared in inputs.items():
        shape = given.get(name)
        if shape is not None and declared is not None and len(declared) != len(shape):
            raise UsageError(f"--input-shape has {len(shape)} dimensions, the net's input "
                             f"'{name}' has {len(declared)} ({','.join(map(str, declared))})")
        if shape is None and declared is None:
            defaulted.append(name)
        shaped[name] = tuple(shape or declared or DEFAULT_INPUT_SHAPE)
    return shaped, defaulted


def _data_tops(p: pb.LayerParameter) -> list[str]:
    """The tops of a data layer that carry data, not labels: every top not named like a
    label (Data puts images first, HDF5Data orders tops by dataset name, a Python layer
    gives what it likes). None for a layer of labels only (YOLO's DummyData "label")."""
    return [top for top in p.top if "label" not in top.lower()]


def _data_layer_shape(p: pb.LayerParameter, top: str) -> tuple[int, ...] | None:
    """The shape a data layer declares for its image top: DummyData's shape, MemoryData's
    sizes, the crop size (one image; gray for a gray ImageData), ImageData's resize; None
    when only the data set knows it."""
    if p.type == "DummyData":
        return _dummy_shape(p.dummy_data_param, list(p.top).index(top))
    if p.type == "MemoryData":
        m = p.memory_data_param
        return (m.batch_size, m.channels, m.height, m.width) if m.height else None
    if top != p.top[0]:
        return None  # the sizes below are those of the images, the first top
    image = p.image_data_param
    channels = 3 if image.is_color else 1
    crop = p.transform_param.crop_size or p.window_data_param.crop_size or image.crop_size
    if crop:
        return (1, channels, crop, crop)
    if p.type == "ImageData" and image.new_height and image.new_width:
        return (1, channels, image.new_height, image.new_width)
    return None


def _dummy_shape(d: pb.DummyDataParameter, k: int) -> tuple[int, ...] | None:
    """DummyData's shape for top k: `shape` or legacy num/channels/height/width, where one
    entry serves every top."""
    if d.shape:
        return tuple(d.shape[min(k, len(d.shape) - 1)].dim)
    legacy = [d.num, d.channels, d.height, d.width]
    if not all(legacy):
        return None
    return tuple(int(field[min(k, len(field) - 1)]) for field in legacy)


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
        if relu is None or relu.type != "ReLU" or relu.param.relu_param.negative_slope != 0:
            continue
        rewrite.replace(axpy, replace(axpy, tops=list(relu.tops), fused_relu=True))
        rewrite.drop(relu)
        rewrite.forget(axpy.tops[0])
    return rewrite.result()
