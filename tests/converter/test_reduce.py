"""ArgMax, MVN, Reduction, Tile, Embed, BatchReindex, Filter, Parameter, Silence.

- The float64 reference (tests/reference/forward_reduce.py, forward_index.py) against every
  real-Caffe case of these types: that validates the reference on its own.
- Seeded nets for parameters the real cases lack, through both emitters, against the reference.
- Traps: ArgMax's top_k output shape and tie order, MVN's eps placement, Embed's truncation,
  Tile's block order; what the converted models do with an index outside the table.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import senet
from senet.converter.load import load_net
from senet.errors import ShapeError
from tests.converter.harness import check_net, rel_error, run_onnx, write_net
from tests.converter.test_layer_cases import INDEX, assert_caffe_equal, load_case
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import forward
from tests.reference.caffemodel_wire import read_caffemodel
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input

TYPES = ("ArgMax", "MVN", "Reduction", "Tile", "Embed", "BatchReindex", "Filter", "Parameter",
         "Silence")
WRONG = 1e-2  # a wrong variant must differ from Caffe by more than this (relative)


def _real_cases() -> list[str]:
    if not INDEX.exists():
        return ["(../shared absent)"]
    cases = json.loads(INDEX.read_text())["cases"]
    return [f"{c['type']}/{c['case']}" for c in cases if c["type"] in TYPES]


@pytest.mark.parametrize("case", _real_cases())
def test_reference_equals_real_caffe(case):
    model, prototxt, inputs, outputs = load_case(case)
    blobs = forward(parse_prototxt(prototxt.read_text()), read_caffemodel(model), inputs)
    for name, caffe in outputs.items():
        assert_caffe_equal(name, blobs[name], caffe)


# ----------------------------------------------------------------------------- seeded nets

def _torch_outputs(model, prototxt, inputs):
    torch = pytest.importorskip("torch")
    net = senet.load_caffe(model, prototxt)
    module = senet.to_torch(net)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[n].astype(np.float32)) for n in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    return dict(zip(module.output_names, (v.numpy() for v in values)))


def both_emitters(tmp_path, shapes, body, inputs, weights=None, tol=1e-5):
    """ONNX (harness.check_net) and the torch module, each against the float64 reference, on
    every output the net has by default; returns the ONNX outputs."""
    text, weights = net_text(shapes, body), weights or {}
    proto, model = write_net(tmp_path, text, weights, name="seeded")
    outputs = [public for public, _ in senet.load_caffe(model, proto).output_pairs()]
    ours = check_net(tmp_path, text, weights, inputs, outputs, tol)
    reference = forward(parse_prototxt(text), weights, inputs)
    for name, value in _torch_outputs(model, proto, inputs).items():
        assert value.shape == reference[name].shape, name
        assert rel_error(value, reference[name]) <= tol, name
    return ours


def _ties(shape, seed):
    """Small integers: many equal values per row."""
    return np.round(make_input(shape, seed) / 60).astype(np.float32)


SEEDED = {
    "argmax_axis0_values": ({"x": (4, 3, 2)},
                            "argmax_param { axis: 0 top_k: 2 out_max_val: true }", _ties),
    "argmax_axis_neg2_ties": ({"x": (2, 7, 3)}, "argmax_param { axis: -2 top_k: 4 }", _ties),
    "argmax_no_axis_5d": ({"x": (2, 2, 3, 2, 2)}, "argmax_param { top_k: 5 out_max_val: true }",
                          _ties),
    "argmax_no_axis_1d": ({"x": (6,)}, "", make_input),
}


@pytest.mark.parametrize("case", sorted(SEEDED))
def test_argmax_seeded(tmp_path, case):
    shapes, param, source = SEEDED[case]
    body = f'layer {{ name: "a" type: "ArgMax" bottom: "x" top: "a" {param} }}'
    both_emitters(tmp_path, shapes, body, {"x": source(shapes["x"], 5)})


@pytest.mark.parametrize("param, shape", [
    ("mvn_param { across_channels: true eps: 0.001 }", (3, 2, 4)),
    ("mvn_param { normalize_variance: false }", (2, 3, 4, 1)),
    ("mvn_param { eps: 1.0 }", (2, 5)),
    ("", (4,)),
])
def test_mvn_seeded(tmp_path, param, shape):
    body = f'layer {{ name: "m" type: "MVN" bottom: "x" top: "m" {param} }}'
    both_emitters(tmp_path, {"x": shape}, body, {"x": make_input(shape, 2)})


@pytest.mark.parametrize("param", [
    "operation: SUMSQ axis: 0 coeff: 0.25", "operation: ASUM axis: -2", "operation: MEAN axis: 1",
    "operation: MEAN axis: 0", "operation: SUM axis: 2 coeff: -1",
])
def test_reduction_seeded(tmp_path, param):
    body = ('layer { name: "r" type: "Reduction" bottom: "x" top: "r" '
            f'reduction_param {{ {param} }} }}')
    both_emitters(tmp_path, {"x": (3, 2, 4, 2)}, body, {"x": make_input((3, 2, 4, 2), 4)})


@pytest.mark.parametrize("param", ["axis: 3 tiles: 2", "axis: -2 tiles: 1", "axis: 0 tiles: 3"])
def test_tile_seeded(tmp_path, param):
    body = f'layer {{ name: "t" type: "Tile" bottom: "x" top: "t" tile_param {{ {param} }} }}'
    both_emitters(tmp_path, {"x": (2, 3, 2, 2)}, body, {"x": make_input((2, 3, 2, 2), 6)})


def test_embed_4d_indices_and_no_bias(tmp_path):
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 7, (2, 3, 2, 2)).astype(np.float32) + 0.75
    weights = {"e": [rng.standard_normal((7, 3)).astype(np.float32)]}
    body = ('layer { name: "e" type: "Embed" bottom: "x" top: "e" '
            'embed_param { num_output: 3 input_dim: 7 bias_term: false } }')
    out = both_emitters(tmp_path, {"x": indices.shape}, body, {"x": indices}, weights)["e"]
    assert out.shape == (2, 3, 2, 2, 3)


def test_filter_three_blobs_4d_selector(tmp_path):
    shapes = {"a": (5, 2, 3), "b": (5, 4), "c": (5, 1, 2, 2), "s": (5, 1, 1, 1)}
    inputs = {n: make_input(s, i) for i, (n, s) in enumerate(shapes.items())}
    inputs["s"] = np.array([0, -0.0, 3, np.nan, 1e-30], np.float32).reshape(5, 1, 1, 1)
    body = ('layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "c" bottom: "s" '
            'top: "fa" top: "fb" top: "fc" }')
    out = both_emitters(tmp_path, shapes, body, inputs)
    # -0.0 is zero; NaN and a tiny value are not: samples 2, 3, 4 survive.
    np.testing.assert_array_equal(out["fb"], inputs["b"][2:])


def test_batch_reindex_4d(tmp_path):
    shapes = {"x": (3, 2, 2, 2), "i": (5,)}
    inputs = {"x": make_input(shapes["x"], 1),
              "i": np.array([2, 0.9, 1.5, 2.99, 0], np.float32)}
    body = 'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "r" }'
    out = both_emitters(tmp_path, shapes, body, inputs)["r"]
    np.testing.assert_array_equal(out, inputs["x"][[2, 0, 1, 2, 0]])


def test_silence_consumes_two_blobs_so_neither_is_an_output(tmp_path):
    body = ('layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
            'slice_param { axis: 1 } }\n'
            'layer { name: "q" type: "Silence" bottom: "a" bottom: "c" }')
    out = both_emitters(tmp_path, {"x": (2, 3, 2)}, body, {"x": make_input((2, 3, 2), 1)})
    assert list(out) == ["b"]


@pytest.mark.parametrize("opset", [13, 22])
@pytest.mark.parametrize("case", ["ArgMax/ties_no_axis", "MVN/across_channels",
                                  "Reduction/mean_axis0_coeff_neg2", "Reduction/sumsq_axis2",
                                  "Filter/two_blobs", "Embed/bias_2d_indices"])
def test_onnx_graph_is_valid_at_every_opset(tmp_path, case, opset):
    """Reductions take their axes as an input (ReduceSum) or reduce all axes, so the same
    graph holds from opset 13 (axes attributes) to 18+ (axes inputs)."""
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt, opset=opset)
    onnx.checker.check_model(str(path), full_check=True)
    ours = run_onnx(path, inputs)
    for name, caffe in outputs.items():
        assert_caffe_equal(name, ours[name], caffe)


@pytest.mark.parametrize("case", ["Parameter/shape_2x3x4", "Silence/silence_unused_slice_top",
                                  "Filter/two_blobs", "Embed/bias_2d_indices"])
def test_safetensors_round_trip(tmp_path, case):
    """The graph spec keeps layers without bottoms (Parameter) or tops (Silence)."""
    torch = pytest.importorskip("torch")
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "safetensors", tmp_path / "m.safetensors", prototxt=prototxt)
    module = senet.load(path)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[n]) for n in module.input_names])
    values = values if isinstance(values, tuple) else (values,)
    assert module.output_names == list(outputs)
    for name, value in zip(module.output_names, values):
        assert_caffe_equal(name, value.numpy(), outputs[name])


def test_a_net_that_silences_its_only_result_outputs_it(tmp_path):
    """Caffe would have no outputs; colorization's deploy ends this way and its users read the
    silenced blob, so that is the default output (not the input)."""
    text = net_text({"x": (2, 3)}, 'layer { name: "t" type: "TanH" bottom: "x" top: "t" }\n'
                                   'layer { name: "q" type: "Silence" bottom: "t" }')
    proto, model = write_net(tmp_path, text, {})
    assert senet.load_caffe(model, proto).default_outputs() == ["t"]


# ----------------------------------------------------------------------------- traps

def test_argmax_top_k_output_shapes_are_caffes():
    """Without axis Caffe keeps max(ndim, 3) axes, (N, 2, k, 1) with out_max_val; with an axis
    out_max_val gives the values only. A plain topk gives (N, k) and (N, k, H, W) twice."""
    shapes = {}
    for case in ("no_axis_top3_out_max_val", "no_axis_2d_input", "axis1_top2_out_max_val"):
        net = senet.load_caffe(*load_case(f"ArgMax/{case}")[:2])
        shapes[case] = net.shapes[net.default_outputs()[0]]
    assert shapes == {"no_axis_top3_out_max_val": (2, 2, 3, 1), "no_axis_2d_input": (3, 1, 2),
                      "axis1_top2_out_max_val": (2, 2, 3, 4)}


def test_argmax_ties_put_the_larger_index_first(tmp_path):
    """std::partial_sort with std::greater on (value, index) pairs: equal values, larger index
    first. ONNX TopK, a stable descending sort and np.argmax all put the smaller one first:
    that variant differs from Caffe's output on this case."""
    model, prototxt, inputs, outputs = load_case("ArgMax/ties_larger_index_wins")
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt)
    ours = run_onnx(path, inputs)["y"]
    np.testing.assert_array_equal(ours, outputs["y"])
    smaller_first = np.argsort(-inputs["x"], axis=1, kind="stable")[:, :2].astype(np.float32)
    assert (smaller_first != outputs["y"]).any()


