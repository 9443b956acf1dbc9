"""Element-wise layers (ELU, Swish, AbsVal, BNLL, Threshold, Clip, Power, Exp, Log, TanH, ...):
the float64 reference against real Caffe's outputs, then senet's ONNX and torch emitters
against the reference on parameter combinations and edge inputs (±0, ±inf, NaN, exact
thresholds, negative bases) that the real cases lack, the traps, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import senet
from senet.errors import SenetError
from tests.conftest import require_shared
from tests.converter.harness import convert, reference, run_onnx, write_net
from tests.converter.test_layer_cases import assert_caffe_equal
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import forward
from tests.reference.caffemodel_wire import read_caffemodel
from tests.reference.prototxt_text import parse_prototxt

REAL_TYPES = ["AbsVal", "BNLL", "Clip", "ELU", "Exp", "Log", "Swish", "Threshold", "TanH",
              "Power", "Sigmoid", "ReLU"]
INF, NAN = np.inf, np.nan
EDGES = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.75, -3.75, 1e-3, -1e-3, 1e-30, 17.0,
         -17.0, 40.0, -40.0, 95.0, -95.0, INF, -INF, NAN]
# onnxruntime's exp, tanh and logistic kernels clamp their argument: a NaN may come out as a
# number, and ±inf as a saturated value, differently on different CPU kernels. Layers built on
# them get no NaN (and, where the clamped value would show, no inf).
NO_NAN = [v for v in EDGES if not np.isnan(v)]
FINITE = [v for v in EDGES if np.isfinite(v)]


def edge_input(edges=EDGES, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    """A (2, n) float32 batch: the edge values, then seeded values of about `spread`."""
    rng = np.random.default_rng(seed)
    edges = np.asarray(edges, np.float64)
    seeded = spread * rng.standard_normal(42 + edges.size % 2)
    values = np.concatenate([edges, seeded])
    return values.astype(np.float32).reshape(2, -1)


def layer_net(body: str, n: int) -> str:
    return net_text({"x": (2, n)}, body)


def run_emitters(tmp_path, text: str, x: np.ndarray, outputs: list[str]):
    """senet's ONNX (onnxruntime) and torch outputs of a net without learned blobs."""
    torch = pytest.importorskip("torch")
    proto, model = write_net(tmp_path, text, {})
    onnx_out = run_onnx(convert(tmp_path, model, proto, outputs), {"x": x})
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=outputs)
    with torch.no_grad():
        values = module(torch.from_numpy(x))
    values = values if isinstance(values, tuple) else (values,)
    return onnx_out, {name: v.numpy() for name, v in zip(outputs, values)}


def check_against_reference(tmp_path, body: str, x: np.ndarray, outputs: list[str]):
    """Both emitters equal the float64 reference (non-finite values exactly); returns the
    reference outputs."""
    text = layer_net(body, x.shape[1])
    onnx_out, torch_out = run_emitters(tmp_path, text, x, outputs)
    with np.errstate(all="ignore"):
        ref = reference(text, {}, {"x": x})
        # float32 Caffe overflows to inf where the float64 result exceeds FLT_MAX
        expected_f32 = {name: ref[name].astype(np.float32) for name in outputs}
    for name, expected in expected_f32.items():
        assert_caffe_equal(f"onnx {name}", onnx_out[name], expected)
        assert_caffe_equal(f"torch {name}", torch_out[name], expected)
    return ref


# ----------------------------------------------------------------------------- reference vs Caffe

@pytest.mark.parametrize("kind", REAL_TYPES)
def test_reference_equals_real_caffe(kind):
    """The float64 reference reproduces every real-Caffe case of the type (which validates it
    independently of senet)."""
    folder = require_shared("real_caffe", "layer_cases", kind)
    cases = sorted(folder.glob("*.npz"))
    assert cases
    for npz in cases:
        data = np.load(npz)
        inputs = {k[len("input__"):]: data[k] for k in data.files if k.startswith("input__")}
        net = parse_prototxt(npz.with_suffix(".prototxt").read_text())
        weights = read_caffemodel(npz.with_suffix(".caffemodel"))
        with np.errstate(all="ignore"):
            ours = forward(net, weights, inputs)
        for key in (k for k in data.files if k.startswith("output__")):
            name = key[len("output__"):]
            assert_caffe_equal(f"{npz.stem} {name}", ours[name].astype(np.float32), data[key])


# ----------------------------------------------------------------------------- seeded nets

