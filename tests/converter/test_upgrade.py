"""V1 and V0 layers upgrade to the same net as today's format."""

from __future__ import annotations

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import read_caffemodel
from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import parse_prototxt_text
from tests.converter.harness import convert, reference, rel_error, run_onnx

DEPLOY = '''name: "v"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def _weights(rng):
    return {"conv": [rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.1, 4)],
            "fc": [rng.normal(0, 0.3, (5, 36)), rng.normal(0, 0.1, 5)]}


def _v0_net(weights) -> pb.NetParameter:
    """A 2014-format net: V1 `layers` entries holding V0 `layer` messages, blobs inside them."""
    net = pb.NetParameter(name="v")
    net.input.append("data")
    net.input_dim.extend([2, 3, 9, 9])
    specs = [("conv", "conv", "data", "conv"), ("relu", "relu", "conv", "conv"),
             ("pool", "pool", "conv", "pool"), ("fc", "innerproduct", "pool", "fc"),
             ("prob", "softmax", "fc", "prob")]
    for name, kind, bottom, top in specs:
        layer = net.layers.add(bottom=[bottom], top=[top])
        v0 = layer.layer
        v0.name, v0.type = name, kind
        if kind == "conv":
            v0.num_output, v0.kernelsize, v0.pad, v0.stride = 4, 3, 1, 2
        elif kind == "pool":
            v0.pool, v0.kernelsize, v0.stride = pb.V0LayerParameter.AVE, 2, 2
        elif kind == "innerproduct":
            v0.num_output = 5
        for array in weights.get(name, []):
            blob = v0.blobs.add()
            dims = (1,) * (4 - array.ndim) + array.shape
            blob.num, blob.channels, blob.height, blob.width = dims
            blob.data.extend(array.ravel().tolist())
    return net


def _v1_net() -> pb.NetParameter:
    cf = parse_prototxt_text(DEPLOY)
    net = pb.NetParameter(name="v")
    net.input.append("data")
    net.input_dim.extend([2, 3, 9, 9])
    v1_types = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING",
                "InnerProduct": "INNER_PRODUCT", "Softmax": "SOFTMAX"}
    for raw in cf.layers:
        p = raw.param
        layer = net.layers.add(name=p.name, bottom=p.bottom, top=p.top,
                               type=pb.V1LayerParameter.LayerType.Value(v1_types[p.type]))
        for field in ("convolution_param", "pooling_param", "inner_product_param"):
            if p.HasField(field):
                getattr(layer, field).CopyFrom(getattr(p, field))
    return net


def test_v1_and_v0_nets_equal_the_reference(tmp_path):
    rng = np.random.default_rng(5)
    weights = {k: [np.float32(b) for b in v] for k, v in _weights(rng).items()}
    x = rng.normal(0, 1, (2, 3, 9, 9)).astype(np.float32)
    expected = reference(DEPLOY, weights, {"data": x})["prob"]
    v1_path, v0_path = tmp_path / "v1.caffemodel", tmp_path / "v0.caffemodel"
    write_caffemodel(v1_path, _v1_net(), weights, v1=True, legacy_blobs=True)
    v0_path.write_bytes(_v0_net(weights).SerializeToString())
    for name, path in (("v1", v1_path), ("v0", v0_path)):
        assert read_caffemodel(path).format == name.upper()
        ours = run_onnx(convert(tmp_path, path, name=name), {"data": x})["prob"]
        assert rel_error(ours, expected) < 1e-5, name
