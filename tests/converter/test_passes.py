"""IR passes (converter/passes.py): BatchNorm(+Scale) folding and Axpy+ReLU fusion keep every
output equal to the float64 NumPy reference, fold only what no asked-for blob needs, and leave
the input net unchanged."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from senet.converter import caffe_pb2 as pb  # noqa: E402
from senet.converter import passes  # noqa: E402
from senet.converter.graph import CaffeNet, Layer  # noqa: E402
from senet.converter.load import load_net  # noqa: E402
from senet.converter.prototxt import parse_prototxt_text  # noqa: E402
from senet.converter.to_onnx import build_graph, write_model  # noqa: E402
from senet.converter.to_torch import build_module  # noqa: E402
from senet.examples import make  # noqa: E402
from tests.converter.harness import reference, rel_error, run_onnx, write_net  # noqa: E402
from tests.converter.test_layers import net_text  # noqa: E402
from tests.converter.test_senet_models import MODELS, _case  # noqa: E402
from tests.converter.test_to_torch import assert_matches, run  # noqa: E402
from tests.reference.caffemodel_wire import read_caffemodel  # noqa: E402
from tests.reference.prototxt_text import parse_prototxt  # noqa: E402
from tests.reference.random_weights import make_input, make_weights  # noqa: E402

EXACT = 1e-9


def types(net) -> list[str]:
    return [layer.type for layer in net.layers]


def run64(net, outputs, x):
    return run(build_module(net, outputs, dtype=torch.float64), {"data": x}, np.float64)


def test_folding_the_example_keeps_its_outputs(tmp_path):
    net = load_net(str(make.CAFFEMODEL), str(make.PROTOTXT))
    before = types(net)
    folded = passes.fold_batchnorm(net, dtype=np.float64)
    assert types(net) == before  # the input net is unchanged
    assert "BatchNorm" not in types(folded) and "Scale" not in types(folded)
    assert len(folded.layers) == len(net.layers) - 6
    x = make_input((2, 3, 32, 32), seed=11)
    outputs = ["classifier", "prob"]
    ref = reference(make.PROTOTXT.read_text(), read_caffemodel(make.CAFFEMODEL), {"data": x})
    assert_matches(run64(folded, outputs, x), ref, outputs, EXACT)
    # stored as float32 (the default), the fold rounds the weights once; ONNX writes it too
    folded32 = passes.fold_batchnorm(net)
    assert_matches(run(build_module(folded32, outputs), {"data": x}), ref, outputs, 1e-5)
    model, initializers = build_graph(folded32, outputs)
    write_model(tmp_path / "folded.onnx", model, initializers)
    assert_matches(run_onnx(tmp_path / "folded.onnx", {"data": x}), ref, outputs, 1e-5)


def test_folding_se_bn_inception_keeps_its_logits(tmp_path):
    if "SE-BN-Inception" not in MODELS:
        pytest.skip("no SE-BN-Inception")
    text, weights, x, ref64, _ = _case("SE-BN-Inception")
    proto, caffemodel = write_net(tmp_path, text, weights, "SE-BN-Inception")
    net = load_net(str(caffemodel), str(proto))
    folded = passes.fold_batchnorm(net, ["classifier"], dtype=np.float64)
    assert types(folded).count("BatchNorm") == 0
    err = rel_error(run64(folded, ["classifier"], x)["classifier"], ref64)
    assert err <= EXACT, f"{err:.3g}"


def test_axpy_relu_fusion_in_torch_and_onnx(tmp_path):
    net = load_net(str(make.CAFFEMODEL), str(make.PROTOTXT))
    fused = passes.fuse_axpy_relu(net)
    (axpy,) = [layer for layer in fused.layers if layer.type == "Axpy"]
    assert axpy.fused_relu and axpy.tops == ["res2"]
    assert types(fused).count("ReLU") == types(net).count("ReLU") - 1
    assert not any(layer.fused_relu for layer in net.layers)
    x = make_input((2, 3, 32, 32), seed=12)
    outputs = ["res2", "prob"]
    ref = reference(make.PROTOTXT.read_text(), read_caffemodel(make.CAFFEMODEL), {"data": x})
    assert_matches(run64(fused, outputs, x), ref, outputs, EXACT)
    model, initializers = build_graph(fused, outputs)
    assert "Relu" in [node.op_type for node in model.graph.node if node.name.startswith("res2:")]
    write_model(tmp_path / "fused.onnx", model, initializers)
    ours = run_onnx(tmp_path / "fused.onnx", {"data": x})
    assert_matches(ours, ref, outputs, 1e-5)


# conv c → BatchNorm b → Scale s → ReLU r; an SE-style Axpy a on r, then ReLU ar (not in place)
CHAIN = ({"data": (2, 3, 8, 8)}, '''
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "b" type: "BatchNorm" bottom: "c" top: "b" batch_norm_param { eps: 0.001 } }
layer { name: "s" type: "Scale" bottom: "b" top: "s" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "s" top: "r" }
layer { name: "g" type: "Pooling" bottom: "r" top: "g" pooling_param { pool: AVE global_pooling: true } }
layer { name: "sg" type: "Sigmoid" bottom: "g" top: "g" }
layer { name: "a" type: "Axpy" bottom: "g" bottom: "r" bottom: "r" top: "a" }
layer { name: "ar" type: "ReLU" bottom: "a" top: "ar" }''')


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    shapes, body = CHAIN
    text = net_text(shapes, body)
    weights = make_weights(parse_prototxt(text), shapes, 5)
    proto, caffemodel = write_net(tmp_path_factory.mktemp("chain"), text, weights)
    x = make_input(shapes["data"], seed=6)
    return load_net(str(caffemodel), str(proto)), x, reference(text, weights, {"data": x})


@pytest.mark.parametrize("outputs, kept", [
    (None, ["Convolution", "ReLU", "Pooling", "Sigmoid", "Axpy"]),
    (["ar", "s"], ["Convolution", "ReLU", "Pooling", "Sigmoid", "Axpy"]),
    (["ar", "b"], ["Convolution", "Scale", "ReLU", "Pooling", "Sigmoid", "Axpy"]),
    (["ar", "c"], ["Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Sigmoid", "Axpy"]),
    (["a", "ar"], ["Convolution", "ReLU", "Pooling", "Sigmoid", "Axpy", "ReLU"]),
])
def test_asked_for_blobs_stay_computed(chain, outputs, kept):
    net, x, ref = chain
    result = passes.fuse_axpy_relu(passes.fold_batchnorm(net, outputs, np.float64), outputs)
    assert types(result) == kept
    names = outputs or ["ar"]
    assert_matches(run64(result, outputs, x), ref, names, EXACT)


def test_a_convolution_read_twice_is_not_folded(tmp_path):
    shapes = {"data": (1, 2, 5, 5)}
    text = net_text(shapes, '''
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "b" type: "BatchNorm" bottom: "c" top: "b" }
layer { name: "e" type: "Eltwise" bottom: "b" bottom: "c" top: "e" }''')
    weights = make_weights(parse_prototxt(text), shapes, 1)
    net = load_net(*map(str, reversed(write_net(tmp_path, text, weights))))
    assert types(passes.fold_batchnorm(net)) == ["Convolution", "BatchNorm", "Eltwise"]


def snapshot(net):
    """Everything a pass could change in a net, copied."""
    layers = [(layer.name, layer.type, layer.param.SerializeToString(), list(layer.bottoms),
               list(layer.tops), [np.array(b, copy=True) for b in layer.blobs], layer.fused_relu)
              for layer in net.layers]
    return layers, dict(net.inputs), dict(net.shapes), dict(net.final_names)


def assert_unchanged(before, net):
    after = snapshot(net)
    assert len(after[0]) == len(before[0])
    for old, new in zip(before[0], after[0]):
        assert old[:5] == new[:5] and old[6] == new[6]
        assert len(old[5]) == len(new[5])
        assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(old[5], new[5]))
    assert after[1:] == before[1:]


@pytest.mark.parametrize("run_pass", [
    lambda net: passes.fold_batchnorm(net, dtype=np.float64),
    lambda net: passes.fold_batchnorm(net, ["ar", "b"]),
    passes.fuse_axpy_relu,
    passes.remove_splits,
], ids=["fold_batchnorm", "fold_batchnorm_outputs", "fuse_axpy_relu", "remove_splits"])
def test_each_pass_leaves_its_input_unchanged(chain, run_pass):
    net = chain[0]
    before = snapshot(net)
    result = run_pass(net)
    assert result is not net
    assert_unchanged(before, net)


def test_remove_splits_leaves_its_input_unchanged():
    param = pb.LayerParameter()
    layers = [Layer("c", "Convolution", param, ["data"], ["c"]),
              Layer("split", "Split", param, ["c"], ["c_s0", "c_s1"]),
              Layer("r", "ReLU", param, ["c_s0"], ["r"]),
              Layer("e", "Eltwise", param, ["r", "c_s1"], ["e"])]
    net = CaffeNet("n", {"data": (1, 2, 3, 3)}, layers,
                   shapes={b: (1, 2, 3, 3) for b in ["data", "c", "c_s0", "c_s1", "r", "e"]},
                   final_names={b: b for b in ["data", "c", "c_s0", "c_s1", "r", "e"]})
    before = snapshot(net)
    result = passes.remove_splits(net)
    assert_unchanged(before, net)
    assert [(layer.name, layer.bottoms) for layer in result.layers] == [
        ("c", ["data"]), ("r", ["c"]), ("e", ["r", "c"])]
    assert "c_s0" not in result.shapes and result.final_names["c_s1"] == "c"


TRAIN_TEST = '''name: "t"
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 8 } }
layer { name: "dt" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 6 } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "drop" type: "Dropout" bottom: "c" top: "c" include { phase: TRAIN } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "c" bottom: "label" top: "acc" include { phase: TEST } }
'''


def test_deploy_layers_leaves_the_file_unchanged():
    cf = parse_prototxt_text(TRAIN_TEST)
    before = (cf.net.SerializeToString(), [raw.param.SerializeToString() for raw in cf.layers],
              list(cf.layers))
    inputs, kept, defaulted = passes.deploy_layers(cf, None)
    assert inputs == {"data": (1, 3, 6, 6)} and defaulted == []
    assert [raw.param.name for raw in kept] == ["c"]
    assert (cf.net.SerializeToString(), [raw.param.SerializeToString() for raw in cf.layers],
            list(cf.layers)) == before
