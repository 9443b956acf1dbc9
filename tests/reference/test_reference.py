"""Sanity tests of the reference implementation itself (no converter involved).

Small cases have hand-computed expectations; the real-Caffe cases compare
against tensors produced by a compiled Caffe (skipped when ../shared is absent).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from . import SHARED_DIR, shared_missing_reason
from .caffe_forward import SUPPORTED_TYPES, forward, layer_type, net_layers, pooled_size
from .caffemodel_wire import read_caffemodel, read_caffemodel_layers
from .prototxt_text import PrototxtError, get, get_all, parse_prototxt
from .random_weights import make_input, make_weights

FIXTURES = SHARED_DIR / "fixtures"
REAL = FIXTURES / "real_caffe"
CASES = REAL / "caffe_reference_outputs"
SENET = FIXTURES / "senet_prototxt"


def _net(body: str, inputs: str = 'input: "data"') -> dict:
    return parse_prototxt(inputs + "\n" + body)


def _run(body: str, x, weights=None, dtype=np.float64, **extra_inputs):
    """Run ``body`` with net inputs "data" (= x) plus any named extra inputs."""
    net = _net(body, " ".join(f'input: "{k}"' for k in ["data", *extra_inputs]))
    return forward(net, weights or {}, {"data": np.asarray(x, dtype=np.float64), **extra_inputs},
                   dtype=dtype)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


# --------------------------------------------------------------------------- #
# Text-format parser
# --------------------------------------------------------------------------- #

def test_parser_values_and_repetition():
    text = r"""
    name: "net"  # trailing comment
    layer { name: 'a\'b' type: "Pooling" pooling_param: { pool: MAX kernel_size: 3 } }
    layer < name: "b" >
    dims: [1, 2, 3]
    x: 1e-5 y: -2.5 z: 0x1F w: .5 v: 3f u: inf t: -inf s: nan
    flag: true other: False
    s2: "ab" "cd"
    hash: "a#b"  # the '#' inside quotes is not a comment
    """
    d = parse_prototxt(text)
    assert d["name"] == ["net"]
    assert [get(l, "name") for l in d["layer"]] == ["a'b", "b"]
    pool = get(d["layer"][0], "pooling_param")
    assert pool == {"pool": ["MAX"], "kernel_size": [3]}
    assert d["dims"] == [1, 2, 3]
    assert d["x"] == [1e-5] and d["y"] == [-2.5] and d["z"] == [31] and d["w"] == [0.5]
    assert d["v"] == [3.0] and isinstance(d["v"][0], float)
    assert d["u"] == [math.inf] and d["t"] == [-math.inf] and math.isnan(d["s"][0])
    assert d["flag"] == [True] and d["other"] == [False]
    assert d["s2"] == ["abcd"] and d["hash"] == ["a#b"]
    assert get(d, "missing", 7) == 7 and get_all(d, "missing") == []
    assert isinstance(get(pool, "kernel_size"), int)


def test_parser_reports_line_of_error():
    with pytest.raises(PrototxtError, match="line 3"):
        parse_prototxt('a: 1\nb {\n  c: }\n')
    with pytest.raises(PrototxtError):
        parse_prototxt("layer { name: 'x' ")


@pytest.mark.skipif(shared_missing_reason("fixtures") is not None,
                    reason=str(shared_missing_reason("fixtures")))
def test_parser_reads_every_fixture_prototxt():
    paths = sorted(SENET.glob("*.prototxt")) + sorted(REAL.rglob("*.prototxt"))
    assert len(paths) >= 7
    for path in paths:
        net = parse_prototxt(path.read_text())
        assert net_layers(net) or net.get("input"), path  # a bare input net has no layer
    inception = parse_prototxt((SENET / "SE-BN-Inception.prototxt").read_text())
    scales = [l for l in net_layers(inception) if len(get_all(l, "bottom")) == 2
              and layer_type(l) == "Scale"]
    assert scales and all(get(get(l, "scale_param"), "axis") == 0 for l in scales)
    v1 = parse_prototxt((REAL / "exp_caffe_lenet_v1/lenet.prototxt").read_text())
    assert v1["input"] == ["data"] and v1["input_dim"] == [64, 1, 28, 28]
    assert layer_type(net_layers(v1)[0]) == "Convolution"


# --------------------------------------------------------------------------- #
# Pooling geometry and arithmetic
# --------------------------------------------------------------------------- #

def test_pooled_size_rules():
    assert pooled_size(112, 3, 2, 0) == 56            # ceil(109/2) + 1
    assert pooled_size(112, 3, 2, 0, "FLOOR") == 55   # floor(109/2) + 1
    # MTCNN det1 pool1 (2x2/s2) on 59x45 -> 30x23; a 3x3/s2 window would give 29x22.
    assert (pooled_size(59, 2, 2, 0), pooled_size(45, 2, 2, 0)) == (30, 23)
    assert (pooled_size(59, 3, 2, 0), pooled_size(45, 3, 2, 0)) == (29, 22)
    assert pooled_size(22, 3, 2, 0) == 11 and pooled_size(46, 3, 2, 0) == 23
    # The last window may not start in the padding: ceil((5+2-2)/2)+1 = 4 -> 3.
    assert pooled_size(5, 2, 2, 1) == 3
    # Caffe applies that check on both axes when either axis has padding.
    assert pooled_size(5, 1, 3, 0, any_pad=True) == 2
    assert pooled_size(5, 1, 3, 0, any_pad=False) == 3


POOL = """layer {{ name: "p" type: "Pooling" bottom: "data" top: "p"
  pooling_param {{ {} }} }}"""


def test_ave_pool_divisor_counts_padding_up_to_h_plus_pad():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    out = _run(POOL.format("pool: AVE kernel_size: 3 stride: 2 pad: 1"), x)["p"]
    # Every window's divisor is 9 (padded cells count) though only 4 cells are real.
    np.testing.assert_allclose(out[0, 0], np.array([[8, 12], [20, 24]]) / 9.0, rtol=1e-15)
    ones = np.ones((1, 1, 4, 4))
    out = _run(POOL.format("pool: AVE kernel_size: 3 stride: 2 pad: 1"), ones)["p"]
    # Per axis: divisors [3, 3, 2] (last window stops at H + pad), real cells [2, 3, 1].
    frac = np.array([2 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(out[0, 0], np.outer(frac, frac), rtol=1e-15)


def test_ave_pool_ceil_without_padding_divides_by_clipped_window():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out = _run(POOL.format("pool: AVE kernel_size: 3 stride: 2"), x)["p"]
    # Windows rows [0,3) and [2,4): the second is clipped at H, divisor 2 along that axis.
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 1, 1] == pytest.approx((10 + 11 + 14 + 15) / 4)
    assert out[0, 0, 0, 1] == pytest.approx((2 + 3 + 6 + 7 + 10 + 11) / 6)


def test_max_pool_ignores_padding_and_global_pooling():
    x = -1.0 - np.arange(9.0).reshape(1, 1, 3, 3)
    out = _run(POOL.format("pool: MAX kernel_size: 3 stride: 2 pad: 1"), x)["p"]
    np.testing.assert_array_equal(out[0, 0], [[-1, -2], [-4, -5]])
    out = _run(POOL.format("pool: MAX global_pooling: true"), x)["p"]
    assert out.shape == (1, 1, 1, 1) and out.item() == -1
    out = _run(POOL.format("pool: AVE global_pooling: true"), x)["p"]
    assert out.item() == pytest.approx(-5.0)
    out = _run(POOL.format("pool: MAX kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 3"), x)["p"]
    np.testing.assert_array_equal(out[0, 0, :, 0], [-1, -4, -7])


# --------------------------------------------------------------------------- #
# Convolution and inner product
# --------------------------------------------------------------------------- #

def _naive_conv(x, w, b, stride, pad, dil, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for ki in range(kh):
                    for kj in range(kw):
                        patch = xp[:, g * cg:(g + 1) * cg,
                                   i * stride[0] + ki * dil[0], j * stride[1] + kj * dil[1]]
                        y[:, oc, i, j] += patch @ w[oc, :, ki, kj]
        y[:, oc] += b[oc]
    return y


def test_convolution_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    body = """layer { name: "c" type: "Convolution" bottom: "data" top: "c"
      convolution_param { num_output: 1 kernel_size: 2 bias_term: false } }"""
    out = _run(body, x, {"c": [np.ones((1, 1, 2, 2))]})["c"]
    np.testing.assert_array_equal(out[0, 0], [[8, 12], [20, 24]])


@pytest.mark.parametrize("params, group", [
    ("kernel_size: 3 pad: 1 stride: 2", 1),
    ("kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 2", 2),
    ("kernel_size: 3 kernel_size: 2 pad: 1 pad: 2 stride: 2 stride: 1 dilation: 2", 4),
    ("kernel_size: 1 stride: 2", 4),
])
def test_convolution_matches_naive_loops(params, group):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 7, 6))
    body = f"""layer {{ name: "c" type: "Convolution" bottom: "data" top: "c"
      convolution_param {{ num_output: 4 group: {group} {params} }} }}"""
    p = get(_net(body)["layer"][0], "convolution_param")
    ks = get_all(p, "kernel_size") or [get(p, "kernel_h"), get(p, "kernel_w")]
    kh, kw = (ks * 2)[:2]
    w = rng.standard_normal((4, 8 // group, kh, kw))
    b = rng.standard_normal(4)
    got = _run(body, x, {"c": [w, b]})["c"]

    def pair(key, hk, wk, default):
        vals = get_all(p, key) or ([get(p, hk), get(p, wk)] if hk in p else [default])
        return tuple((vals * 2)[:2])
    ref = _naive_conv(x, w, b, pair("stride", "stride_h", "stride_w", 1),
                      pair("pad", "pad_h", "pad_w", 0), pair("dilation", "", "", 1), group)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_inner_product_axis_transpose_and_legacy_shape():
    x = np.arange(12.0).reshape(2, 3, 2)
    w = np.arange(8.0).reshape(4, 2) - 3
    body = """layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 4 axis: -1 } }"""
    out = _run(body, x, {"ip": [w, np.arange(4.0)]})["ip"]
    np.testing.assert_allclose(out, x @ w.T + np.arange(4.0))
    body_t = body.replace("axis: -1", "axis: 1 transpose: true bias_term: false")
    wt = np.arange(24.0).reshape(6, 4)
    out = _run(body_t, x, {"ip": [wt]})["ip"]
    np.testing.assert_allclose(out, x.reshape(2, 6) @ wt)
    # Legacy 4-D blobs (1x1xOxK, 1x1x1xO) are accepted by element count.
    out = _run(body, x, {"ip": [w.reshape(1, 1, 4, 2), np.arange(4.0).reshape(1, 1, 1, 4)]})
    np.testing.assert_allclose(out["ip"], x @ w.T + np.arange(4.0))


# --------------------------------------------------------------------------- #
# Normalisation, scale, element-wise
# --------------------------------------------------------------------------- #

BN = """layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data"
  batch_norm_param { use_global_stats: true } }"""


def test_batchnorm_factor_rule():
    x = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    mean, var = np.array([4.0, 6.0]), np.array([8.0, 2.0])
    out = _run(BN, x, {"bn": [mean, var, np.array([2.0])]})["data"]
    expect = (np.array([1.0, 3.0]) - [2.0, 3.0]) / np.sqrt(np.array([4.0, 1.0]) + 1e-5)
    np.testing.assert_allclose(out.ravel(), expect, rtol=1e-15)
    # f == 0: Caffe uses scale 0, so mean and variance both become 0.
    out = _run(BN, x, {"bn": [mean, var, np.array([0.0])]})["data"]
    np.testing.assert_allclose(out.ravel(), [1 / math.sqrt(1e-5), 3 / math.sqrt(1e-5)])
    out = _run(BN.replace("use_global_stats: true", "eps: 0.5"), x,
               {"bn": [mean, var, np.array([1.0])]})["data"]
    np.testing.assert_allclose(out.ravel(), (np.array([1.0, 3.0]) - mean) / np.sqrt(var + 0.5))


def test_scale_and_bias_variants():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 2, 2))
    one = """layer { name: "s" type: "Scale" bottom: "data" top: "s"
      scale_param { bias_term: true } }"""
    g, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -1.0])
    out = _run(one, x, {"s": [g, b]})["s"]
    np.testing.assert_allclose(out, x * g[:, None, None] + b[:, None, None])
    # SE-BN-Inception: two bottoms, axis 0, the scale is N x C.
    two = """layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "s"
      scale_param { axis: 0 bias_term: false } }"""
    s = rng.standard_normal((2, 3))
    out = _run(two, x, w=s)["s"]
    np.testing.assert_allclose(out, x * s[:, :, None, None])
    out = _run(two, x, w=np.array(2.5))["s"]  # scalar (empty shape) scale
    np.testing.assert_allclose(out, 2.5 * x)
    tail = """layer { name: "s" type: "Scale" bottom: "data" top: "s"
      scale_param { axis: -2 num_axes: -1 } }"""
    m = rng.standard_normal((2, 2))
    np.testing.assert_allclose(_run(tail, x, {"s": [m]})["s"], x * m)
    bias = """layer { name: "b" type: "Bias" bottom: "data" top: "b" }"""
    np.testing.assert_allclose(_run(bias, x, {"b": [b]})["b"], x + b[:, None, None])


def test_axpy_by_hand():
    a = np.array([2.0, -1.0]).reshape(1, 2, 1, 1)
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    body = """layer { name: "ax" type: "Axpy" bottom: "a" bottom: "data" bottom: "y" top: "z" }"""
    net = parse_prototxt('input: "a" input: "data" input: "y"\n' + body)
    out = forward(net, {}, {"a": a, "data": x, "y": np.ones_like(x)})["z"]
    np.testing.assert_array_equal(out[0, 0], [[1, 3], [5, 7]])
    np.testing.assert_array_equal(out[0, 1], [[-3, -4], [-5, -6]])


def test_lrn_both_regions_by_hand():
    across = """layer { name: "n" type: "LRN" bottom: "data" top: "n"
      lrn_param { local_size: 3 alpha: 3 beta: 1 } }"""
    out = _run(across, np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1))["n"]
    # k + alpha/n * (sum of squares over channels c-1..c+1, zero padded)
    np.testing.assert_allclose(out.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-15)
    within = """layer { name: "n" type: "LRN" bottom: "data" top: "n"
      lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 9 beta: 1 k: 100 } }"""
    out = _run(within, np.ones((1, 1, 3, 3)))["n"]
    # 1 + alpha * (sum of squares in the padded 3x3 window) / 9; k is ignored.
    np.testing.assert_allclose(out[0, 0], [[1 / 5, 1 / 7, 1 / 5], [1 / 7, 1 / 10, 1 / 7],
                                           [1 / 5, 1 / 7, 1 / 5]], rtol=1e-15)


def test_activations():
    x = np.array([-2.0, -0.5, 0.0, 3.0]).reshape(1, 2, 2, 1)
    layers = """
    layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: 0.1 } }
    layer { name: "pr" type: "PReLU" bottom: "data" top: "pr" }
    layer { name: "sg" type: "Sigmoid" bottom: "data" top: "sg" }
    layer { name: "th" type: "TanH" bottom: "data" top: "th" }
    layer { name: "pw" type: "Power" bottom: "data" top: "pw"
            power_param { power: 2 scale: 2 shift: 1 } }
    layer { name: "p0" type: "Power" bottom: "data" top: "p0"
            power_param { power: 3 scale: 0 shift: 2 } }
    layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: 0.3 } }
    layer { name: "sm" type: "Softmax" bottom: "data" top: "sm" softmax_param { axis: 2 } }
    """
    out = _run(layers, x, {"pr": [np.array([0.25, 0.5])]})
    v = x.ravel()
    np.testing.assert_allclose(out["r"].ravel(), [-0.2, -0.05, 0, 3])
    np.testing.assert_allclose(out["pr"].ravel(), [-0.5, -0.125, 0, 3])
    np.testing.assert_allclose(out["sg"].ravel(), 1 / (1 + np.exp(-v)), rtol=1e-15)
    np.testing.assert_allclose(out["th"].ravel(), np.tanh(v))
    np.testing.assert_allclose(out["pw"].ravel(), (1 + 2 * v) ** 2)
    np.testing.assert_allclose(out["p0"].ravel(), [8, 8, 8, 8])
    np.testing.assert_array_equal(out["d"], x)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    np.testing.assert_allclose(out["sm"], e / e.sum(axis=2, keepdims=True))


def test_shape_and_multi_blob_layers():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    layers = """
    layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" }
    layer { name: "sp" type: "Slice" bottom: "data" top: "u" top: "v"
            slice_param { axis: 2 slice_point: 1 } }
    layer { name: "cc" type: "Concat" bottom: "c" bottom: "a" top: "cc"
            concat_param { concat_dim: 1 } }
    layer { name: "es" type: "Eltwise" bottom: "a" bottom: "b" top: "es"
            eltwise_param { coeff: 2 coeff: -1 } }
    layer { name: "ep" type: "Eltwise" bottom: "a" bottom: "b" top: "ep"
            eltwise_param { operation: PROD } }
    layer { name: "em" type: "Eltwise" bottom: "c" bottom: "a" top: "em"
            eltwise_param { operation: MAX } }
    layer { name: "fl" type: "Flatten" bottom: "data" top: "fl"
            flatten_param { axis: 1 end_axis: 2 } }
    layer { name: "rs" type: "Reshape" bottom: "data" top: "rs"
            reshape_param { shape { dim: 0 dim: -1 } } }
    layer { name: "r2" type: "Reshape" bottom: "data" top: "r2"
            reshape_param { axis: 1 num_axes: 1 shape { dim: 3 dim: 1 } } }
    layer { name: "pm" type: "Permute" bottom: "data" top: "pm"
            permute_param { order: 0 order: 2 } }
    layer { name: "spl" type: "Split" bottom: "data" top: "s1" top: "s2" }
    """
    out = _run(layers, x)
    np.testing.assert_array_equal(out["b"], x[:, 1:2])
    np.testing.assert_array_equal(out["v"], x[:, :, 1:])
    np.testing.assert_array_equal(out["cc"], np.concatenate([x[:, 2:], x[:, :1]], axis=1))
    np.testing.assert_array_equal(out["es"], 2 * x[:, :1] - x[:, 1:2])
    np.testing.assert_array_equal(out["ep"], x[:, :1] * x[:, 1:2])
    np.testing.assert_array_equal(out["em"], x[:, 2:])
    assert out["fl"].shape == (2, 6, 2) and out["rs"].shape == (2, 12)
    assert out["r2"].shape == (2, 3, 1, 2, 2)
    np.testing.assert_array_equal(out["pm"], x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(out["s2"], x)


def test_phase_filter_v1_names_and_errors():
    body = """
    layers { name: "r" type: RELU bottom: "data" top: "r" }
    layers { name: "t" type: TANH bottom: "data" top: "r" include { phase: TRAIN } }
    layers { name: "s" type: SIGMOID bottom: "data" top: "s" exclude { phase: TEST } }
    """
    out = _run(body, np.array([[-1.0, 2.0]]))
    np.testing.assert_array_equal(out["r"], [[0.0, 2.0]])
    assert "s" not in out
    with pytest.raises(NotImplementedError, match="'Gizmo'"):
        _run('layer { name: "g" type: "Gizmo" bottom: "data" top: "g" }', np.zeros(2))
    with pytest.raises(ValueError, match="data layer"):
        _run('layer { name: "d" type: "Data" top: "x" }', np.zeros(2))


def test_float32_mode_stays_float32():
    rng = np.random.default_rng(2)
    body = BN + """
    layer { name: "p" type: "Pooling" bottom: "data" top: "p"
            pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
    layer { name: "n" type: "LRN" bottom: "p" top: "n" lrn_param { norm_region: WITHIN_CHANNEL } }
    layer { name: "ip" type: "InnerProduct" bottom: "n" top: "ip"
            inner_product_param { num_output: 3 } }
    layer { name: "sm" type: "Softmax" bottom: "ip" top: "sm" }
    """
    w = {"bn": [np.ones(2), np.ones(2), np.array([2.0])],
         "ip": [rng.standard_normal((3, 8)), np.zeros(3)]}
    x = rng.standard_normal((1, 2, 3, 3))
    out32 = _run(body, x, w, dtype=np.float32)
    out64 = _run(body, x, w)
    assert all(v.dtype == np.float32 for v in out32.values())
    assert _rel(out32["sm"].astype(np.float64), out64["sm"]) < 1e-5


# --------------------------------------------------------------------------- #
# Real Caffe outputs
# --------------------------------------------------------------------------- #

def _case_params():
    reason = shared_missing_reason("fixtures", "real_caffe", "caffe_reference_outputs")
    if reason:
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(p.parent, id=p.parent.name) for p in sorted(CASES.glob("*/case.json"))]


@pytest.mark.parametrize("case_dir", _case_params())
def test_matches_real_caffe(case_dir):
    case = json.loads((case_dir / "case.json").read_text())
    net = parse_prototxt((REAL / case["prototxt"]).read_text())
    unsupported = {layer_type(l) for l in net_layers(net)} - SUPPORTED_TYPES
    if unsupported:
        pytest.skip(f"layer types not in the reference: {sorted(unsupported)}")
    weights = read_caffemodel(REAL / case["caffemodel"])
    inputs = {name: np.load(case_dir / f"input__{name}.npy") for name in case["inputs"]}
    blobs = forward(net, weights, inputs)
    for name, meta in case["outputs"].items():
        ref = np.load(case_dir / meta["file"])
        assert blobs[name].shape == ref.shape, name
        assert _rel(blobs[name], ref) < 1e-4, name
    if (case_dir / "all_blobs.npz").exists():
        with np.load(case_dir / "all_blobs.npz") as every:
            for key in every.files:
                name = key.replace("__", "/")
                if name in blobs:  # Caffe's auto-inserted split blobs are not ours
                    assert _rel(blobs[name], every[key]) < 1e-4, name


@pytest.mark.skipif(shared_missing_reason("fixtures", "real_caffe") is not None,
                    reason=str(shared_missing_reason("fixtures", "real_caffe")))
def test_caffemodel_reader_v1_and_v2():
    v1 = read_caffemodel_layers(REAL / "exp_caffe_lenet_v1/lenet_iter_10000.caffemodel")
    ip1 = next(blobs for name, kind, blobs in v1 if name == "ip1")
    assert [b.shape for b in ip1] == [(1, 1, 500, 800), (1, 1, 1, 500)]
    assert {kind for _, kind, _ in v1} >= {"CONVOLUTION", "INNER_PRODUCT", "POOLING"}
    v2 = read_caffemodel(REAL / "lijianfei_cifar10_bn/cifar10_ResNet_20_iter_53500.caffemodel")
    assert [b.shape for b in v2["conv1/bn"]] == [(16,), (16,), (1,)]
    assert all(b.dtype == np.float32 for b in v2["conv1"])


# --------------------------------------------------------------------------- #
# Random weights
# --------------------------------------------------------------------------- #

def test_make_input_is_image_like_and_seeded():
    a = make_input((2, 3, 32, 40), seed=5)
    assert a.dtype == np.float32 and a.shape == (2, 3, 32, 40)
    assert a.min() >= -128 and a.max() <= 128 and 20 < a.std() < 80
    np.testing.assert_array_equal(a, make_input((2, 3, 32, 40), seed=5))
    assert not np.array_equal(a, make_input((2, 3, 32, 40), seed=6))


@pytest.mark.skipif(shared_missing_reason("fixtures", "real_caffe") is not None,
                    reason=str(shared_missing_reason("fixtures", "real_caffe")))
def test_make_weights_deterministic_and_caffe_shaped():
    net = parse_prototxt((REAL / "lijianfei_cifar10_bn/ResNet_20_deploy.DERIVED.prototxt")
                         .read_text())
    w1 = make_weights(net, {"data": (1, 3, 32, 32)}, seed=3)
    w2 = make_weights(net, {"data": (1, 3, 32, 32)}, seed=3)
    w3 = make_weights(net, {"data": (1, 3, 32, 32)}, seed=4)
    assert w1.keys() == w2.keys()
    for name in w1:
        assert all(a.dtype == np.float32 and np.array_equal(a, b)
                   for a, b in zip(w1[name], w2[name], strict=True))
    assert not np.array_equal(w1["conv1"][0], w3["conv1"][0])
    real = read_caffemodel(REAL / "lijianfei_cifar10_bn/cifar10_ResNet_20_iter_53500.caffemodel")
    for name, blobs in w1.items():
        assert [b.shape for b in blobs] == [b.shape for b in real[name]], name
    mean, var, factor = w1["conv1/bn"]
    assert 0.5 <= factor[0] <= 2 and np.all(var > 0)
    out = forward(net, w1, {"data": make_input((1, 3, 32, 32), seed=9)})
    assert np.isfinite(out["fc1"]).all()


@pytest.mark.skipif(shared_missing_reason("fixtures", "senet_prototxt") is not None,
                    reason=str(shared_missing_reason("fixtures", "senet_prototxt")))
@pytest.mark.parametrize("model", ["SE-ResNet-50", "SENet-154"])
def test_senet_random_weights_give_sane_logits(model):
    net = parse_prototxt((SENET / f"{model}.prototxt").read_text())
    start = time.perf_counter()
    weights = make_weights(net, {"data": (1, 3, 224, 224)}, seed=0)
    made = time.perf_counter()
    x = make_input((1, 3, 224, 224), seed=1)
    out = forward(net, weights, {"data": x})
    done = time.perf_counter()
    print(f"\n{model}: make_weights {made - start:.2f}s, float64 forward {done - made:.2f}s")
    logits = out["classifier"]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
    assert 1 <= logits.std() <= 10
    prob = out["prob"]
    assert prob.sum() == pytest.approx(1.0) and prob.max() < 0.999
    if model == "SE-ResNet-50":
        out32 = forward(net, weights, {"data": x}, dtype=np.float32)
        assert out32["classifier"].dtype == np.float32
        assert _rel(out32["classifier"].astype(np.float64), logits) < 1e-3
