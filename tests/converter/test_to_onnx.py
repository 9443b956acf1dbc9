"""Properties of the ONNX files: valid, dynamic batch, outputs named after Caffe blobs, metadata."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from senet.cli import convert_main
from senet.converter.load import load_net
from senet.converter.to_onnx import DEFAULT_OPSET, build_graph, write_model
from senet.errors import GraphError, UsageError
from senet.examples import make
from tests.converter.harness import reference, rel_error, run_onnx
from tests.reference.caffemodel_wire import read_caffemodel


def _example_onnx(tmp_path, outputs=None, opset=DEFAULT_OPSET):
    net = load_net(str(make.CAFFEMODEL))
    model, initializers = build_graph(net, outputs, opset)
    path = tmp_path / "tiny.onnx"
    write_model(path, model, initializers)
    return path


def test_checker_full_check_and_pinned_opset(tmp_path):
    path = _example_onnx(tmp_path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert len(model.graph.initializer) > 0 and not model.graph.initializer[0].float_data


@pytest.mark.parametrize("opset", [13, 22])
def test_other_opsets_check(tmp_path, opset):
    onnx.checker.check_model(str(_example_onnx(tmp_path, opset=opset)), full_check=True)


def test_opset_out_of_range_is_refused(tmp_path):
    with pytest.raises(UsageError, match="opset 9"):
        _example_onnx(tmp_path, opset=9)


def test_dynamic_batch_equals_reference_per_image(tmp_path):
    path = _example_onnx(tmp_path, ["classifier"])
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, (3, 3, 32, 32)).astype(np.float32)
    ours = run_onnx(path, {"data": x})["classifier"]
    text = make.PROTOTXT.read_text().replace("dim: 1 dim: 3", "dim: 3 dim: 3")
    ref = reference(text, read_caffemodel(make.CAFFEMODEL), {"data": x})["classifier"]
    assert ours.shape == (3, 10) and rel_error(ours, ref) < 1e-5


def test_in_place_blob_output_is_its_final_value(tmp_path):
    # conv1 is rewritten by BatchNorm, Scale and ReLU: asking for it gives the ReLU's output.
    path = _example_onnx(tmp_path, ["conv1", "res2/up", "prob"])
    x = np.random.default_rng(1).normal(0, 50, (1, 3, 32, 32)).astype(np.float32)
    ours = run_onnx(path, {"data": x})
    ref = reference(make.PROTOTXT.read_text(), read_caffemodel(make.CAFFEMODEL), {"data": x})
    assert list(ours) == ["conv1", "res2/up", "prob"]
    assert (ours["conv1"] >= 0).all() and (ours["conv1"] == 0).any()
    for name in ours:
        assert rel_error(ours[name], ref[name]) < 1e-5, name
    assert 0 <= ours["res2/up"].min() <= ours["res2/up"].max() <= 1  # after the in-place Sigmoid


def test_unknown_output_is_an_error():
    net = load_net(str(make.CAFFEMODEL))
    with pytest.raises(GraphError, match="no blob named 'nope'"):
        build_graph(net, ["nope"])


def test_cli_metadata(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(convert_main, [str(make.CAFFEMODEL), "--to", "onnx", "-o",
                                               str(out), "-q"])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["source_sha256"] == hashlib.sha256(make.CAFFEMODEL.read_bytes()).hexdigest()
    assert meta["recognised_model"] == "none"


def test_recognised_model_in_metadata_and_inspect(tmp_path):
    from senet.converter.caffe_writer import write_caffemodel
    from senet.converter.prototxt import read_prototxt
    from tests.conftest import require_shared

    prototxt = require_shared("senet_prototxt", "SE-BN-Inception.prototxt")
    structure = read_prototxt(prototxt)
    shapes = load_net(prototxt=str(prototxt), weights_optional=True)
    weights = {layer.name: [np.zeros(b.shape, np.float32) for b in layer.blobs]
               for layer in shapes.layers if layer.blobs}
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    caffemodel = tmp_path / "SE-BN-Inception.caffemodel"
    write_caffemodel(caffemodel, net, weights)
    out = tmp_path / "m.onnx"
    runner = CliRunner()
    result = runner.invoke(convert_main, [str(caffemodel), "--to", "onnx", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["recognised_model"] == "se_bn_inception"
    assert meta["channel_order"] == "BGR" and meta["mean"] == "104.0,117.0,123.0"
    assert meta["input_size"] == "224x224" and "devkit" in meta["class_order"]
    inspect = runner.invoke(convert_main, [str(caffemodel), "--inspect"])
    assert "recognised model: se_bn_inception" in inspect.output
    assert "parameters: 11,951,723" in inspect.output


def test_file_to_file_copy_writes_the_same_bytes(tmp_path):
    net = load_net(str(make.CAFFEMODEL))
    assert net.weight_file is not None
    copied = [layer.blobs[0] for layer in net.layers if layer.type == "Convolution"]
    assert all(net.weight_file.offset_of(b) is not None for b in copied)
    model, initializers = build_graph(net)
    write_model(tmp_path / "copied.onnx", model, initializers, source=net.weight_file)
    write_model(tmp_path / "written.onnx", model, initializers)
    assert (tmp_path / "copied.onnx").read_bytes() == (tmp_path / "written.onnx").read_bytes()
