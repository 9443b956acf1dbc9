"""The forks' dense layers (BN, Interp, Upsample, ShuffleChannel, Reorg, ConvolutionDepthwise,
ReLU6, HardSwish, Mish, SeLu): senet's ONNX and torch emitters against the float64 reference
(tests/reference/forward_fork.py, written from each fork's C++) on seeded nets, the traps a
converter falls into with these layers, the refusals, and the zoo nets that use them.

No real-Caffe outputs exist for fork layers (the fixtures were written by BVLC Caffe), so the
reference is checked against the fork's index arithmetic in loops, and senet's reshape and
Resize formulations against it."""

from __future__ import annotations

import numpy as np
import pytest

import senet
from senet.errors import SenetError
from tests.converter.harness import convert, reference, rel_error, run_onnx, write_net
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import run_net
from tests.reference.prototxt_text import parse_prototxt

TOL = 2e-5


def seeded_weights(text: str, input_shapes: dict, seed: int = 0) -> dict:
    """Float32 blobs of the reference's shapes for every layer with blobs: N(0, 0.5), except
    the last BN blob (PSPNet's variance) which is positive."""
    rng = np.random.default_rng(seed)
    weights = {}

    def source(layer, bottoms, shapes):
        blobs = [rng.normal(0.0, 0.5, s).astype(np.float32) for s in shapes]
        if layer["type"][0] == "BN" and len(shapes) == 4:
            blobs[3] = rng.uniform(0.2, 2.0, shapes[3]).astype(np.float32)
        weights[layer["name"][0]] = blobs
        return blobs

    inputs = {k: np.zeros(s) for k, s in input_shapes.items()}
    run_net(parse_prototxt(text), inputs, source)
    return weights


def make_inputs(input_shapes: dict, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, 2.0, s).astype(np.float32) for k, s in input_shapes.items()}


def run_both(tmp_path, text: str, weights: dict, inputs: dict, outputs: list[str]):
    """senet's (onnxruntime, torch) outputs of the net."""
    import torch
    proto, model = write_net(tmp_path, text, weights)
    onnx_out = run_onnx(convert(tmp_path, model, proto, outputs), inputs)
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=outputs)
    with torch.no_grad():
        values = module(*[torch.from_numpy(v) for v in inputs.values()])
    values = values if isinstance(values, tuple) else (values,)
    return onnx_out, {name: v.numpy() for name, v in zip(outputs, values)}


def check_case(tmp_path, input_shapes, body, outputs, tol=TOL, seed=0):
    """Both emitters equal the float64 reference; returns the reference outputs."""
    text = net_text(input_shapes, body)
    weights = seeded_weights(text, input_shapes, seed)
    inputs = make_inputs(input_shapes, seed + 1)
    onnx_out, torch_out = run_both(tmp_path, text, weights, inputs, outputs)
    ref = reference(text, weights, inputs)
    for name in outputs:
        for emitter, ours in (("onnx", onnx_out[name]), ("torch", torch_out[name])):
            assert ours.shape == ref[name].shape, (emitter, name, ours.shape, ref[name].shape)
            err = rel_error(ours, ref[name])
            assert err <= tol, f"{emitter} {name}: relative error {err:.3g} > {tol}"
    return ref


