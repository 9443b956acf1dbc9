"""The bundled example: reproducible from its script, and converts to a runnable ONNX model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from senet.examples import make
from senet.converter.load import load_net
from senet.converter.to_onnx import build_graph, write_model


def test_example_is_reproducible(tmp_path):
    fresh = make.write_example(tmp_path / "tiny.caffemodel")
    assert fresh.read_bytes() == make.CAFFEMODEL.read_bytes(), (
        "senet/examples/tiny_senet.caffemodel is stale: run python -m senet.examples.make")


def test_example_converts_and_runs(tmp_path):
    net = load_net(str(make.CAFFEMODEL))
    assert {layer.type for layer in net.layers} >= {"Axpy", "BatchNorm", "Scale", "Pooling"}
    model, initializers = build_graph(net)
    write_model(tmp_path / "tiny.onnx", model, initializers)
    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    (prob,) = session.run(None, {"data": np.zeros((2, 3, 32, 32), np.float32)})
    assert prob.shape == (2, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