def test_mvn_adds_eps_to_the_standard_deviation(tmp_path):
    """BVLC mvn_layer.cpp: powx(variance, 0.5), then add_scalar(eps), then divide: eps is
    OUTSIDE the root (the issue's 'inside the root' is not what the source computes). With eps
    0.1 the other placement, (x − m) / sqrt(var + eps), is far from Caffe's output."""
    model, prototxt, inputs, outputs = load_case("MVN/eps_0_1")
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt)
    assert_caffe_equal("y", run_onnx(path, inputs)["y"], outputs["y"])
    x = inputs["x"].astype(np.float64)
    centred = x - x.mean(axis=(2, 3), keepdims=True)
    inside = centred / np.sqrt((centred ** 2).mean(axis=(2, 3), keepdims=True) + 0.1)
    assert rel_error(inside, outputs["y"]) > WRONG


def test_embed_truncates_indices_toward_zero(tmp_path):
    """static_cast<int>: 2.7 → 2, -0.5 → 0. Rounding gives other rows."""
    model, prototxt, inputs, outputs = load_case("Embed/fractional_indices_truncate")
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt)
    assert_caffe_equal("y", run_onnx(path, inputs)["y"], outputs["y"])
    weight, bias = read_caffemodel(model)["embed"]
    rounded = weight.reshape(4, 3)[np.clip(np.round(inputs["x"]), 0, 3).astype(int)] + bias
    assert rel_error(rounded, outputs["y"]) > WRONG