X4 = {"x": (2, 6, 7, 9)}
CASES = {
    "bn_pspnet": (X4, '''
layer { name: "c" type: "ReLU" bottom: "x" top: "c" relu_param { negative_slope: 0.5 } }
layer { name: "bn" type: "BN" bottom: "c" top: "c" bn_param { frozen: true } }''', ["c"]),
    "bn_pspnet_eps": (X4, '''
layer { name: "bn" type: "BN" bottom: "x" top: "y" bn_param { eps: 0.5 } }''', ["y"]),
    "bn_segnet_inference": (X4, '''
layer { name: "bn" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: INFERENCE } }''', ["y"]),
    "bn_segnet_learn_batch_statistics": (X4, '''
layer { name: "bn" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: LEARN } }''', ["y"]),
    "interp_zoom": (X4, '''
layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 3 } }''', ["y"]),
    "interp_shrink": ({"x": (1, 3, 17, 10)}, '''
layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { shrink_factor: 4 } }''',
                      ["y"]),
    "interp_shrink_then_zoom_cropped": ({"x": (1, 3, 17, 12)}, '''
layer { name: "i" type: "Interp" bottom: "x" top: "y"
  interp_param { shrink_factor: 2 zoom_factor: 3 pad_beg: -1 pad_end: -2 } }''', ["y"]),
    "interp_height_width_down_and_up": (X4, '''
layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { height: 4 width: 23 } }''',
                                        ["y"]),
    "interp_to_one_and_copy": (X4, '''
layer { name: "a" type: "Interp" bottom: "x" top: "a" interp_param { height: 1 width: 9 } }
layer { name: "b" type: "Interp" bottom: "x" top: "b" interp_param { height: 7 width: 9 } }''',
                               ["a", "b"]),
    "interp_size_of_second_bottom": ({"x": (2, 3, 5, 6), "r": (2, 1, 11, 8)}, '''
layer { name: "i" type: "Interp" bottom: "x" bottom: "r" top: "y" }''', ["y"]),
    "segnet_pool_unpool": ({"x": (2, 3, 8, 10)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }''',
                           ["u"]),
    "segnet_unpool_odd_sizes": ({"x": (1, 2, 9, 11)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u"
  upsample_param { upsample_h: 9 upsample_w: 11 } }
layer { name: "v" type: "Upsample" bottom: "p" bottom: "m" top: "v"
  upsample_param { scale: 2 pad_out_h: true } }''', ["u", "v"]),
    "unpool_overlapping_windows_later_wins": ({"x": (1, 2, 9, 9)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u"
  upsample_param { upsample_h: 9 upsample_w: 9 } }''', ["u"]),
    "yolo_nearest_upsample": (X4, '''
layer { name: "u" type: "Upsample" bottom: "x" top: "u" upsample_param { scale: 3 } }''', ["u"]),
    "shuffle_channel": ({"x": (2, 12, 3, 4)}, '''
layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "s" shuffle_channel_param { group: 3 } }''',
                        ["s"]),
    "reorg": ({"x": (2, 8, 6, 4)}, '''
layer { name: "r" type: "Reorg" bottom: "x" top: "r" reorg_param { stride: 2 } }''', ["r"]),
    "reorg_reverse": ({"x": (2, 18, 2, 3)}, '''
layer { name: "r" type: "Reorg" bottom: "x" top: "r" reorg_param { stride: 3 reverse: true } }''',
                      ["r"]),
    "conv_depthwise_without_group": (X4, '''
layer { name: "d" type: "ConvolutionDepthwise" bottom: "x" top: "d"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "e" type: "DepthwiseConvolution" bottom: "x" top: "e"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 bias_term: false } }''',
                                     ["d", "e"]),
    "conv_depthwise_synopsys_group_multiplier": (X4, '''
layer { name: "d" type: "ConvolutionDepthwise" bottom: "x" top: "d"
  convolution_param { num_output: 12 group: 6 kernel_size: 3 pad: 1 } }''', ["d"]),
    "activations": (X4, '''
layer { name: "r6" type: "ReLU6" bottom: "x" top: "r6" }
layer { name: "hs" type: "HardSwish" bottom: "x" top: "hs" }
layer { name: "mi" type: "Mish" bottom: "x" top: "mi" }
layer { name: "se" type: "SeLu" bottom: "x" top: "se" }''', ["r6", "hs", "mi", "se"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fork_layer_matches_reference(tmp_path, case):
    shapes, body, outputs = CASES[case]
    check_case(tmp_path, shapes, body, outputs)


def test_activation_edges(tmp_path):
    """Values at the kinks of ReLU6/HardSwish (0, ±3, 6) and Mish's softplus switch (±20)."""
    x = np.array([[0.0, -0.0, 3.0, -3.0, 6.0, -6.0, 2.999, 20.0, -20.0, 25.0, -25.0, 1e-3]],
                 np.float32)
    body = '''
layer { name: "r6" type: "ReLU6" bottom: "x" top: "r6" }
layer { name: "hs" type: "HardSwish" bottom: "x" top: "hs" }
layer { name: "mi" type: "Mish" bottom: "x" top: "mi" }'''
    text = net_text({"x": x.shape}, body)
    onnx_out, torch_out = run_both(tmp_path, text, {}, {"x": x}, ["r6", "hs", "mi"])
    ref = reference(text, {}, {"x": x})
    for name in ("r6", "hs", "mi"):
        np.testing.assert_allclose(onnx_out[name], ref[name], rtol=1e-6, atol=1e-30)
        np.testing.assert_allclose(torch_out[name], ref[name], rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- traps

def _trap_case(tmp_path, shapes, body, output):
    """(input, reference output, senet's ONNX output, senet's torch output) of a seeded net."""
    text = net_text(shapes, body)
    weights = seeded_weights(text, shapes)
    inputs = make_inputs(shapes)
    onnx_out, torch_out = run_both(tmp_path, text, weights, inputs, [output])
    ref = reference(text, weights, inputs)[output]
    return inputs, weights, ref, onnx_out[output], torch_out[output]


def test_trap_interp_half_pixel(tmp_path):
    """caffe_cpu_interp2 aligns corners (position i·(in-1)/(out-1)); the half-pixel Resize
    that ONNX and PyTorch default to (F.interpolate(align_corners=False), Resize
    coordinate_transformation_mode=half_pixel) is off by up to a tenth of the signal here."""
    import torch
    from torch.nn import functional as F
    inputs, _, ref, ours_onnx, ours_torch = _trap_case(tmp_path, {"x": (1, 2, 5, 7)}, '''
layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 4 } }''', "y")
    half_pixel = F.interpolate(torch.from_numpy(inputs["x"]), size=ref.shape[2:],
                               mode="bilinear", align_corners=False).numpy()
    assert rel_error(half_pixel, ref) > 0.05
    assert rel_error(ours_onnx, ref) <= TOL and rel_error(ours_torch, ref) <= TOL


def test_trap_unpool_without_mask(tmp_path):
    """SegNet's Upsample puts each value where its Pooling found the maximum and zeros
    elsewhere; a converter that ignores the mask (nearest upsampling, or each value at the
    top-left cell of its window) gives another image."""
    inputs, _, ref, ours_onnx, ours_torch = _trap_case(tmp_path, {"x": (2, 3, 8, 8)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }''',
                                                        "u")
    pooled = inputs["x"].reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5))
    nearest = pooled.repeat(2, axis=2).repeat(2, axis=3)
    top_left = np.zeros_like(nearest)
    top_left[:, :, ::2, ::2] = pooled
    assert rel_error(nearest, ref) > 0.5 and rel_error(top_left, ref) > 0.5
    assert rel_error(ours_onnx, ref) <= TOL and rel_error(ours_torch, ref) <= TOL


def test_trap_bn_as_batchnorm_scale_wrong_blob_order(tmp_path):
    """PSPNet's BN stores slope, bias, mean, variance. Read as BVLC's BatchNorm (mean, variance
    first) plus Scale (slope, bias after), the same four blobs give another result."""
    inputs, weights, ref, ours_onnx, ours_torch = _trap_case(tmp_path, X4, '''
layer { name: "bn" type: "BN" bottom: "x" top: "y" }''', "y")
    slope, bias, mean, var = (b.reshape(1, -1, 1, 1).astype(np.float64)
                              for b in weights["bn"])
    x = inputs["x"].astype(np.float64)
    wrong = (x - slope) / np.sqrt(np.abs(bias) + 1e-5) * mean + var
    assert rel_error(wrong, ref) > 0.5
    assert rel_error(ours_onnx, ref) <= TOL and rel_error(ours_torch, ref) <= TOL


