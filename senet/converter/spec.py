"""The IR as plain JSON (no weights), and back: the graph spec a safetensors file carries.

A spec holds the net's inputs with shapes, every layer (type, name, SSA bottoms and tops, its
Caffe parameters as protobuf JSON, the shapes of its blobs, ``fused_relu``), every blob's shape,
the Caffe name → final SSA name map, the requested outputs and the proposal layers' run-time
settings (CaffeNet.rpn; absent in older specs: the defaults). The weights travel separately;
`net_from_spec` gives layers zero-stride placeholder blobs of the recorded shapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from google.protobuf import json_format

from senet.converter import caffe_pb2 as pb
from senet.converter.graph import CaffeNet, Layer
from senet.converter.rpn import rpn_settings
from senet.errors import ModelFileError, UsageError

FORMAT = "senet.graph"
VERSION = 1
# LayerParameter fields the spec keeps elsewhere or that mean nothing to an inference graph
# (the Caffe bottom/top names and the phase stay: in-place Eltwise and BatchNorm read them).
_STRUCTURAL = ("name", "type", "blobs", "include", "exclude", "param", "loss_weight",
               "propagate_down")


def net_to_spec(net: CaffeNet, outputs: list[str] | None = None) -> dict:
    """JSON-ready dict describing `net` (and the `outputs` to expose; None: the defaults)."""
    layers = []
    for layer in net.layers:
        param = pb.LayerParameter()
        param.CopyFrom(layer.param)
        for name in _STRUCTURAL:
            param.ClearField(name)
        layers.append({
            "name": layer.name, "type": layer.type,
            "bottoms": list(layer.bottoms), "tops": list(layer.tops),
            "param": json_format.MessageToDict(param, preserving_proto_field_name=True),
            "blob_shapes": [list(map(int, b.shape)) for b in layer.blobs],
            "fused_relu": bool(layer.fused_relu),
        })
    return {
        "format": FORMAT, "version": VERSION, "name": net.name,
        "inputs": [[name, list(shape)] for name, shape in net.inputs.items()],
        "layers": layers,
        "shapes": {blob: list(shape) for blob, shape in net.shapes.items()},
        "final_names": dict(net.final_names),
        "outputs": list(outputs) if outputs else None,
        "rpn": dataclasses.asdict(net.rpn),
    }


def net_from_spec(spec: dict, where: str = "<spec>") -> tuple[CaffeNet, list[str] | None]:
    """(net with placeholder blobs, outputs) from a dict made by `net_to_spec`.

    Raises ModelFileError for another format or version, or a malformed spec."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError("not a senet graph spec", where=where)
    if spec.get("version") != VERSION:
        raise ModelFileError(f"graph spec version {spec.get('version')} is not supported "
                               f"(this senet reads {VERSION})", where=where)
    try:
        layers = [_layer_from_spec(entry) for entry in spec["layers"]]
        net = CaffeNet(name=spec["name"],
                       inputs={name: tuple(shape) for name, shape in spec["inputs"]},
                       layers=layers,
                       shapes={blob: tuple(shape) for blob, shape in spec["shapes"].items()},
                       final_names=dict(spec["final_names"]),
                       rpn=rpn_settings(spec.get("rpn")))
        outputs = spec["outputs"]
    except (KeyError, TypeError, ValueError, json_format.ParseError, UsageError) as error:
        raise ModelFileError(f"malformed graph spec: {error}", where=where) from None
    return net, outputs


def _layer_from_spec(entry: dict) -> Layer:
    param = json_format.ParseDict(entry["param"], pb.LayerParameter())
    param.name, param.type = entry["name"], entry["type"]
    if not param.bottom and not param.top:  # a spec that did not keep the Caffe names
        param.bottom.extend(entry["bottoms"])
        param.top.extend(entry["tops"])
    blobs = [np.broadcast_to(np.float32(0), tuple(shape)) for shape in entry["blob_shapes"]]
    return Layer(name=entry["name"], type=entry["type"], param=param,
                 bottoms=list(entry["bottoms"]), tops=list(entry["tops"]), blobs=blobs,
                 fused_relu=bool(entry.get("fused_relu", False)))
