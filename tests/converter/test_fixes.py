"""The Caffe behaviours of issue 8's work list: scalar blobs, in-place Eltwise and inputs, batch
statistics, static batches, the Pooling argmax top and empty windows, SPP.

The float64 reference is checked against real Caffe's outputs first; seeded nets then cover
the parameter combinations the real cases lack, in both emitters; the traps show what the
known wrong implementations give."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import senet
from senet.converter.caffe_reader import parse_caffemodel_bytes, read_caffemodel
from senet.converter.semantics import spp_level_window
from senet.converter.torch_io import export_program
from senet.errors import CaffeFormatError, GraphError, ShapeError
from tests.converter.harness import convert, reference, run_onnx, write_net
from tests.converter.test_layer_cases import CASES, assert_caffe_equal, load_case
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import FLT_MAX, _pool2d, forward
from tests.reference.caffemodel_wire import read_caffemodel as read_blobs
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input, make_weights

MY_TYPES = ("BatchNorm", "Bias", "Concat", "Dropout", "Eltwise", "InnerProduct", "Input",
            "PReLU", "Pooling", "Reshape", "Scale", "Slice", "SPP")
WRONG = 1e-2  # a wrong variant must differ by more than this (relative)


def _cases():
    mine = [c for c in CASES if c.split("/")[0] in MY_TYPES]
    return mine or [pytest.param("(../shared absent)", id="shared-absent")]


@pytest.mark.parametrize("case", _cases())
def test_reference_matches_real_caffe(case):
    model, prototxt, inputs, outputs = load_case(case)
    blobs = forward(parse_prototxt(prototxt.read_text()), read_blobs(model), inputs)
    for name, caffe in outputs.items():
        assert_caffe_equal(name, blobs[name], caffe)


# ----------------------------------------------------------------------------- seeded nets

def _both(tmp_path, shapes, body, outputs, inputs=None, seed=0):
    """(reference, onnxruntime, torch) outputs of a seeded net."""
    text = net_text(shapes, body)
    weights = make_weights(parse_prototxt(text), shapes, seed)
    inputs = inputs or {n: make_input(s, seed + i + 1) for i, (n, s) in enumerate(shapes.items())}
    proto, model = write_net(tmp_path, text, weights)
    ours_onnx = run_onnx(convert(tmp_path, model, proto, outputs), inputs)
    net = senet.load_caffe(model, proto)
    with torch.no_grad():
        values = senet.to_torch(net, outputs=outputs)(
            *[torch.from_numpy(inputs[n].astype(np.float32)) for n in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    ours_torch = {n: v.numpy() for n, v in zip(outputs, values)}
    return reference(text, weights, inputs), ours_onnx, ours_torch


def _check(tmp_path, shapes, body, outputs, inputs=None):
    ref, ours_onnx, ours_torch = _both(tmp_path, shapes, body, outputs, inputs)
    for emitter in (ours_onnx, ours_torch):
        for name in outputs:
            assert_caffe_equal(name, emitter[name], ref[name].astype(np.float32))
    return ref, ours_onnx, ours_torch


def _pool(params: str, tops: str = 'top: "p" top: "m"') -> str:
    return (f'layer {{ name: "p" type: "Pooling" bottom: "x" {tops} '
            f'pooling_param {{ {params} }} }}')


def _ties(shape, seed=5):
    """Inputs with many equal values in each window (the argmax tie rule matters)."""
    return {"x": np.random.default_rng(seed).integers(-2, 3, shape).astype(np.float32)}


SEEDED = {
    # PyTorch cannot pad 2 with kernel 3: explicit -inf padding, indices mapped back
    "mask_explicit_padding": ({"x": (2, 2, 7, 6)}, _pool("pool: MAX kernel_size: 3 pad: 2"),
                              ["p", "m"], None),
    "mask_ties_first_wins": ({"x": (2, 3, 6, 7)},
                             _pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"), ["p", "m"],
                             _ties((2, 3, 6, 7))),
    "mask_ties_ceil_overhang": ({"x": (1, 2, 8, 9)}, _pool("pool: MAX kernel_size: 2 stride: 2"),
                                ["p", "m"], _ties((1, 2, 8, 9), 7)),
    "mask_empty_window": ({"x": (1, 2, 6, 5)}, _pool("pool: MAX kernel_size: 1 stride: 2"),
                          ["p", "m"], None),
    "ave_empty_window_one_axis": ({"x": (1, 2, 6, 7)},
                                  _pool("pool: AVE kernel_h: 1 kernel_w: 3 stride: 2",
                                        'top: "p"'), ["p"], None),
    "global_max_with_mask": ({"x": (2, 2, 4, 5)}, _pool("pool: MAX global_pooling: true"),
                             ["p", "m"], None),
    "eltwise_max_in_place_3": ({"a": (2, 3, 4, 4), "b": (2, 3, 4, 4), "c": (2, 3, 4, 4)}, '''
layer { name: "h" type: "Power" bottom: "a" top: "h" power_param { scale: 3 } }
layer { name: "e" type: "Eltwise" bottom: "h" bottom: "b" bottom: "c" top: "h"
  eltwise_param { operation: MAX } }''', ["h"], None),
    "eltwise_sum_in_place_3": ({"a": (2, 3, 4, 4), "b": (2, 3, 4, 4), "c": (2, 3, 4, 4)}, '''
layer { name: "h" type: "Power" bottom: "a" top: "h" power_param { scale: 3 } }
layer { name: "e" type: "Eltwise" bottom: "h" bottom: "b" bottom: "c" top: "h"
  eltwise_param { coeff: 5 coeff: -1 coeff: 0.5 } }''', ["h"], None),
    "batch_statistics_2d": ({"x": (5, 4)}, '''
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y"
  batch_norm_param { use_global_stats: false eps: 0.01 } }''', ["y"], None),
    "batch_statistics_not_folded": ({"x": (2, 3, 5, 5)}, '''
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { use_global_stats: false } }
layer { name: "s" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }''',
                                    ["c"], None),
    "spp_pyramid4_mixed": ({"x": (2, 2, 16, 21)}, '''
layer { name: "s" type: "SPP" bottom: "x" top: "s" spp_param { pyramid_height: 4 pool: AVE } }''',
                           ["s"], None),
    "scale_scalar_learned_bias_axis0": ({"x": (2, 3, 4)}, '''
layer { name: "b" type: "Bias" bottom: "x" top: "b" bias_param { axis: 0 num_axes: 2 } }
layer { name: "s" type: "Scale" bottom: "b" top: "s" scale_param { num_axes: 0 } }''', ["s"], None),
}


@pytest.mark.parametrize("name", list(SEEDED))
def test_seeded_net_in_both_emitters(tmp_path, name):
    shapes, body, outputs, inputs = SEEDED[name]
    _check(tmp_path, shapes, body, outputs, inputs)


def test_batch_statistics_with_opset_18_reduce_mean(tmp_path):
    shapes = {"x": (3, 2, 4, 5)}
    body = ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
            'batch_norm_param { use_global_stats: false } }')
    text, inputs = net_text(shapes, body), {"x": make_input(shapes["x"], 4)}
    weights = make_weights(parse_prototxt(text), shapes, 0)
    proto, model = write_net(tmp_path, text, weights)
    path = senet.convert(model, "onnx", tmp_path / "bn18.onnx", prototxt=proto, opset=18)
    assert_caffe_equal("y", run_onnx(path, inputs)["y"],
                       reference(text, weights, inputs)["y"].astype(np.float32))


def test_batch_statistics_not_in_a_layer_stored_by_a_training_net():
    """A solver snapshot's own net marks its layers `phase: TRAIN`; its use_global_stats
    false is for training, and the extracted deploy net uses the stored statistics."""
    from senet.converter import caffe_pb2 as pb
    from senet.converter.semantics import batchnorm_uses_batch_statistics
    layer = pb.LayerParameter(name="bn", type="BatchNorm")
    layer.batch_norm_param.use_global_stats = False
    assert batchnorm_uses_batch_statistics(layer)
    layer.phase = pb.TEST
    assert batchnorm_uses_batch_statistics(layer)
    layer.phase = pb.TRAIN
    assert not batchnorm_uses_batch_statistics(layer)


def test_in_place_and_phase_survive_the_safetensors_graph_spec(tmp_path):
    """The spec keeps the Caffe bottom/top names and the phase that Eltwise and BatchNorm
    read: the rebuilt module still loses bottom[0] in place and uses stored statistics."""
    from senet.converter.torch_io import load_safetensors, save_safetensors
    shapes = {"a": (2, 3), "b": (2, 3), "x": (4, 3)}
    body = '''
layer { name: "h" type: "Power" bottom: "a" top: "h" power_param { scale: 2 } }
layer { name: "e" type: "Eltwise" bottom: "h" bottom: "b" top: "h" eltwise_param { coeff: 1 coeff: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" phase: TRAIN
  batch_norm_param { use_global_stats: false } }'''
    text = net_text(shapes, body)
    weights = make_weights(parse_prototxt(text), shapes, 0)
    inputs = {n: make_input(s, i + 1) for i, (n, s) in enumerate(shapes.items())}
    proto, model = write_net(tmp_path, text, weights)
    net = senet.load_caffe(model, proto)
    save_safetensors(net, tmp_path / "n.safetensors", ["h", "y"])
    feed = [torch.from_numpy(inputs[n]) for n in net.inputs]
    with torch.no_grad():
        h, y = load_safetensors(tmp_path / "n.safetensors")(*feed)
    np.testing.assert_allclose(h.numpy(), 3 * inputs["b"], rtol=1e-6)
    stored = reference(text.replace("use_global_stats: false", "use_global_stats: true"),
                       weights, inputs)["y"]
    np.testing.assert_allclose(y.numpy(), stored, rtol=1e-5, atol=1e-6)


def test_pooling_models_with_empty_windows_load_in_onnxruntime(tmp_path):
    for case in ("Pooling/max_k1_s2_empty_window", "Pooling/ave_k1_s2_empty_window"):
        model, prototxt, _, _ = load_case(case)
        path = senet.convert(model, "onnx", tmp_path / "p.onnx", prototxt=prototxt)
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_stochastic_pooling_is_refused_by_layer_name(tmp_path):
    text = net_text({"x": (1, 1, 4, 4)}, _pool("pool: STOCHASTIC kernel_size: 2 stride: 2",
                                               'top: "p"'))
    proto, model = write_net(tmp_path, text, {})
    with pytest.raises(ShapeError, match="STOCHASTIC.*no CPU forward") as error:
        senet.load_caffe(model, proto)
    assert error.value.layer == "p"


# ----------------------------------------------------------------------------- static batch

def test_a_net_that_fixes_its_batch_says_so_and_has_static_dims(tmp_path):
    model, prototxt, inputs, outputs = load_case("Concat/axis0")
    warnings = []
    path = senet.convert(model, "onnx", tmp_path / "c.onnx", prototxt=prototxt,
                         warn=warnings.append)
    graph = onnx.load(str(path)).graph
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [[1, 3, 2], [2, 3, 2]]
    assert len(warnings) == 1 and "static batch" in warnings[0]


def test_a_free_batch_stays_dynamic_in_both_emitters(tmp_path):
    model, prototxt, inputs, outputs = load_case("SPP/max_pyramid3")
    warnings = []
    path = senet.convert(model, "onnx", tmp_path / "s.onnx", prototxt=prototxt,
                         warn=warnings.append)
    first = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param == "batch" and not warnings
    program = export_program(senet.load_caffe(model, prototxt))
    x = np.concatenate([inputs["x"]] * 2)
    with torch.no_grad():
        y = program.module()(torch.from_numpy(x)).numpy()
    assert_caffe_equal("y", y, np.concatenate([outputs["y"]] * 2))


def test_weights_on_the_batch_axis_export_a_static_program():
    model, prototxt, inputs, outputs = load_case("InnerProduct/axis0_all")
    net = senet.load_caffe(model, prototxt)
    assert "innerproduct" in net.batch_fixed_by()
    with torch.no_grad():
        y = export_program(net).module()(torch.from_numpy(inputs["x"])).numpy()
    assert_caffe_equal("y", y, outputs["y"])


# ----------------------------------------------------------------------------- names, reading

def test_an_input_rewritten_in_place_keeps_its_caffe_name(tmp_path):
    model, prototxt, inputs, _ = load_case("Dropout/inplace")
    path = senet.convert(model, "onnx", tmp_path / "d.onnx", prototxt=prototxt)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["x"]
    module = senet.to_torch(senet.load_caffe(model, prototxt))
    assert module.input_names == ["x"] and module.output_names == ["x"]
    pt2 = senet.convert(model, "torch", tmp_path / "d.pt2", prototxt=prototxt)
    program = torch.export.load(str(pt2))
    assert [s.arg.name for s in program.graph_signature.input_specs
            if s.kind.name == "USER_INPUT"] == ["x"]


def test_an_output_computed_in_place_from_the_input_of_its_name_is_refused_in_onnx(tmp_path):
    text = net_text({"x": (1, 3)}, 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    proto, model = write_net(tmp_path, text, {})
    with pytest.raises(GraphError, match="cannot give both"):
        senet.convert(model, "onnx", tmp_path / "r.onnx", prototxt=proto)
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    assert torch.equal(senet.to_torch(senet.load_caffe(model, proto))(x), torch.relu(x))


def test_a_top_written_twice_but_not_in_place_is_refused(tmp_path):
    body = ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
            'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }')
    proto, model = write_net(tmp_path, net_text({"x": (1, 3)}, body), {})
    with pytest.raises(GraphError, match="multiple sources"):
        senet.load_caffe(model, proto)


def test_a_binary_net_whose_name_looks_like_a_comment_is_read():
    model, _, _, _ = load_case("Eltwise/prod_inplace_top_is_bottom0")
    assert model.read_bytes()[:2] == b"\n#"  # a 35-byte name: tag, then '#'
    assert [raw.param.name for raw in read_caffemodel(model).layers][:1] == ["input"]
    with pytest.raises(CaffeFormatError, match="text prototxt"):
        parse_caffemodel_bytes(b'# a net\nname: "n"\nlayer { name: "a" type: "ReLU" }\n')


def test_a_blob_without_dims_is_a_scalar():
    model, _, _, _ = load_case("PReLU/channel_shared")
    slope = [raw.blobs for raw in read_caffemodel(model).layers if raw.blobs][0][0]
    assert slope.shape == ()


# ----------------------------------------------------------------------------- traps

def _onnx_case(tmp_path, case, outputs=None):
    model, prototxt, inputs, caffe = load_case(case)
    path = senet.convert(model, "onnx", tmp_path / "case.onnx", prototxt=prototxt,
                         outputs=outputs or list(caffe))
    return inputs, run_onnx(path, inputs), caffe


def _floor_spp(x: np.ndarray, height: int) -> np.ndarray:
    """SPP with floor(H / bins) kernels (the trap), padding clamped at 0."""
    levels = []
    for level in range(height):
        bins = 2 ** level
        (kh, ph), (kw, pw) = [(max(1, s // bins), max(0, (max(1, s // bins) * bins - s + 1) // 2))
                              for s in x.shape[2:]]
        y = _pool2d(x, "MAX", (kh, kw), (kh, kw), (ph, pw), "CEIL")
        levels.append(y.reshape(y.shape[0], -1))
    return np.concatenate(levels, axis=1)


def test_spp_kernels_round_up(tmp_path):
    """Kernels of floor(H / bins) (a wrong reading of spp_layer.cpp) make other windows: on
    9×11 the level of 4 bins pools 2×2 windows into 5×6 cells, not 3×3 ones into 4×4."""
    assert [spp_level_window(s, 2) for s in (9, 11)] == [(3, 2), (3, 1)]
    inputs, ours, caffe = _onnx_case(tmp_path, "SPP/max_pyramid3")
    assert_caffe_equal("y", ours["y"], caffe["y"])
    wrong = _floor_spp(inputs["x"].astype(np.float64), 3)
    assert wrong.shape != caffe["y"].shape


def test_eltwise_in_place_loses_bottom0(tmp_path):
    """In place, Caffe's SUM h + 2b (h = 2a) outputs 2b and MAX outputs b: the textbook
    results differ."""
    inputs, ours, caffe = _onnx_case(tmp_path, "Eltwise/sum_inplace_top_is_bottom0")
    assert_caffe_equal("h", ours["h"], caffe["h"])
    textbook = 2 * inputs["a"] + 2 * inputs["b"]
    assert np.abs(textbook - caffe["h"]).max() / np.abs(caffe["h"]).max() > WRONG
    inputs, ours, caffe = _onnx_case(tmp_path, "Eltwise/max_inplace_top_is_bottom0")
    assert_caffe_equal("h", ours["h"], caffe["h"])
    assert not np.array_equal(np.maximum(2 * inputs["a"], inputs["b"]), caffe["h"])


def test_mask_is_an_index_in_the_plane(tmp_path):
    """ONNX MaxPool's Indices count over the whole N×C×H×W tensor; Caffe's mask restarts in
    every (n, c) plane, so the raw Indices differ from the second plane on."""
    model, prototxt, inputs, outputs = load_case("Pooling/max_with_mask_top")
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt,
                         outputs=["y", "mask"])
    mask = run_onnx(path, inputs)["mask"]
    np.testing.assert_array_equal(mask, outputs["mask"])
    plane = np.prod(inputs["x"].shape[2:])
    raw = mask + plane * np.arange(6).reshape(2, 3, 1, 1)
    assert not np.array_equal(raw, outputs["mask"])
    assert outputs["mask"].max() < plane and (outputs["mask"] >= 0).all()


def test_empty_windows_are_caffes_constants(tmp_path):
    """Caffe keeps the window that starts past the input (a floor-mode or clipped pooling
    drops that row) and gives it MAX's start value -FLT_MAX (not -inf) or AVE's 0/0 (not 0)."""
    _, maxed, caffe = _onnx_case(tmp_path, "Pooling/max_k1_s2_empty_window")
    assert maxed["y"].shape == caffe["y"].shape == (2, 3, 4, 3)
    assert (maxed["y"][:, :, -1] == -FLT_MAX).all()
    _, averaged, _ = _onnx_case(tmp_path, "Pooling/ave_k1_s2_empty_window")
    assert np.isnan(averaged["y"][:, :, -1]).all() and np.isfinite(averaged["y"][:, :, :-1]).all()
