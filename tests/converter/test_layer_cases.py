"""Every per-layer case computed by a real BVLC Caffe build (../shared/fixtures/real_caffe/
layer_cases) through senet.convert, then onnxruntime and torch.export.load: Caffe's own float32
outputs, within 1e-5 of the output's largest magnitude plus a few float32 ulps of each value.

Every case must match in both emitters: there is no list of known failures.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import senet
from tests.conftest import FIXTURES, require_shared

CASES_DIR = FIXTURES / "real_caffe" / "layer_cases"
INDEX = CASES_DIR / "index.json"
CASES = ([f"{c['type']}/{c['case']}" for c in json.loads(INDEX.read_text())["cases"]]
         if INDEX.exists() else [])
RELATIVE = 1e-5
ULPS = 4


def load_case(case: str):
    folder = require_shared("real_caffe", "layer_cases", case.split("/")[0])
    name = case.split("/")[1]
    data = np.load(folder / f"{name}.npz")
    inputs = {k[len("input__"):]: data[k] for k in data.files if k.startswith("input__")}
    outputs = {k[len("output__"):]: data[k] for k in data.files if k.startswith("output__")}
    return folder / f"{name}.caffemodel", folder / f"{name}.prototxt", inputs, outputs


def assert_caffe_equal(name: str, ours: np.ndarray, caffe: np.ndarray) -> None:
    assert ours.shape == caffe.shape, (name, ours.shape, caffe.shape)
    ours = np.asarray(ours, np.float32)
    special = ~np.isfinite(caffe) | (np.abs(caffe) == np.finfo(np.float32).max)
    np.testing.assert_array_equal(ours[special], caffe[special], err_msg=name)
    ours, caffe = ours[~special].astype(np.float64), caffe[~special].astype(np.float64)
    if not caffe.size:
        return
    bound = (RELATIVE * np.abs(caffe).max()
             + ULPS * np.spacing(np.abs(caffe).astype(np.float32)).astype(np.float64))
    worst = np.abs(ours - caffe) - bound
    k = int(np.argmax(worst))
    assert worst[k] <= 0, (f"{name}: element {k} is {ours[k]!r}, Caffe {caffe[k]!r} "
                           f"(max |ref| {np.abs(caffe).max():.3g})")


def params():
    return [pytest.param(case, id=case) for case in CASES] or \
        [pytest.param("(../shared absent)", id="shared-absent")]


@pytest.mark.parametrize("case", params())
def test_onnx_equals_real_caffe(tmp_path, case):
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt,
                         outputs=list(outputs))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(names, feed)):
        assert_caffe_equal(name, value, outputs[name])
    assert sorted(names) == sorted(outputs)


@pytest.mark.parametrize("case", params())
def test_torch_equals_real_caffe(tmp_path, case):
    torch = pytest.importorskip("torch")
    import senet.kernels  # noqa: F401  (a bare .pt2 needs the senet ops)
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=prototxt,
                         outputs=list(outputs))
    module = torch.export.load(str(path)).module()
    net = senet.load_caffe(model, prototxt)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[name]) for name in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    assert len(values) == len(outputs)
    for name, value in zip(outputs, values):
        assert_caffe_equal(name, value.numpy(), outputs[name])