SEEDED = {
    "elu_alpha0_and_negative": ('''
layer { name: "e0" type: "ELU" bottom: "x" top: "e0" elu_param { alpha: 0 } }
layer { name: "en" type: "ELU" bottom: "x" top: "en" elu_param { alpha: -0.75 } }''',
                                ["e0", "en"], NO_NAN),
    "swish_negative_beta": ('''
layer { name: "s" type: "Swish" bottom: "x" top: "s" swish_param { beta: -1.5 } }''', ["s"],
                            FINITE),
    "absval_bnll": ('''
layer { name: "a" type: "AbsVal" bottom: "x" top: "a" }
layer { name: "b" type: "BNLL" bottom: "x" top: "b" }''', ["a", "b"], NO_NAN),
    "clip_min_above_max_and_equal": ('''
layer { name: "c1" type: "Clip" bottom: "x" top: "c1" clip_param { min: 1 max: -1 } }
layer { name: "c2" type: "Clip" bottom: "x" top: "c2" clip_param { min: 0.5 max: 0.5 } }
layer { name: "c3" type: "Clip" bottom: "x" top: "c3" clip_param { min: -2 max: 3.75 } }''',
                                     ["c1", "c2", "c3"]),
    "threshold_inplace": ('''
layer { name: "e" type: "ELU" bottom: "x" top: "e" }
layer { name: "t" type: "Threshold" bottom: "e" top: "e" threshold_param { threshold: -0.5 } }''',
                          ["e"]),
    "exp_base_below_one_and_base_one": ('''
layer { name: "h" type: "Exp" bottom: "x" top: "h" exp_param { base: 0.5 scale: 0.25 shift: 2 } }
layer { name: "one" type: "Exp" bottom: "x" top: "one" exp_param { base: 1 scale: 3 shift: 2 } }
layer { name: "e" type: "Exp" bottom: "x" top: "e" exp_param { base: 2.718281828 } }''',
                                        ["h", "one", "e"], [v for v in FINITE if abs(v) < 50]),
    "log_base_below_one_negative_scale": ('''
layer { name: "l" type: "Log" bottom: "x" top: "l" log_param { base: 0.5 scale: -1 shift: 4 } }
layer { name: "m" type: "Log" bottom: "x" top: "m" log_param { base: 3 shift: 0.25 } }''',
                                          ["l", "m"], FINITE),
    "power_negative_bases": ('''
layer { name: "sq" type: "Power" bottom: "x" top: "sq" power_param { power: 2 shift: -1 } }
layer { name: "rt" type: "Power" bottom: "x" top: "rt" power_param { power: 0.5 } }
layer { name: "cb" type: "Power" bottom: "x" top: "cb" power_param { power: 3 scale: -0.5 } }
layer { name: "fr" type: "Power" bottom: "x" top: "fr" power_param { power: 1.5 scale: -1 } }
layer { name: "rc" type: "Power" bottom: "x" top: "rc" power_param { power: -1 } }
layer { name: "r2" type: "Power" bottom: "x" top: "r2" power_param { power: -2 shift: 0.5 } }''',
                             ["sq", "rt", "cb", "fr", "rc", "r2"],
                             # C's pow(-inf, 0.5) is +inf (Caffe and both emitters); the
                             # NumPy reference takes the square root, NaN. Left out here;
                             # test_power_half_follows_c_pow_... checks it without NumPy.
                             [v for v in EDGES if v != -INF]),
    "power_constants": ('''
layer { name: "p0" type: "Power" bottom: "x" top: "p0" power_param { power: 0 scale: 2 shift: -3 } }
layer { name: "s0" type: "Power" bottom: "x" top: "s0" power_param { power: 2 scale: 0 shift: 1.5 } }
layer { name: "nan" type: "Power" bottom: "x" top: "nan" power_param { power: 0.5 scale: 0 shift: -2 } }
layer { name: "id" type: "Power" bottom: "x" top: "id" power_param { power: 1 scale: 0 shift: 0.25 } }''',
                        ["p0", "s0", "nan", "id"]),
    "tanh_sigmoid_relu_edges": ('''
layer { name: "th" type: "TanH" bottom: "x" top: "th" }
layer { name: "sg" type: "Sigmoid" bottom: "x" top: "sg" }
layer { name: "lr" type: "ReLU" bottom: "x" top: "lr" relu_param { negative_slope: -0.5 } }''',
                                ["th", "sg", "lr"], FINITE),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_emitters_equal_reference(tmp_path, name):
    body, outputs, *edges = SEEDED[name]
    check_against_reference(tmp_path, body, edge_input(*edges), outputs)


def test_no_overflow_at_large_magnitude(tmp_path):
    """BNLL, ELU and Swish stay finite wherever Caffe does, far from 0."""
    x = edge_input([-1e4, -500.0, -89.0, -88.0, 88.0, 89.0, 500.0, 1e4, 3e38, -3e38],
                   spread=60.0)
    ref = check_against_reference(tmp_path, '''
layer { name: "b" type: "BNLL" bottom: "x" top: "b" }
layer { name: "e" type: "ELU" bottom: "x" top: "e" }
layer { name: "s" type: "Swish" bottom: "x" top: "s" }''', x, ["b", "e", "s"])
    assert all(np.isfinite(ref[name]).all() for name in ("b", "e", "s"))


# ----------------------------------------------------------------------------- traps

def test_trap_threshold_is_strict(tmp_path):
    """At x == threshold Caffe gives 0; the wrong `x >= threshold` gives 1 there."""
    x = edge_input([0.5, 0.5, -1.0, np.nextafter(np.float32(0.5), np.float32(1)), 0.0, NAN])
    text = layer_net('''
layer { name: "t" type: "Threshold" bottom: "x" top: "t" threshold_param { threshold: 0.5 } }
layer { name: "d" type: "Threshold" bottom: "x" top: "d" }''', x.shape[1])
    for out in run_emitters(tmp_path, text, x, ["t", "d"]):
        np.testing.assert_array_equal(out["t"], (x > 0.5).astype(np.float32))
        np.testing.assert_array_equal(out["d"], (x > 0).astype(np.float32))
        assert out["t"][x == 0.5].sum() == 0 and (x == 0.5).sum() == 2  # `>=` gives 2
        assert out["d"][x == 0].sum() == 0


def test_trap_exp_base_minus_one_means_e(tmp_path):
    """Base -1 (the default) is e, for the shift too: y = e^(shift + scale·x). Taking the base
    literally gives (-1)^(shift + scale·x), NaN for most x; so does an outer factor computed
    as pow(base, shift) = pow(-1, 0.25) without the base -1 case, as older Caffe code did."""
    x = edge_input([0.0, 1.0, -1.0, 0.5, 2.5])
    text = layer_net('''
layer { name: "d" type: "Exp" bottom: "x" top: "d" exp_param { scale: 0.5 shift: 0.25 } }
layer { name: "m" type: "Exp" bottom: "x" top: "m" exp_param { base: -1 scale: 0.5 shift: 0.25 } }''',
                     x.shape[1])
    expected = np.exp(0.25 + 0.5 * x.astype(np.float64)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        assert np.isnan(np.power(-1.0, 0.25 + 0.5 * x)).any()  # the literal reading
    for out in run_emitters(tmp_path, text, x, ["d", "m"]):
        for name in ("d", "m"):
            np.testing.assert_allclose(out[name], expected, rtol=2e-6)


def test_trap_log_base_applies_after_scale_and_shift(tmp_path):
    """y = ln(scale·x + shift) / ln(base). Applying scale and shift to log_base(x) instead
    (2·log10(x) + 0.5) differs by far more than rounding."""
    x = np.abs(edge_input([0.25, 1.0, 10.0, 100.0])) + np.float32(0.125)
    text = layer_net('''
layer { name: "l" type: "Log" bottom: "x" top: "l" log_param { base: 10 scale: 2 shift: 0.5 } }''',
                     x.shape[1])
    x64 = x.astype(np.float64)
    expected, wrong = np.log10(2 * x64 + 0.5), 2 * np.log10(x64) + 0.5
    assert np.abs(expected - wrong).max() > 0.5
    for out in run_emitters(tmp_path, text, x, ["l"]):
        np.testing.assert_allclose(out["l"], expected, rtol=1e-6, atol=1e-6)


def test_trap_power_scale0_is_a_constant(tmp_path):
    """power·scale == 0: Caffe fills shift^power whatever x is. Evaluating (0·x + 0)^-1
    instead gives -inf for negative x (0·x is -0) and NaN for x = ±inf."""
    x = edge_input()
    text = layer_net('''
layer { name: "p" type: "Power" bottom: "x" top: "p" power_param { power: -1 scale: 0 } }''',
                     x.shape[1])
    for out in run_emitters(tmp_path, text, x, ["p"]):
        np.testing.assert_array_equal(out["p"], np.full_like(x, INF))


# ----------------------------------------------------------------------------- refusals

REFUSED = {
    "clip_without_max": ('clip_param { min: 0 }', "Clip", "max"),
    "clip_without_min": ('clip_param { max: 6 }', "Clip", "min"),
    "clip_without_param": ('', "Clip", "min and max"),
    "exp_negative_base": ('exp_param { base: -2 }', "Exp", "base"),
    "exp_base_zero": ('exp_param { base: 0 }', "Exp", "base"),
    "log_base_one": ('log_param { base: 1 }', "Log", "base"),
    "log_negative_base": ('log_param { base: -3 }', "Log", "base"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refuses_what_caffe_refuses(tmp_path, name):
    param, kind, words = REFUSED[name]
    body = f'layer {{ name: "bad" type: "{kind}" bottom: "x" top: "y" {param} }}'
    proto = tmp_path / "bad.prototxt"
    proto.write_text(layer_net(body, 3))
    with pytest.raises(SenetError) as err:
        senet.load_caffe(prototxt=proto)
    assert "layer 'bad'" in str(err.value) and words in str(err.value)


def test_refuses_absval_in_place(tmp_path):
    proto = tmp_path / "bad.prototxt"
    proto.write_text(layer_net('layer { name: "a" type: "AbsVal" bottom: "x" top: "x" }', 3))
    with pytest.raises(SenetError, match="layer 'a'.*in place"):
        senet.load_caffe(prototxt=proto)


# ----------------------------------------------------------------------------- export

EVERY_NEW_LAYER = '''
layer { name: "a" type: "AbsVal" bottom: "x" top: "a" }
layer { name: "b" type: "BNLL" bottom: "x" top: "b" }
layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: -1 max: 2 } }
layer { name: "e" type: "ELU" bottom: "x" top: "e" }
layer { name: "ex" type: "Exp" bottom: "x" top: "ex" exp_param { base: 2 scale: 0.5 shift: 1 } }
layer { name: "l" type: "Log" bottom: "a" top: "l" log_param { base: 10 shift: 1 } }
layer { name: "t" type: "Threshold" bottom: "x" top: "t" }
layer { name: "s" type: "Swish" bottom: "x" top: "s" swish_param { beta: 2 } }
layer { name: "p" type: "Power" bottom: "x" top: "p" power_param { scale: 0 shift: 2 power: 2 } }
layer { name: "q" type: "Power" bottom: "a" top: "q" power_param { power: 0.5 shift: 1 } }'''


@pytest.mark.parametrize("opset", [13, 17, 22])
def test_onnx_checks_and_takes_any_batch(tmp_path, opset):
    import onnx
    from senet.converter.to_onnx import build_graph, write_model
    proto = tmp_path / "all.prototxt"
    proto.write_text(net_text({"x": (2, 3, 4)}, EVERY_NEW_LAYER))
    model, initializers = build_graph(senet.load_caffe(prototxt=proto), opset=opset)
    path = tmp_path / "all.onnx"
    write_model(path, model, initializers)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    assert all(v.shape == x.shape for v in run_onnx(path, {"x": x}).values())


def test_torch_export_takes_any_batch(tmp_path):
    torch = pytest.importorskip("torch")
    proto = tmp_path / "all.prototxt"
    proto.write_text(net_text({"x": (2, 3, 4)}, EVERY_NEW_LAYER))
    _, model = write_net(tmp_path, proto.read_text(), {})
    path = senet.convert(model, "torch", tmp_path / "all.pt2", prototxt=proto)
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        values = module(torch.randn(5, 3, 4))
    assert all(tuple(v.shape) == (5, 3, 4) for v in values)


def test_power_half_follows_c_pow_at_minus_inf_and_minus_zero(tmp_path):
    """Caffe's pow: (-inf)^0.5 = +inf and (-0)^-0.5 = +inf. A square root gives NaN and an
    inverse square root -inf there (torch.pow with a Python 0.5 / -0.5 does that)."""
    x = edge_input([-INF, -0.0, 0.0, INF])
    text = layer_net('''
layer { name: "h" type: "Power" bottom: "x" top: "h" power_param { power: 0.5 } }
layer { name: "r" type: "Power" bottom: "x" top: "r" power_param { power: -0.5 } }''',
                     x.shape[1])
    for out in run_emitters(tmp_path, text, x, ["h", "r"]):
        np.testing.assert_array_equal(out["h"][0, :4], [INF, 0.0, 0.0, INF])
        np.testing.assert_array_equal(out["r"][0, :4], [0.0, INF, INF, 0.0])


def test_setup_constants_are_float32_as_caffe_computes_them():
    from senet.converter.semantics import exp_factors, log_base_scale, power_constant
    assert power_constant(2, 0, 1.5) == 2.25 and power_constant(0, 3, 2) == 1.0
    assert np.isnan(power_constant(0.5, 0, -2)) and power_constant(-1, 0, 0) == INF
    assert power_constant(1e-25, 1e-25, 4) == 1.0  # power·scale underflows in float32
    assert power_constant(2, 0.5, 1) is None
    assert exp_factors(-1, 0.5, 0.25, "e") == (0.5, float(np.exp(np.float32(0.25))))
    assert exp_factors(2, 1, 0, "e") == (float(np.log(np.float32(2))), 1.0)
    assert log_base_scale(-1, "l") == 1.0
    assert log_base_scale(10, "l") == float(np.float32(1) / np.log(np.float32(10)))
