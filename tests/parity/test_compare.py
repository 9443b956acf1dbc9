"""senet-verify --compare: blob-by-blob differences between two forms of one model.

Known answers: a caffemodel and its own ONNX conversion agree on every blob; a copy whose
``res2/up`` bias was changed differs first at ``res2/up`` (every blob before it in layer order is
computed from unchanged weights), and the difference there is the change made.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from senet.cli import verify_main
from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import read_prototxt
from senet.converter.load import load_net
from senet.converter.to_onnx import build_graph, write_model
from senet.parity.compare import compare, diff
from tests.conftest import REPO
from tests.parity.synthetic import P, write_colour_net, write_image

TINY = REPO / "senet" / "examples" / "tiny_senet.caffemodel"
TINY_PROTOTXT = REPO / "senet" / "examples" / "tiny_senet.prototxt"
BLOBS_IN_ORDER = ["conv1", "pool1", "res2_1x1", "res2_3x3", "res2/squeeze", "res2/down",
                  "res2/up", "res2", "pool2", "pool3", "classifier", "prob"]


def run(*args):
    return CliRunner().invoke(verify_main, [str(a) for a in args], catch_exceptions=False)


def to_onnx(caffemodel, out, outputs=None):
    net = load_net(str(caffemodel))
    model, initializers = build_graph(net, outputs)
    write_model(out, model, initializers, source=net.weight_file)
    return out


def perturbed_tiny(tmp_path, layer="res2/up", bias_delta=0.5):
    """tiny_senet with ``bias_delta`` added to ``layer``'s bias, written by senet's writer."""
    from senet.examples.make import example_weights
    weights = example_weights()
    weights[layer][1] = weights[layer][1] + np.float32(bias_delta)
    structure = read_prototxt(TINY_PROTOTXT)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    path = tmp_path / "perturbed.caffemodel"
    write_caffemodel(path, net, weights)
    return path


def test_a_caffemodel_and_its_onnx_agree_on_every_blob(tmp_path):
    onnx_path = to_onnx(TINY, tmp_path / "tiny.onnx")
    result = compare(str(TINY), str(onnx_path))
    assert [r.name for r in result.rows] == BLOBS_IN_ORDER
    assert result.first_exceeding is None
    assert all(r.max_rel <= 1e-5 for r in result.rows)
    cli = run("--compare", TINY, onnx_path)
    assert cli.exit_code == 0, cli.stderr
    assert "all 12 shared blobs within 0.0001" in cli.stdout
    assert cli.stdout.splitlines()[2].startswith("conv1 ")


def test_the_first_differing_blob_is_named(tmp_path):
    onnx_path = to_onnx(perturbed_tiny(tmp_path), tmp_path / "perturbed.onnx")
    result = compare(str(TINY), str(onnx_path))
    first = result.first_exceeding
    assert first is not None and first.name == "res2/up"
    before = BLOBS_IN_ORDER[:BLOBS_IN_ORDER.index("res2/up")]
    assert all(r.max_abs == 0.0 for r in result.rows if r.name in before)
    cli = run("--compare", TINY, onnx_path, "--tolerance", "1e-3")
    assert cli.exit_code == 1
    assert "first in layer order: res2/up" in cli.stdout
    assert cli.stderr == ""


def test_tolerance_decides(tmp_path):
    onnx_path = to_onnx(perturbed_tiny(tmp_path, "classifier", 1.0), tmp_path / "p.onnx")
    loose = run("--compare", TINY, onnx_path, "--tolerance", "1")
    assert loose.exit_code == 0, loose.stdout
    strict = run("--compare", TINY, onnx_path)
    assert strict.exit_code == 1 and "first in layer order: classifier" in strict.stdout


def test_two_onnx_files_share_their_intermediate_blobs(tmp_path):
    a = to_onnx(TINY, tmp_path / "a.onnx")
    b = to_onnx(TINY, tmp_path / "b.onnx", outputs=["classifier"])
    result = compare(str(a), str(b))
    names = [r.name for r in result.rows]
    assert {"conv1", "res2/squeeze", "classifier"} <= set(names)
    assert names.index("conv1") < names.index("res2/up") < names.index("classifier")
    assert result.first_exceeding is None


def test_compare_on_a_preprocessed_image(tmp_path):
    """The colour net on a solid image: its scores are |x|² - |x - p_k|², known exactly."""
    model = write_colour_net(tmp_path)
    image = write_image(tmp_path / "c.png", (40, 50, 60))
    onnx_path = to_onnx(model, tmp_path / "colour.onnx")
    from senet.parity import compare as compare_module
    x, desc = compare_module.make_input(compare_module.load_form(model),
                                        compare_module.load_form(onnx_path), image=str(image))
    assert desc == "image c.png" and x.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(x[0, :, 100, 100], [40 - 104, 50 - 117, 60 - 123])
    scores = compare_module.load_form(onnx_path).run(x)["fc"][0]
    colour = np.array([40 - 104, 50 - 117, 60 - 123], np.float64)
    known = (colour ** 2).sum() - ((P - colour) ** 2).sum(axis=1)
    np.testing.assert_allclose(scores, known, rtol=0, atol=0.05)
    cli = run("--compare", model, onnx_path, "--image", image)
    assert cli.exit_code == 0 and "image c.png" in cli.stdout


def test_a_pt2_program_is_matched_by_its_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    model = write_colour_net(tmp_path)

    class ColourNet(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(2, 3), dtype=torch.float64)
            w = torch.from_numpy(2.0 * P)
            b = torch.from_numpy(-(P ** 2).sum(axis=1))
            return (m @ w.T + b).float()

    program = torch.export.export(ColourNet(), (torch.zeros(1, 3, 224, 224),))
    pt2 = tmp_path / "colour.pt2"
    torch.export.save(program, str(pt2))
    result = compare(str(model), str(pt2), tolerance=1e-6)
    assert [r.name for r in result.rows] == ["fc"]
    assert result.first_exceeding is None


def test_unrelated_models_share_nothing(tmp_path):
    model = write_colour_net(tmp_path)
    result = run("--compare", TINY, model)
    assert result.exit_code == 1
    assert result.stderr.startswith("senet-verify: error:") and "3x224x224" in result.stderr
    other = tmp_path / "other.caffemodel"
    other.write_bytes(TINY.read_bytes())
    renamed = to_onnx(TINY, tmp_path / "renamed.onnx")
    import onnx
    proto = onnx.load(str(renamed))
    for node in proto.graph.node:  # every blob renamed: nothing in common with the caffemodel
        node.output[:] = [f"x_{o}" for o in node.output]
        node.input[:] = [i if i == "data" or i in {t.name for t in proto.graph.initializer}
                         else f"x_{i}" for i in node.input]
    for output in proto.graph.output:
        output.name = f"x_{output.name}"
    onnx.save(proto, str(renamed))
    result = run("--compare", TINY, renamed)
    assert result.exit_code == 1 and "share no blob" in result.stderr, result.stderr


def test_diff_measures():
    a = np.array([1.0, -4.0, 2.0], np.float32)
    row = diff("x", a, np.array([1.0, -4.0, 2.2], np.float32), 1e-4)
    assert row.max_abs == pytest.approx(0.2, rel=1e-6) and row.max_rel == pytest.approx(0.05)
    assert row.exceeds
    assert diff("x", a, a.reshape(3, 1, 1), 1e-4).max_abs == 0.0
    assert diff("x", a, np.zeros(4, np.float32), 1e-4).exceeds
    assert diff("x", a, np.array([1.0, np.nan, 2.0], np.float32), 1e-4).exceeds


def test_senets_pt2_outputs_are_matched_by_their_blob_names(tmp_path):
    pytest.importorskip("torch")
    torch_io = pytest.importorskip("senet.converter.torch_io")
    pt2 = tmp_path / "tiny.pt2"
    torch_io.export_pt2(load_net(str(TINY)), pt2, outputs=["classifier", "res2/up"])
    result = compare(str(pt2), str(TINY))
    assert [r.name for r in result.rows] == ["res2/up", "classifier"]  # the caffemodel's order
    assert result.first_exceeding is None
