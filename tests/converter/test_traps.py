"""The traps every peer fell into. Each test checks senet against the reference AND that the
trap's wrong answer is far from it, so the test fails if the converter falls in."""

from __future__ import annotations

import numpy as np

from tests.converter.harness import check_net, rel_error
from tests.converter.test_layers import net_text
from tests.reference.random_weights import make_input

WRONG = 1e-2  # a wrong variant must differ by more than this (relative)


def _inputs(shapes, seed=3):
    return {n: make_input(s, seed + i) for i, (n, s) in enumerate(shapes.items())}


def test_axpy_operands_in_the_senet_order(tmp_path):
    shapes = {"s": (2, 4, 1, 1), "x": (2, 4, 6, 5), "y": (2, 4, 6, 5)}
    body = 'layer { name: "a" type: "Axpy" bottom: "s" bottom: "x" bottom: "y" top: "a" }'
    inputs = _inputs(shapes)
    ours = check_net(tmp_path, net_text(shapes, body), {}, inputs, ["a"])["a"]
    swapped = inputs["s"] * inputs["y"] + inputs["x"]  # OpenCV's importer
    assert rel_error(ours, swapped) > WRONG


def test_pooling_rounds_up_and_clips(tmp_path):
    shapes = {"x": (1, 3, 14, 11)}
    body = ('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
            'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }')
    ours = check_net(tmp_path, net_text(shapes, body), {}, _inputs(shapes), ["p"])["p"]
    floor_shape = (1, 3, (14 - 3) // 2 + 1, (11 - 3) // 2 + 1)
    assert ours.shape == (1, 3, 7, 5) and ours.shape != floor_shape


def test_ave_divisor_is_the_window_clipped_to_the_padded_input(tmp_path):
    shapes = {"x": (1, 2, 6, 6)}
    body = ('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
            'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }')
    inputs = {"x": np.ones((1, 2, 6, 6), np.float32)}
    ours = check_net(tmp_path, net_text(shapes, body), {}, inputs, ["p"])["p"]
    # Output 4x4 (ceil): the last window starts at 5 and ends at 8 > 6+1, clipped to 7.
    assert ours.shape == (1, 2, 4, 4)
    # On an all-ones input every output is (real cells) / (Caffe's divisor); the divisor
    # counts padding up to size+pad but not the ceil overhang.
    assert np.isclose(ours[0, 0, 0, 0], 4 / 9) and np.isclose(ours[0, 0, 3, 3], 1 / 4)
    # A k*k divisor everywhere gives 1/9 there; excluding all padding gives 1.
    assert abs(ours[0, 0, 3, 3] - 1 / 9) > WRONG and abs(ours[0, 0, 3, 3] - 1.0) > WRONG


def test_batchnorm_divides_by_the_stored_factor(tmp_path):
    shapes = {"x": (2, 3, 4, 4)}
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }'
    mean, var = np.array([5.0, -3.0, 1.0]), np.array([4.0, 9.0, 0.25])
    for factor in (0.25, 0.0):
        weights = {"bn": [np.float32(mean * factor), np.float32(var * factor),
                          np.array([factor], np.float32)]}
        inputs = _inputs(shapes)
        ours = check_net(tmp_path, net_text(shapes, body), weights, inputs, ["bn"])["bn"]
        x = inputs["x"].astype(np.float64)
        ignored = (x - (mean * factor)[None, :, None, None]) / np.sqrt(
            (var * factor)[None, :, None, None] + 1e-5)
        if factor == 0.0:  # f = 0: statistics count as zero, not a division by zero
            np.testing.assert_allclose(ours, x / np.sqrt(1e-5), rtol=1e-5)
        else:
            assert rel_error(ours, ignored) > WRONG


def test_eltwise_coefficients_are_applied(tmp_path):
    shapes = {"x": (2, 3, 4, 4), "y": (2, 3, 4, 4)}
    body = ('layer { name: "e" type: "Eltwise" bottom: "x" bottom: "y" top: "e" '
            'eltwise_param { operation: SUM coeff: 1 coeff: -1 } }')
    inputs = _inputs(shapes)
    ours = check_net(tmp_path, net_text(shapes, body), {}, inputs, ["e"])["e"]
    assert rel_error(ours, inputs["x"] + inputs["y"]) > WRONG


def test_scale_two_bottoms_respects_axis(tmp_path):
    shapes = {"x": (2, 3, 4, 4), "s": (2, 3)}
    body = ('layer { name: "sc" type: "Scale" bottom: "x" bottom: "s" top: "sc" '
            'scale_param { axis: 0 } }')
    inputs = _inputs(shapes)
    ours = check_net(tmp_path, net_text(shapes, body), {}, inputs, ["sc"])["sc"]
    np.testing.assert_allclose(ours, inputs["x"] * inputs["s"][:, :, None, None], rtol=1e-6)
