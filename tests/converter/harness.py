"""Convert a Caffe net with senet, run it in onnxruntime, and run the independent NumPy
reference (tests/reference) on the same weights and inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import read_prototxt
from senet.converter.load import load_net
from senet.converter.to_onnx import build_graph, write_model
from tests.reference.caffe_forward import forward
from tests.reference.prototxt_text import parse_prototxt


def write_net(tmp: Path, prototxt: str, weights: dict[str, list[np.ndarray]],
              name: str = "net") -> tuple[Path, Path]:
    """The prototxt text and a caffemodel of it with `weights`, written by senet's writer."""
    proto_path = tmp / f"{name}.prototxt"
    proto_path.write_text(prototxt)
    structure = read_prototxt(proto_path)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    model_path = tmp / f"{name}.caffemodel"
    write_caffemodel(model_path, net, weights)
    return proto_path, model_path


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.astype(np.float32)
                                              for k, v in inputs.items()})))


def convert(tmp: Path, caffemodel: Path, prototxt: Path | None = None,
            outputs: list[str] | None = None, input_shape=None, name: str = "net") -> Path:
    net = load_net(str(caffemodel), str(prototxt) if prototxt else None, input_shape)
    model, initializers = build_graph(net, outputs)
    out = tmp / f"{name}.onnx"
    write_model(out, model, initializers, source=net.weight_file)
    return out


def reference(prototxt: str, weights, inputs, dtype=np.float64) -> dict[str, np.ndarray]:
    return forward(parse_prototxt(prototxt), weights, inputs, dtype)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |Δ| / max |ref| (the issue's measure)."""
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / scale)


def check_net(tmp: Path, prototxt: str, weights, inputs, outputs: list[str],
              tol: float = 1e-5) -> dict[str, np.ndarray]:
    """Convert, run, compare every output with the float64 reference; returns ours."""
    proto_path, model_path = write_net(tmp, prototxt, weights)
    onnx_path = convert(tmp, model_path, proto_path, outputs)
    ours = run_onnx(onnx_path, inputs)
    ref = reference(prototxt, weights, inputs)
    for name in outputs:
        assert ours[name].shape == ref[name].shape, (name, ours[name].shape, ref[name].shape)
        err = rel_error(ours[name], ref[name])
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"
    return ours
