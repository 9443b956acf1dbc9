"""A second, independent reference for whole BVLC networks: OpenCV dnn 4.x (its own Caffe
importer and CPU kernels) on the same prototxt and caffemodel as senet's ONNX model.

The zoo prototxts are read as committed; the weights are seeded (tests/reference's generator,
BatchNorm statistics measured on activations) and written by senet's caffemodel writer, which
OpenCV then parses with its own copy of caffe.proto, so a writer defect would show here too.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_shared
from tests.converter.harness import convert, rel_error, run_onnx, write_net
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input, make_weights

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless, test extra) is not "
                                        "installed")

# zoo net -> (input blob, shape at batch 1, the logits: the blob before the final Softmax,
# which a near one-hot probability vector would hide)
NETS = {
    "mnist_lenet": ("data", (1, 1, 28, 28), "ip2"),
    "cifar10_full": ("data", (1, 3, 32, 32), "ip1"),
    "bvlc_reference_caffenet": ("data", (1, 3, 227, 227), "fc8"),
    "bvlc_googlenet": ("data", (1, 3, 224, 224), "loss3/classifier"),
    "squeezenet_v1.1": ("data", (1, 3, 227, 227), "pool10"),
    "resnet50_kaiminghe": ("data", (1, 3, 224, 224), "fc1000"),
}
# OpenCV's float32 kernels (im2col GEMM, its own LRN and pooling loops) round differently
# from onnxruntime's: both are float32 implementations of one function.
BOUND = 1e-4


def _opencv_forward(proto, model, name, x, out):
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(net, "enableWinograd"):  # 4.7+: Winograd 3x3 convolutions lose digits
        net.enableWinograd(False)
    net.setInput(x, name)
    return net.forward(out)


@pytest.mark.parametrize("zoo_net", list(NETS))
def test_senet_onnx_equals_opencv_dnn(tmp_path, zoo_net):
    text = require_shared("caffe_zoo", zoo_net, "deploy.prototxt").read_text()
    name, shape, out = NETS[zoo_net]
    weights = make_weights(parse_prototxt(text), {name: shape}, seed=len(zoo_net))
    proto, model = write_net(tmp_path, text, weights, "net")
    x = make_input(shape, seed=3)
    ours = run_onnx(convert(tmp_path, model, proto, [out], input_shape=shape), {name: x})[out]
    theirs = _opencv_forward(proto, model, name, x, out)
    assert ours.shape == theirs.shape
    assert np.std(ours) > 0.1 * np.abs(ours).max(), "near-constant logits prove nothing"
    err = rel_error(ours, theirs)
    assert err <= BOUND, f"{zoo_net}: senet vs OpenCV dnn {err:.3g} > {BOUND}"