def test_tile_repeats_the_block_not_each_entry(tmp_path):
    model, prototxt, inputs, outputs = load_case("Tile/axis1_tiles3")
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt)
    assert_caffe_equal("y", run_onnx(path, inputs)["y"], outputs["y"])
    assert rel_error(np.repeat(inputs["x"], 3, axis=1), outputs["y"]) > WRONG


@pytest.mark.parametrize("index", [4.0, -1.0])
@pytest.mark.parametrize("case, blob", [("Embed/fractional_indices_truncate", "x"),
                                        ("BatchReindex/subset", "idx")])
def test_index_outside_the_table_fails_at_run_time(tmp_path, case, blob, index):
    """Caffe CHECKs BatchReindex's indices and leaves Embed's undefined (DCHECK only). The
    converted models refuse both: onnxruntime's Gather rejects an index past the table, and a
    negative one (which Gather would wrap to a row from the end) is first made out of range;
    torch's embedding and index_select raise for both."""
    torch = pytest.importorskip("torch")
    model, prototxt, inputs, _ = load_case(case)
    bad = dict(inputs)
    bad[blob] = inputs[blob].copy()
    bad[blob][1] = index
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)out of bounds|invalid|range"):
        session.run(None, bad)
    net = senet.load_caffe(model, prototxt)
    module = senet.to_torch(net)
    with pytest.raises((IndexError, RuntimeError)):
        module(*[torch.from_numpy(bad[name]) for name in net.inputs])


# ----------------------------------------------------------------------------- refused

@pytest.mark.parametrize("shape, body, message", [
    ((2, 3, 4), 'type: "ArgMax" argmax_param { top_k: 4 axis: 1 }', "top_k 4 exceeds"),
    ((2, 3, 2, 2, 2), 'type: "MVN"', "at most 4 axes"),
    ((2, 3), 'type: "Tile"', "tiles"),
    ((4, 3), 'type: "Reduction" reduction_param { axis: 2 }', "out of range"),
])
def test_caffes_refusals_name_the_layer(tmp_path, shape, body, message):
    text = net_text({"x": shape}, f'layer {{ name: "bad" {body} bottom: "x" top: "y" }}')
    proto, model = write_net(tmp_path, text, {})
    with pytest.raises(ShapeError, match=message) as error:
        load_net(str(model), str(proto))
    assert error.value.layer == "bad"


def test_filter_selector_must_be_singleton_after_axis0(tmp_path):
    text = net_text({"x": (4, 3), "s": (4, 2)},
                    'layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }')
    proto, model = write_net(tmp_path, text, {})
    with pytest.raises(ShapeError, match="selector"):
        load_net(str(model), str(proto))

