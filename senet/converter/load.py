"""Assemble a CaffeNet from a .caffemodel and/or a .prototxt, as Caffe does.

With a prototxt, the structure comes from the prototxt and the blobs from the caffemodel,
matched by layer name (layers only in the caffemodel are ignored). Without one, the net stored
in the caffemodel is used. Either way the deploy net is extracted: TEST-phase layers kept,
data / loss / accuracy layers dropped, a data layer replaced by an input of `input_shape`.
"""

from __future__ import annotations

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import CaffeFile, read_caffemodel
from senet.converter.prototxt import read_prototxt
from senet.converter.graph import CaffeNet, assign_ssa_names
from senet.converter.layers import converter_for
from senet.converter.passes import remove_splits
from senet.errors import CaffeFormatError, ShapeError, UnsupportedLayerError, UsageError

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)

_DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "AnnotatedData", "Python", "VideoData"}
_TRAINING_ONLY = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                  "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss",
                  "MultiBoxLoss", "Silence", "HDF5Output"}


def load_net(caffemodel: str | None = None, prototxt: str | None = None,
             input_shape: tuple[int, ...] | None = None, allow_unknown_fields: bool = False,
             warn=None, weights_optional: bool = False) -> CaffeNet:
    """Read, assemble, check and shape a net; every problem is a SenetError.

    With ``weights_optional`` a layer without stored blobs gets read-only zero blobs of the
    right shapes (no memory is allocated for them): for inspecting a bare prototxt.
    """
    if caffemodel is None and prototxt is None:
        raise UsageError("nothing to read: give a .caffemodel and/or a .prototxt")
    weights = read_caffemodel(caffemodel) if caffemodel else None
    structure = (read_prototxt(prototxt, allow_unknown_fields, warn) if prototxt
                 else weights)
    return assemble(structure, weights, input_shape, weights_optional)


def assemble(structure: CaffeFile, weights: CaffeFile | None,
             input_shape: tuple[int, ...] | None, weights_optional: bool = False) -> CaffeNet:
    inputs, layers, defaulted = _deploy_layers(structure, input_shape)
    _check_supported(layers)
    stored = weights.layers if weights is not None else []
    by_name = {raw.param.name: raw for raw in stored}
    pairs = []
    for raw in layers:
        source = raw if raw.blobs or weights is None else by_name.get(raw.param.name, raw)
        pairs.append((raw.param, list(zip(source.blobs, source.legacy))))
    names = list(inputs)
    ssa_inputs, ir_layers, final = assign_ssa_names(names, pairs)
    net = CaffeNet(name=structure.net.name, inputs=dict(zip(ssa_inputs, inputs.values())),
                   layers=ir_layers, final_names=final,
                   weight_file=weights.mapped if weights is not None else None)
    net.shapes.update(net.inputs)
    try:
        _infer_shapes_and_check_blobs(net, structure.path, weights.path if weights else None,
                                      weights_optional)
    except ShapeError as error:
        if not defaulted or error.hint:
            raise
        shape = ",".join(map(str, inputs[defaulted[0]]))
        raise ShapeError(error.what, where=error.where, layer=error.layer,
                         hint=f"the input '{defaulted[0]}' of the stored data layer was given "
                              f"the default shape {shape}; pass --input-shape N,C,H,W") from None
    return remove_splits(net)


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


def _deploy_layers(cf: CaffeFile, input_shape):
    """Inputs (name → shape) and the layers of the TEST net that compute from them."""
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
    if not inputs:
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


def _check_supported(layers) -> None:
    missing = [f"{raw.param.name} ({raw.param.type})" for raw in layers
               if converter_for(raw.param.type) is None]
    if missing:
        raise UnsupportedLayerError("unsupported Caffe layers: " + ", ".join(missing))


def _infer_shapes_and_check_blobs(net: CaffeNet, structure_path: str, weights_path,
                                  weights_optional: bool) -> None:
    for layer in net.layers:
        conv = converter_for(layer.type)
        conv.check_arity(layer)
        in_shapes = [net.shapes[b] for b in layer.bottoms]
        expected = conv.blob_shapes(layer, in_shapes)
        if weights_optional and not layer.blobs:
            layer.blobs = [np.broadcast_to(np.float32(0), tuple(int(d) for d in s))
                           for s in expected]
        else:
            layer.blobs = _matched_blobs(layer, expected, weights_path or structure_path)
        outs = conv.infer_shapes(layer, in_shapes)
        for top, shape in zip(layer.tops, outs):
            net.shapes[top] = tuple(int(d) for d in shape)


def _matched_blobs(layer, expected, where) -> list[np.ndarray]:
    stored = layer.blobs  # (array, was_legacy) pairs from the file
    if len(stored) != len(expected):
        if not stored:
            raise ShapeError(f"has no weights in the caffemodel (expects {len(expected)} blobs)",
                             where=where, layer=layer.name,
                             hint="prototxt and caffemodel are from different nets?")
        raise ShapeError(f"expects {len(expected)} blobs, the caffemodel has {len(stored)}",
                         where=where, layer=layer.name)
    out = []
    for k, ((array, legacy), want) in enumerate(zip(stored, expected)):
        want = tuple(int(d) for d in want)
        scalar = want == () and array.size == 1  # writers differ on [] vs [1] for a scalar
        if (tuple(array.shape) != want and not scalar
                and not (legacy and _legacy_equal(array.shape, want))):
            raise ShapeError(f"blob {k} has shape {list(array.shape)}, the net needs {list(want)}",
                             where=where, layer=layer.name)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        out.append(array.reshape(want))
    return out


def _legacy_equal(stored, want) -> bool:
    """Caffe's legacy comparison: a ≤4-D shape padded with leading ones equals the 4-D one."""
    if len(want) > 4:
        return False
    return tuple(stored) == (1,) * (4 - len(want)) + tuple(want)
