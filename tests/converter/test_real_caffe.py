"""Real files written by real Caffe (../shared/fixtures/real_caffe): they convert, and where a
real Caffe build computed outputs, ours equal them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from senet.converter.load import load_net
from senet.errors import UnsupportedLayerError
from tests.conftest import FIXTURES, require_shared
from tests.converter.harness import convert, rel_error, run_onnx
from tests.reference.caffe_forward import forward
from tests.reference.caffemodel_wire import read_caffemodel as reference_weights
from tests.reference.prototxt_text import parse_prototxt

REAL = FIXTURES / "real_caffe"
CASES = sorted(p.parent.name for p in (REAL / "caffe_reference_outputs").glob("*/case.json"))


@pytest.mark.parametrize("case", CASES or ["(../shared absent)"])
def test_matches_real_caffe_outputs(tmp_path, case):
    folder = require_shared("real_caffe", "caffe_reference_outputs", case)
    spec = json.loads((folder / "case.json").read_text())
    inputs = {name: np.load(folder / f"input__{name}.npy") for name in spec["inputs"]}
    (shape,) = {tuple(a.shape) for a in inputs.values()}
    outputs = list(spec["outputs"])
    onnx_path = convert(tmp_path, REAL / spec["caffemodel"], REAL / spec["prototxt"], outputs,
                        input_shape=shape)
    ours = run_onnx(onnx_path, inputs)
    for name in outputs:
        expected = np.load(folder / spec["outputs"][name]["file"])
        assert ours[name].shape == expected.shape
        assert rel_error(ours[name], expected) <= 1e-4, name


# Every real caffemodel: the input shape its data layer does not record, or the unsupported
# layer types it has (those must be listed, all at once).
MODELS = {
    "aizoo_face_mask/face_mask_detection.caffemodel": (1, 3, 260, 260),
    "arm_ml_examples/lenet_iter_9000.caffemodel": None,
    "arm_ml_examples/quantized_cifar10_m4_iter_70000.caffemodel": (1, 3, 32, 32),
    "caffe_tensorflow_lenet/lenet_iter_10000.caffemodel": (1, 1, 28, 28),
    "everpeace_cifar10_v1/cifar10_full_iter_70000.caffemodel": (1, 3, 32, 32),
    "everpeace_cifar10_v1/cifar10_quick_iter_5000.caffemodel": (1, 3, 32, 32),
    "exp_caffe_lenet_v1/lenet_iter_10000.caffemodel": (1, 1, 28, 28),
    "hyperlpr/CharacterRecognization.caffemodel": (1, 1, 30, 14),
    "hyperlpr/HorizonalFinemapping.caffemodel": (1, 3, 16, 66),
    "hyperlpr/HorizonalFinemapping.nvcaffe_fp16.caffemodel": (1, 3, 16, 66),
    "hyperlpr/Segmentation.caffemodel": (1, 1, 22, 22),
    "hyperlpr/mininet_ssd_v1.caffemodel": {"PriorBox"},
    "libfacedetection_yunet_v1/yufacedetectnet-open-v1.caffemodel": {"Normalize", "PriorBox"},
    "lijianfei_cifar10_bn/cifar10_ResNet_20_iter_53500.caffemodel": (1, 3, 32, 32),
    "lijianfei_cifar10_bn/cifar10_SE-ResNet_20_iter_53000.caffemodel": (1, 3, 32, 32),
    "lijianfei_cifar10_bn/cifar10_mobilenet_iter_100000.caffemodel": (1, 3, 28, 28),
    "mtcnn_kpzhang93/det1.caffemodel": (1, 3, 12, 12),
    "mtcnn_kpzhang93/det2.caffemodel": (1, 3, 24, 24),
    "mtcnn_kpzhang93/det3.caffemodel": (1, 3, 48, 48),
    "mtcnn_kpzhang93/det4.caffemodel": (1, 15, 24, 24),
    "ultra_light_face_detector/RFB-320.caffemodel": None,
    "ultra_light_face_detector/slim-320.caffemodel": None,
    "xialuxi_landmark/landmark.caffemodel": None,
}


def test_every_real_caffemodel_is_listed():
    require_shared("real_caffe")
    found = {str(p.relative_to(REAL)) for p in REAL.glob("*/*.caffemodel")}
    assert found == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_caffemodel_converts_alone(tmp_path, name):
    path = require_shared("real_caffe", name)
    expect = MODELS[name]
    if isinstance(expect, set):
        with pytest.raises(UnsupportedLayerError) as error:
            load_net(str(path))
        listed = str(error.value)
        assert all(f"({t})" in listed for t in expect), listed
        return
    onnx_path = convert(tmp_path, path, input_shape=expect)
    net = load_net(str(path), input_shape=expect)
    (name_in, shape), = net.inputs.items()
    outputs = run_onnx(onnx_path, {name_in: np.ones(shape, np.float32)})
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_nvcaffe_fp16_twin_matches_fp32_model(tmp_path):
    folder = require_shared("real_caffe", "caffe_reference_outputs",
                            "hyperlpr_horizonal_finemapping_fp32")
    x = np.load(folder / "input__data.npy")
    expected = np.load(folder / "output__dense.npy")
    onnx_path = convert(tmp_path, REAL / "hyperlpr/HorizonalFinemapping.nvcaffe_fp16.caffemodel",
                        REAL / "hyperlpr/HorizonalFinemapping.prototxt", ["dense"],
                        input_shape=x.shape)
    ours = run_onnx(onnx_path, {"data": x})["dense"]
    assert rel_error(ours, expected) <= 2e-2  # fp16 weights: ~3 significant digits


def _se_resnet20_deploy_for_reference() -> tuple[dict, dict]:
    """The TEST prototxt with its Data/Accuracy/loss layers removed, for the reference."""
    text = require_shared("real_caffe", "lijianfei_cifar10_bn", "test_SE-ResNet_20.prototxt")
    net = parse_prototxt(text.read_text())
    net["layer"] = [l for l in net["layer"]
                    if l["type"][0] not in ("Data", "Accuracy", "SoftmaxWithLoss")]
    net["input"] = ["data"]
    weights = reference_weights(REAL / "lijianfei_cifar10_bn/cifar10_SE-ResNet_20_iter_53000.caffemodel")
    return net, weights


@pytest.mark.parametrize("with_prototxt", [True, False])
def test_trained_se_resnet20_with_axpy(tmp_path, with_prototxt):
    net, weights = _se_resnet20_deploy_for_reference()
    x = np.load(require_shared("real_caffe", "caffe_reference_outputs",
                               "cifar10_resnet20_bn_scale_eltwise", "input__data.npy"))
    ref = forward(net, weights, {"data": x})["fc1"]
    folder = REAL / "lijianfei_cifar10_bn"
    onnx_path = convert(tmp_path, folder / "cifar10_SE-ResNet_20_iter_53000.caffemodel",
                        folder / "test_SE-ResNet_20.prototxt" if with_prototxt else None,
                        ["fc1"], input_shape=x.shape)
    ours = run_onnx(onnx_path, {"data": x})["fc1"]
    assert rel_error(ours, ref) <= 1e-4
    assert ref.argmax() == ours.argmax()
