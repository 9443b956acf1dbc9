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
from tests.conftest import require_shared
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
