"""The IR's SSA names: in-place writes get versions, the final write keeps the Caffe name."""

from __future__ import annotations

from senet.converter.load import load_net

PROTOTXT = """name: "in-place"
input: "data"
input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "x#y"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "x#y" top: "x#y" }
layer { name: "scale" type: "Power" bottom: "x#y" top: "x#y" power_param { scale: 2 } }
layer { name: "pool" type: "Pooling" bottom: "x#y" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 } }
"""


def test_ssa_names_map_back_to_their_caffe_blob(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(PROTOTXT)
    net = load_net(prototxt=str(path), weights_optional=True)
    tops = [layer.tops[0] for layer in net.layers]
    assert tops == ["x#y#0", "x#y#1", "x#y", "pool"]
    assert [net.caffe_name(t) for t in tops] == ["x#y", "x#y", "x#y", "pool"]
    assert net.caffe_name("data") == "data"
    assert net.final_blobs() == ["x#y", "pool"]
    assert net.output_pairs() == [("pool", "pool")]
    assert net.output_pairs(["x#y"]) == [("x#y", "x#y")]
