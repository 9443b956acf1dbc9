"""senet-convert's PyTorch targets (--to torch|safetensors|timm) and --model, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import require_shared
from tests.converter.harness import reference
from tests.reference.caffemodel_wire import read_caffemodel
from tests.test_cli import TINY, TINY_PROTOTXT, assert_cli_error, run_cli

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")


def _tiny_reference(x: np.ndarray) -> np.ndarray:
    text = TINY_PROTOTXT.read_text().replace("dim: 1 dim: 3", f"dim: {len(x)} dim: 3")
    return reference(text, read_caffemodel(TINY), {"data": x})["prob"]


@pytest.mark.parametrize("target,suffix", [("torch", ".pt2"), ("safetensors", ".safetensors")])
@pytest.mark.parametrize("fold", [True, False])
def test_torch_targets_equal_the_reference(tmp_path, target, suffix, fold):
    import senet

    out = tmp_path / f"tiny{suffix}"
    args = ["--to", target, "-q", "-o", out] + ([] if fold else ["--no-fold"])
    result = run_cli(TINY, *args)
    assert result.exit_code == 0, result.stderr
    module = torch.export.load(str(out)).module() if target == "torch" else senet.load(out)
    x = np.random.default_rng(3).normal(0, 60, (3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _tiny_reference(x), rtol=1e-4, atol=1e-6)
    if target == "safetensors":
        from safetensors import safe_open
        with safe_open(str(out), "pt") as f:
            graph = json.loads(f.metadata()["senet.graph"])
        types = {layer["type"] for layer in graph["layers"]}
        assert ("BatchNorm" in types) == (not fold)


def test_timm_target_refuses_a_model_timm_lacks(tmp_path):
    result = run_cli(TINY, "--to", "timm", "-q", "-o", tmp_path / "t.safetensors")
    assert_cli_error(result, 1, "timm checkpoint needs one of the published")
    assert not any(tmp_path.iterdir())


def test_timm_exact_without_timm_target_is_usage_error(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "--timm-exact", "-q", "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 2, "--timm-exact applies to --to timm")


def test_model_mismatch_names_the_layer(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "--model", "SE-ResNet-50", "-q",
                     "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 1, "not se_resnet50", "'conv1'", "'conv1/7x7_s2'")
    assert not any(tmp_path.iterdir())


def test_unknown_model_lists_known_names(tmp_path):
    result = run_cli(TINY, "--to", "onnx", "--model", "resnet18", "-q", "-o", tmp_path / "x.onnx")
    assert_cli_error(result, 2, "unknown model 'resnet18'", "se_resnet50")


def test_timm_checkpoint_of_se_resnet50_has_timm_keys(tmp_path):
    from senet.converter.caffe_writer import write_caffemodel
    from senet.converter.prototxt import read_prototxt
    from senet.converter.load import load_net

    prototxt = require_shared("senet_prototxt", "SE-ResNet-50.prototxt")
    keys_file = require_shared("timm_keys", "legacy_seresnet50.keys.txt")
    structure = read_prototxt(prototxt)
    shapes = load_net(prototxt=str(prototxt), weights_optional=True)
    rng = np.random.default_rng(0)
    weights = {layer.name: [np.abs(rng.normal(1, 0.1, b.shape)).astype(np.float32)
                            for b in layer.blobs] for layer in shapes.layers if layer.blobs}
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    caffemodel = tmp_path / "SE-ResNet-50.caffemodel"
    write_caffemodel(caffemodel, net, weights)
    out = tmp_path / "r50.safetensors"
    result = run_cli(caffemodel, "--to", "timm", "--model", "se_resnet50", "-q", "-o", out)
    assert result.exit_code == 0, result.stderr
    from safetensors.numpy import load_file
    state = load_file(str(out))
    expected = {}
    for line in keys_file.read_text().splitlines():
        key, shape = line.split("\t")
        expected[key] = tuple(json.loads(shape.replace("(", "[").replace(")", "]")
                                         .replace(",]", "]")))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
