"""Assemble a CaffeNet from a .caffemodel and/or a .prototxt, as Caffe does.

With a prototxt, the structure comes from the prototxt and the blobs from the caffemodel,
matched by layer name (layers only in the caffemodel are ignored). Without one, the net stored
in the caffemodel is used. Either way the deploy net is extracted: TEST-phase layers kept,
data / loss / accuracy layers dropped, a data layer replaced by an input of `input_shape`.
"""

from __future__ import annotations

import numpy as np

from senet.converter.caffe_reader import CaffeFile, read_caffemodel
from senet.converter.graph import CaffeNet, assign_ssa_names
from senet.converter.layers import converter_of, python_layer_key
from senet.converter.passes import DEFAULT_INPUT_SHAPE, Shapes, deploy_layers, remove_splits
from senet.converter.prototxt import read_prototxt
from senet.converter.rpn import rpn_settings
from senet.errors import ShapeError, UnsupportedLayerError, UsageError


def load_net(caffemodel: str | None = None, prototxt: str | None = None,
             input_shape: Shapes = None, allow_unknown_fields: bool = False,
             warn=None, weights_optional: bool = False, rpn=None) -> CaffeNet:
    """Read, assemble, check and shape a net; every problem is a SenetError.

    `input_shape` is the shape of the net's only input, or a dict of shapes by input name;
    it replaces what the file declares. With ``weights_optional`` a layer without stored
    blobs gets read-only zero blobs of the right shapes (no memory is allocated for them):
    for inspecting a bare prototxt. `warn(message)` hears of inputs given the default shape.
    `rpn`: the run-time settings of py-faster-rcnn proposal layers (rpn.rpn_settings: a
    dict, a "name=value,..." text or None for py-faster-rcnn's cfg.TEST defaults).
    """
    if caffemodel is None and prototxt is None:
        raise UsageError("nothing to read: give a .caffemodel and/or a .prototxt")
    weights = read_caffemodel(caffemodel) if caffemodel else None
    structure = (read_prototxt(prototxt, allow_unknown_fields, warn) if prototxt
                 else weights)
    net = assemble(structure, weights, input_shape, weights_optional, warn, rpn)
    if structure is weights and warn:
        _warn_unknown_fields(weights, {layer.name for layer in net.layers}, warn)
    return net


def _warn_unknown_fields(weights: CaffeFile, used: set[str], warn, shown: int = 8) -> None:
    """The net stored in a caffemodel carries fields (of a fork) our schema lacks, in the net
    or in layers the deploy net keeps: it is used, without them, because no prototxt was
    given."""
    names = [f"layer '{layer}': {name}" if layer else f"net: {name}"
             for layer, name in weights.unknown_fields if layer is None or layer in used]
    if not names:
        return
    more = f"; and {len(names) - shown} more" if len(names) > shown else ""
    warn(f"{weights.path}: the net stored in the caffemodel has fields senet's schema lacks "
         f"(a Caffe fork's), read without them: " + "; ".join(names[:shown]) + more +
         " (give the fork's prototxt with --prototxt to use it instead)")


def assemble(structure: CaffeFile, weights: CaffeFile | None, input_shape: Shapes,
             weights_optional: bool = False, warn=None, rpn=None) -> CaffeNet:
    settings = rpn_settings(rpn)
    inputs, layers, defaulted = deploy_layers(structure, input_shape)
    _check_supported(layers)
    if defaulted and warn:
        warn(f"{structure.path}: nothing declares the shape of input(s) "
             + ", ".join(f"'{n}'" for n in defaulted) + "; using "
             + ",".join(map(str, DEFAULT_INPUT_SHAPE)) + " (pass --input-shape NAME=N,C,H,W)")
    stored = weights.layers if weights is not None else []
    by_name = {raw.param.name: raw for raw in stored}
    sources = [raw if raw.blobs or weights is None else by_name.get(raw.param.name, raw)
               for raw in layers]
    ssa_inputs, ir_layers, final = assign_ssa_names(
        list(inputs), [(raw.param, source.blobs) for raw, source in zip(layers, sources)])
    net = CaffeNet(name=structure.net.name, inputs=dict(zip(ssa_inputs, inputs.values())),
                   layers=ir_layers, final_names=final,
                   weight_file=weights.mapped if weights is not None else None, rpn=settings)
    net.shapes.update(net.inputs)
    try:
        _infer_shapes_and_check_blobs(net, [source.legacy for source in sources],
                                      structure.path, weights.path if weights else None,
                                      weights_optional)
    except ShapeError as error:
        if not defaulted or error.hint:
            raise
        name = defaulted[0]
        shape = ",".join(map(str, inputs[name]))
        raise ShapeError(error.what, where=error.where, layer=error.layer,
                         hint=f"nothing declares the shape of the input '{name}', it was given "
                              f"the default {shape}; pass --input-shape {name}=N,C,H,W"
                         ) from None
    return remove_splits(net)


def _check_supported(layers) -> None:
    """Every layer without a converter, named at once (a Python layer by module.layer)."""
    missing = [raw.param for raw in layers if converter_of(raw.param) is None]
    if missing:
        types = list(dict.fromkeys(p.type for p in missing))
        raise UnsupportedLayerError(
            "unsupported Caffe layers: " + ", ".join(f"{p.name} ({_described_type(p)})"
                                                     for p in missing),
            hint="a converter for a type is one class registered with "
                 + ", ".join(f'@senet.converter.register("{t}")' for t in types[:3])
                 + ("; a Python layer's converter reads layer.param.python_param"
                    if "Python" in types else ""))


def _described_type(p) -> str:
    return python_layer_key(p) if p.type == "Python" else p.type


def _infer_shapes_and_check_blobs(net: CaffeNet, legacy: list[list[bool]],
                                  structure_path: str, weights_path,
                                  weights_optional: bool) -> None:
    """Shape every blob and replace each layer's stored blobs by float32 arrays of the
    shapes the net needs; `legacy[i][k]` says blob k of layer i was stored 4-D legacy."""
    for layer, stored_legacy in zip(net.layers, legacy):
        conv = converter_of(layer.param)
        conv.check_arity(layer)
        in_shapes = [net.shapes[b] for b in layer.bottoms]
        expected = conv.blob_shapes(layer, in_shapes)
        if weights_optional and not layer.blobs:
            layer.blobs = [np.broadcast_to(np.float32(0), tuple(int(d) for d in s))
                           for s in expected]
        else:
            layer.blobs = _matched_blobs(layer, stored_legacy, expected,
                                         weights_path or structure_path)
        outs = conv.infer_shapes(layer, in_shapes)
        for top, shape in zip(layer.tops, outs):
            net.shapes[top] = tuple(int(d) for d in shape)


def _matched_blobs(layer, legacy: list[bool], expected, where) -> list[np.ndarray]:
    stored = layer.blobs
    if len(stored) != len(expected):
        if not stored:
            raise ShapeError(f"has no weights in the caffemodel (expects {len(expected)} blobs)",
                             where=where, layer=layer.name,
                             hint="prototxt and caffemodel are from different nets?")
        raise ShapeError(f"expects {len(expected)} blobs, the caffemodel has {len(stored)}",
                         where=where, layer=layer.name)
    out = []
    for k, (array, was_legacy, want) in enumerate(zip(stored, legacy, expected)):
        want = tuple(int(d) for d in want)
        scalar = want == () and array.size == 1  # writers differ on [] vs [1] for a scalar
        if (tuple(array.shape) != want and not scalar
                and not (was_legacy and _legacy_equal(array.shape, want))):
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