def test_trap_reorg_channel_order(tmp_path):
    """The YOLOv2 forks' Reorg (darknet's reorg_cpu) reads the input's memory as
    C/s² × H·s × W·s; ONNX SpaceToDepth (channel (by·s + bx)·C + c takes x[c, h·s + by,
    w·s + bx]) has the output's shape but other values in most channels."""
    inputs, _, ref, ours_onnx, ours_torch = _trap_case(tmp_path, {"x": (1, 8, 4, 6)}, '''
layer { name: "r" type: "Reorg" bottom: "x" top: "r" reorg_param { stride: 2 } }''', "r")
    x = inputs["x"]
    space_to_depth = x.reshape(1, 8, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(1, 32, 2, 3)
    assert space_to_depth.shape == ref.shape
    assert rel_error(space_to_depth, ref) > 0.5
    np.testing.assert_array_equal(ours_onnx, ref.astype(np.float32))
    np.testing.assert_array_equal(ours_torch, ref.astype(np.float32))


# ----------------------------------------------------------------------------- refusals

REFUSED = {
    "interp_positive_pad": ('''
layer { name: "bad" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 pad_beg: 1 } }''',
                            "pad_beg"),
    "interp_two_sizes": ('''
layer { name: "bad" type: "Interp" bottom: "x" top: "y"
  interp_param { zoom_factor: 2 height: 3 width: 3 } }''', "exactly one"),
    "interp_no_size": ('''
layer { name: "bad" type: "Interp" bottom: "x" top: "y" }''', "exactly one"),
    "shuffle_group_does_not_divide": ('''
layer { name: "bad" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 4 } }''',
                                      "group 4"),
    "reorg_indivisible": ('''
layer { name: "bad" type: "Reorg" bottom: "x" top: "y" reorg_param { stride: 2 } }''', "divisible"),
    "reorg_without_stride": ('''
layer { name: "bad" type: "Reorg" bottom: "x" top: "y" }''', "stride"),
    "unpool_mask_of_other_shape": ('''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "bad" type: "Upsample" bottom: "x" bottom: "m" top: "u" }''', "mask"),
    "segnet_upsample_without_mask": ('''
layer { name: "bad" type: "Upsample" bottom: "x" top: "u"
  upsample_param { upsample_h: 14 upsample_w: 18 } }''', "mask"),
    "upsample_pad_out_with_scale_3": ('''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 3 stride: 3 } }
layer { name: "bad" type: "Upsample" bottom: "p" bottom: "m" top: "u"
  upsample_param { scale: 3 pad_out_h: true } }''', "scale 2"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_layer_named(tmp_path, case):
    body, words = REFUSED[case]
    text = net_text({"x": (1, 6, 7, 9)}, body)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    with pytest.raises(SenetError) as error:
        senet.load_caffe(None, proto)
    assert "bad" in str(error.value) and words in str(error.value)


# The zoo nets that use these layers are tested whole in tests/converter/test_zoo.py.


# ----------------------------------------------------------------------------- OpenCV

OPENCV = {
    "interp_zoom": 'interp_param { zoom_factor: 3 }',
    "interp_height_width": 'interp_param { height: 9 width: 4 }',
}
# Not compared: a shrink_factor Interp, which OpenCV 4.14 sizes to an empty blob (its
# importer fails 'total(os[i]) > 0'); the fork's rule (n - 1) / shrink + 1 is unambiguous in
# interp_layer.cpp, so OpenCV is the one that is wrong there.


@pytest.mark.parametrize("case", ["interp_zoom", "interp_height_width", "shuffle_channel",
                                  "relu6"])
def test_reference_agrees_with_opencv_dnn(tmp_path, case):
    """OpenCV dnn 4.x implements Interp (aligned corners), ShuffleChannel and ReLU6 in its own
    Caffe importer: a second reference, independent of the fork sources read here (it has no
    BN, Upsample or Reorg of these forks)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")
    layer = {"shuffle_channel": 'type: "ShuffleChannel" shuffle_channel_param { group: 3 }',
             "relu6": 'type: "ReLU6"'}.get(case, f'type: "Interp" {OPENCV.get(case, "")}')
    x = make_inputs({"x": (1, 6, 5, 7)})["x"]
    text = net_text({"x": x.shape}, f'layer {{ name: "l" {layer} bottom: "x" top: "y" }}')
    proto, model = write_net(tmp_path, text, {})
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    net.setInput(x, "x")
    theirs = net.forward()
    assert rel_error(theirs, reference(text, {}, {"x": x})["y"]) <= 1e-6


def test_exported_program_runs_any_batch(tmp_path):
    """A chain of the fork layers through senet.convert to .pt2 (torch.export), safetensors
    (senet.load) and ONNX (opsets 13, 17, 22) runs a batch other than the prototxt's, as the
    reference does."""
    import torch
    import senet.kernels  # noqa: F401  (a bare .pt2 needs the senet ops)
    body = '''
layer { name: "bn" type: "BN" bottom: "x" top: "bn" }
layer { name: "sh" type: "ShuffleChannel" bottom: "bn" top: "sh" shuffle_channel_param { group: 3 } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "sh" top: "dw"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
layer { name: "hs" type: "HardSwish" bottom: "dw" top: "hs" }
layer { name: "p" type: "Pooling" bottom: "hs" top: "p" top: "m"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" }
layer { name: "i" type: "Interp" bottom: "u" top: "i" interp_param { height: 6 width: 10 } }
layer { name: "r" type: "Reorg" bottom: "i" top: "r" reorg_param { stride: 2 } }
layer { name: "n" type: "Upsample" bottom: "r" top: "n" upsample_param { scale: 2 } }'''
    text = net_text({"x": (2, 12, 8, 8)}, body)
    weights = seeded_weights(text, {"x": (2, 12, 8, 8)})
    proto, model = write_net(tmp_path, text, weights)
    path = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=proto, outputs=["n"])
    module = torch.export.load(str(path)).module()
    x = make_inputs({"x": (3, 12, 8, 8)})["x"]
    ref = reference(text, weights, {"x": x})["n"]
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape and rel_error(ours, ref) <= TOL
    senet.convert(model, "safetensors", tmp_path / "m.safetensors", prototxt=proto,
                  outputs=["n"])
    with torch.no_grad():
        loaded = senet.load(tmp_path / "m.safetensors")(torch.from_numpy(x)).numpy()
    assert rel_error(loaded, ref) <= TOL
    for opset in (13, 17, 22):
        onnx_path = senet.convert(model, "onnx", tmp_path / f"m{opset}.onnx", prototxt=proto,
                                  outputs=["n"], opset=opset)
        assert rel_error(run_onnx(onnx_path, {"x": x})["n"], ref) <= TOL, opset
