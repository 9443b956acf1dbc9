"""senet's public API (senet/api.py): what it returns, what it refuses, and that its results
equal the independent float64 reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import senet
from senet.converter.graph import CaffeNet
from senet.errors import SenetError, UsageError
from tests.converter.harness import reference
from tests.reference.caffemodel_wire import read_caffemodel
from tests.test_cli import TINY, TINY_PROTOTXT


def tiny_reference(x: np.ndarray) -> np.ndarray:
    text = TINY_PROTOTXT.read_text().replace("dim: 1 dim: 3", f"dim: {len(x)} dim: 3")
    return reference(text, read_caffemodel(TINY), {"data": x})["prob"]


def test_the_front_door_is_exported():
    assert set(senet.__all__) >= {"load_caffe", "convert", "to_torch", "verify", "inspect",
                                  "load"}


def test_load_caffe_with_and_without_weights():
    net = senet.load_caffe(TINY)
    assert isinstance(net, CaffeNet) and net.inputs == {"data": (1, 3, 32, 32)}
    bare = senet.load_caffe(prototxt=TINY_PROTOTXT, input_shape=(4, 3, 32, 32))
    assert bare.inputs == {"data": (4, 3, 32, 32)}
    assert [tuple(b.shape) for layer in bare.layers for b in layer.blobs] == \
        [tuple(b.shape) for layer in net.layers for b in layer.blobs]
    assert all(not b.any() for layer in bare.layers for b in layer.blobs)  # zeros


def test_convert_to_onnx_equals_the_reference(tmp_path):
    path = senet.convert(TINY, "onnx", tmp_path / "t.onnx")
    assert path == tmp_path / "t.onnx"
    x = np.random.default_rng(7).normal(0, 50, (3, 3, 32, 32)).astype(np.float32)
    (ours,) = ort.InferenceSession(str(path)).run(["prob"], {"data": x})
    np.testing.assert_allclose(ours, tiny_reference(x), rtol=1e-4, atol=1e-6)


def test_convert_writes_the_default_name_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert senet.convert(TINY) == tmp_path.joinpath("tiny_senet.onnx").relative_to(tmp_path)
    assert (tmp_path / "tiny_senet.onnx").is_file()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"to": "caffe2"}, "unknown output format"),
    ({"to": "torch", "opset": 13}, "--opset"),
    ({"to": "onnx", "timm_exact": True}, "--timm-exact"),
    ({"to": "timm", "fold": False}, "--no-fold"),
    ({"to": "onnx", "input_shape": (1, 0, 32, 32)}, "positive"),
    ({"to": "onnx", "expect_model": "resnet9000"}, "resnet9000"),
])
def test_convert_refuses_bad_options_before_writing(tmp_path, kwargs, fragment):
    with pytest.raises(UsageError, match=fragment) as caught:
        senet.convert(TINY, output=tmp_path / "out", **kwargs)
    assert caught.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_convert_names_the_published_model_a_file_is_not(tmp_path):
    with pytest.raises(SenetError, match="not se_resnet50") as caught:
        senet.convert(TINY, "onnx", tmp_path / "x.onnx", expect_model="se_resnet50")
    assert caught.value.exit_code == 1 and not (tmp_path / "x.onnx").exists()


def test_to_torch_from_a_path_or_a_net_equals_the_reference():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).normal(0, 50, (2, 3, 32, 32)).astype(np.float32)
    expected = tiny_reference(x)
    for source in (TINY, senet.load_caffe(TINY)):
        for fold in (True, False):
            module = senet.to_torch(source, fold=fold)
            with torch.no_grad():
                np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), expected,
                                           rtol=1e-4, atol=1e-6)


def test_verify_refuses_an_unknown_option():
    with pytest.raises(UsageError, match="verify"):
        senet.verify(model="digits_se_demo", bogus=1)


def test_inspect_lists_layers_and_outputs():
    text = senet.inspect(TINY)
    assert "conv1" in text and "outputs: prob" in text and "recognised model: none" in text
