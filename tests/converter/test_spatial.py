"""Convolution, Deconvolution, Im2col and Crop: the float64 reference (tests/reference/
forward_spatial.py) against real Caffe's outputs, seeded nets for parameter combinations the
real cases lack through both emitters, Caffe's refusals, and the traps: a deconvolution size
off by one, crop offsets on the wrong axes."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

import senet
from senet.converter.semantics import deconv_output_size
from senet.errors import ShapeError
from tests.conftest import FIXTURES, require_shared
from tests.converter.harness import convert, reference, rel_error, run_onnx, write_net
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import forward, run_net
from tests.reference.caffemodel_wire import read_caffemodel
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input

torch = pytest.importorskip("torch")

TYPES = ("Convolution", "Deconvolution", "Im2col", "Crop")
CASES_DIR = FIXTURES / "real_caffe" / "layer_cases"
INDEX = CASES_DIR / "index.json"
REAL = ([f"{c['type']}/{c['case']}" for c in json.loads(INDEX.read_text())["cases"]
         if c["type"] in TYPES] if INDEX.exists() else ["(../shared absent)"])


def real_case(case: str):
    """(prototxt text, weights by layer, inputs, Caffe's outputs) of a real-Caffe case."""
    kind, name = case.split("/")
    folder = require_shared("real_caffe", "layer_cases", kind)
    data = np.load(folder / f"{name}.npz")
    pick = lambda prefix: {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    return ((folder / f"{name}.prototxt").read_text(),
            read_caffemodel(folder / f"{name}.caffemodel"), pick("input__"), pick("output__"))


@pytest.mark.parametrize("case", REAL)
def test_reference_equals_real_caffe(case):
    """The reference, written from the C++ without senet, reproduces Caffe's float32 outputs."""
    text, weights, inputs, outputs = real_case(case)
    ours = forward(parse_prototxt(text), weights, inputs)
    for name, caffe in outputs.items():
        assert ours[name].shape == caffe.shape, name
        assert rel_error(ours[name], caffe) <= 2e-6, name


# ----------------------------------------------------------------------------- seeded nets

def seeded_weights(text: str, input_shapes, seed: int):
    """He-normal float32 weights (bias N(0, 0.1)) for every layer with learned blobs."""
    rng = np.random.default_rng(seed)
    weights = {}

    def generate(layer, bottoms, shapes):
        if layer["type"][0] == "BatchNorm":  # mean, variance, factor
            blobs = [rng.normal(0.0, 1.0, shapes[0]).astype(np.float32),
                     rng.uniform(0.5, 2.0, shapes[1]).astype(np.float32),
                     np.ones(1, np.float32)]
            weights[layer["name"][0]] = blobs
            return blobs
        blobs = [rng.standard_normal(shapes[0]).astype(np.float32)
                 * np.float32(math.sqrt(2.0 / math.prod(shapes[0][1:])))]
        blobs += [rng.normal(0.0, 0.1, s).astype(np.float32) for s in shapes[1:]]
        weights[layer["name"][0]] = blobs
        return blobs

    zeros = {name: np.zeros(shape) for name, shape in input_shapes.items()}
    run_net(parse_prototxt(text), zeros, generate)
    return weights


def check_both(tmp_path, input_shapes, body, outputs, seed=0, tol=1e-5):
    """ONNX (onnxruntime) and torch (fx module) outputs against the float64 reference."""
    text = net_text(input_shapes, body)
    weights = seeded_weights(text, input_shapes, seed)
    inputs = {n: make_input(s, seed + i + 1) for i, (n, s) in enumerate(input_shapes.items())}
    ref = reference(text, weights, inputs)
    proto, model = write_net(tmp_path, text, weights)
    ours = run_onnx(convert(tmp_path, model, proto, outputs), inputs)
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=outputs)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[n]) for n in input_shapes])
    values = values if isinstance(values, tuple) else (values,)
    for name, value in zip(outputs, values):
        for emitter, got in (("onnx", ours[name]), ("torch", value.numpy())):
            assert got.shape == ref[name].shape, (emitter, name, got.shape, ref[name].shape)
            assert rel_error(got, ref[name]) <= tol, (emitter, name)
    return ref


def conv_layer(kind: str, params: str, bottoms=("x",), tops=("y",)) -> str:
    links = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
    return f'layer {{ name: "c" type: "{kind}"{links} convolution_param {{ {params} }} }}'


SEEDED = {
    "deconv_axis2_extra_batch": ({"x": (2, 2, 3, 4, 5)}, conv_layer(
        "Deconvolution", "num_output: 4 kernel_size: 3 stride: 2 pad: 1 axis: 2"), ["y"]),
    "deconv_two_bottoms_shared": ({"a": (2, 3, 4, 4), "b": (2, 3, 4, 4)}, conv_layer(
        "Deconvolution", "num_output: 2 kernel_size: 4 stride: 2 pad: 1", ("a", "b"),
        ("ya", "yb")), ["ya", "yb"]),
    "deconv_1d": ({"x": (2, 3, 7)}, conv_layer(
        "Deconvolution", "num_output: 4 kernel_size: 3 stride: 3 pad: 1 dilation: 2"), ["y"]),
    "deconv_group_dilation_hw": ({"x": (1, 4, 5, 6)}, conv_layer(
        "Deconvolution", "num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 "
        "stride_w: 3 pad_h: 2 pad_w: 0 dilation: 2"), ["y"]),
    "deconv_pad_beyond_kernel": ({"x": (2, 3, 4, 5)}, conv_layer(
        "Deconvolution", "num_output: 2 kernel_size: 2 stride: 4 pad: 3"), ["y"]),
    "deconv3d_group_dilation_no_bias": ({"x": (1, 4, 3, 4, 3)}, conv_layer(
        "Deconvolution", "num_output: 2 group: 2 kernel_size: 2 stride: 2 dilation: 1 "
        "dilation: 2 dilation: 3 bias_term: false"), ["y"]),
    "conv_axis_neg3_3d_two_bottoms": ({"a": (2, 3, 5, 6, 4), "b": (2, 3, 5, 6, 4)}, conv_layer(
        "Convolution", "num_output: 2 kernel_size: 3 pad: 1 axis: -4", ("a", "b"),
        ("ya", "yb")), ["ya", "yb"]),
    "conv_axis2_then_batchnorm": ({"x": (2, 3, 4, 6, 5)}, conv_layer(
        "Convolution", "num_output: 2 kernel_size: 3 axis: 2") + '''
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "z" }''', ["z"]),  # not folded
    "conv_axis0_no_batch": ({"x": (3, 6, 7)}, conv_layer(
        "Convolution", "num_output: 3 kernel_size: 3 axis: 0"), ["y"]),
    "conv_axis2_1d": ({"x": (2, 3, 4, 9)}, conv_layer(
        "Convolution", "num_output: 5 kernel_size: 3 stride: 2 axis: 2"), ["y"]),
    "im2col_axis2": ({"x": (2, 2, 3, 6, 5)}, conv_layer(
        "Im2col", "kernel_size: 2 kernel_size: 3 pad: 1 stride: 2 axis: 2"), ["y"]),
    "im2col_3d_pad_dilation": ({"x": (1, 2, 5, 4, 6)}, conv_layer(
        "Im2col", "kernel_size: 2 pad: 1 pad: 0 pad: 2 dilation: 2 dilation: 1 dilation: 1"),
        ["y"]),
    "im2col_1d": ({"x": (2, 3, 8)}, conv_layer("Im2col", "kernel_size: 3 stride: 2 pad: 1"),
                  ["y"]),
    "crop_5d_axis1_per_axis": ({"x": (2, 5, 4, 6, 7), "r": (2, 3, 2, 6, 4)}, '''
layer { name: "k" type: "Crop" bottom: "x" bottom: "r" top: "y"
  crop_param { axis: 1 offset: 2 offset: 1 offset: 0 offset: 3 } }''', ["y"]),
    "crop_nothing_cut": ({"x": (2, 3, 4, 5), "r": (2, 3, 4, 5)}, '''
layer { name: "k" type: "Crop" bottom: "x" bottom: "r" top: "y" }''', ["y"]),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeded_net_both_emitters(tmp_path, name):
    check_both(tmp_path, *SEEDED[name])


# ----------------------------------------------------------------------------- traps

def deconv_cases():
    if not INDEX.exists():
        return ["(../shared absent)"]
    return [c for c in REAL if c.startswith("Deconvolution/")]


@pytest.mark.parametrize("case", deconv_cases())
def test_deconvolution_size_is_caffes(tmp_path, case):
    """TRAP: the ONNX graph's own shape (onnx shape inference of the ConvTranspose, explicit
    pads, no output_padding or auto_pad) is Caffe's. Wrong variants fail here: the formula
    without dilation, (in-1)s - 2p + k, gives 6×7 for `dilation2` (Caffe 7×8); auto_pad
    SAME_UPPER gives in·s, 8×8 for `kernel5_gt_stride2` (Caffe 11×11)."""
    text, weights, inputs, outputs = real_case(case)
    proto, model = write_net(tmp_path, text, weights)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(convert(tmp_path, model, proto)))
    node = next(n for n in inferred.graph.node if n.op_type == "ConvTranspose")
    assert {a.name for a in node.attribute} & {"output_padding", "output_shape", "auto_pad"} \
        == set()
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for name, caffe in outputs.items():
        assert dims[name][1:] == list(caffe.shape[1:]), name


def test_deconvolution_size_rule_counts_dilation():
    """The rule itself, (in-1)s - 2p + d(k-1) + 1, on the fixtures' geometries."""
    assert deconv_output_size(5, 3, 1, 1, 2) == 7  # dilation2; without d: (5-1) - 2 + 3 = 5
    assert deconv_output_size(4, 5, 0, 2, 1) == 11  # kernel5_gt_stride2; SAME would give 8
    assert deconv_output_size(3, 4, 2, 4, 1) == 8  # pad_crops_output


CROP_TRAPS = {  # case -> the wrong variant's output shape (offsets applied from axis 0)
    "Crop/axis1_single_offset": (1, 3, 4, 4),  # batch cropped too: x[1:2]
    "Crop/axis_neg1": (1, 1, 1, 5),  # axis -1 taken raw: every i >= -1 is cropped
    "Crop/axis2_per_axis_offsets": None,  # offsets (1, 3) on N, C: N runs out of bounds
}


@pytest.mark.parametrize("case", sorted(CROP_TRAPS))
def test_crop_offsets_start_at_axis(tmp_path, case):
    """TRAP: offsets apply to the axes from `axis` (canonical) on. The wrong variant that
    starts at axis 0 gives the shape in CROP_TRAPS (or refuses a valid net), not Caffe's."""
    text, weights, inputs, outputs = real_case(case)
    (name, caffe), = outputs.items()
    assert CROP_TRAPS[case] != caffe.shape
    proto, model = write_net(tmp_path, text, weights)
    ours = run_onnx(convert(tmp_path, model, proto), inputs)[name]
    module = senet.to_torch(senet.load_caffe(model, proto))
    with torch.no_grad():
        value = module(*[torch.from_numpy(inputs[n]) for n in ("x", "ref")]).numpy()
    for got in (ours, value):
        np.testing.assert_array_equal(got, caffe)  # a crop copies: exact


# ----------------------------------------------------------------------------- refusals

REFUSED = {
    "crop past the input": ({"x": (2, 3, 6, 6), "r": (2, 3, 4, 4)}, '''
layer { name: "bad" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 3 } }''',
                            "runs past the input"),
    "two offsets for three axes": ({"x": (2, 3, 6, 6), "r": (2, 2, 4, 4)}, '''
layer { name: "bad" type: "Crop" bottom: "x" bottom: "r" top: "y"
  crop_param { axis: 1 offset: 1 offset: 1 } }''', "2 crop offsets"),
    "bottoms of two shapes": ({"a": (2, 3, 4, 4), "b": (2, 3, 5, 5)}, conv_layer(
        "Convolution", "num_output: 2 kernel_size: 1", ("a", "b"), ("ya", "yb")).replace(
        '"c"', '"bad"', 1), "one shape"),
    "group not dividing num_output": ({"x": (2, 4, 3, 3)}, conv_layer(
        "Deconvolution", "num_output: 3 kernel_size: 2 group: 2").replace('"c"', '"bad"', 1),
        "multiple of group"),
    "kernel_h on a 5-D input": ({"x": (2, 3, 4, 4, 4)}, conv_layer(
        "Convolution", "num_output: 2 kernel_h: 2 kernel_w: 2").replace('"c"', '"bad"', 1),
        "need 2 spatial axes"),
    "kernel_size and kernel_h": ({"x": (2, 3, 4, 4)}, conv_layer(
        "Im2col", "kernel_size: 2 kernel_h: 2 kernel_w: 1").replace('"c"', '"bad"', 1),
        "not both"),
    "empty deconvolution": ({"x": (1, 2, 1, 1)}, conv_layer(
        "Deconvolution", "num_output: 2 kernel_size: 1 pad: 1").replace('"c"', '"bad"', 1),
        "empty output"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_refused_with_the_layer_name(tmp_path, what):
    input_shapes, body, message = REFUSED[what]
    proto = tmp_path / "net.prototxt"
    proto.write_text(net_text(input_shapes, body))
    with pytest.raises(ShapeError, match=message) as info:
        senet.load_caffe(None, proto)
    assert "bad" in str(info.value)


BATCH_RULE = {  # net -> whether its batch is free (LayerConverter.keeps_batch)
    "conv_axis0_no_batch": False,  # axis 0 is the channel axis (3 = num_output by chance)
    "conv_axis2_extra_batch": True,
    "crop_axis0_offset0": True,  # axis 0 is not cut (a cut one changes the batch size)
}


@pytest.mark.parametrize("name", sorted(BATCH_RULE))
def test_batch_stays_free_unless_axis_0_is_spanned(tmp_path, name):
    nets = {
        "conv_axis0_no_batch": SEEDED["conv_axis0_no_batch"][:2],
        "conv_axis2_extra_batch": ({"x": (2, 2, 3, 6, 7)}, conv_layer(
            "Convolution", "num_output: 4 kernel_size: 3 axis: 2")),
        "crop_axis0_offset0": ({"x": (2, 4, 6, 5), "r": (2, 3, 3, 3)}, '''
layer { name: "k" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 0 } }'''),
    }
    shapes, body = nets[name]
    proto = tmp_path / "net.prototxt"
    proto.write_text(net_text(shapes, body))
    assert (senet.load_caffe(None, proto).batch_fixed_by() is None) == BATCH_RULE[name]


def test_axis2_convolution_keeps_a_dynamic_batch(tmp_path):
    """The batch folding reshapes with -1: the .pt2 runs another batch than it was traced."""
    text, weights, inputs, outputs = real_case("Convolution/axis2_extra_batch_dim")
    proto, model = write_net(tmp_path, text, weights)
    path = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=proto)
    x = np.concatenate([inputs["x"]] * 3)
    got = torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy()
    assert got.shape == (6,) + outputs["y"].shape[1:]
    assert rel_error(got, np.concatenate([outputs["y"]] * 3)) <= 1e-5


def test_safetensors_round_trip_keeps_shared_weights_and_one_hot(tmp_path):
    """Two bottoms share one registered weight; Im2col's one-hot weight travels as a buffer."""
    shapes = {"a": (2, 3, 5, 5), "b": (2, 3, 5, 5)}
    body = conv_layer("Convolution", "num_output: 2 kernel_size: 3", ("a", "b"), ("ya", "yb")) \
        + '\nlayer { name: "i" type: "Im2col" bottom: "ya" top: "z" convolution_param { ' \
        'kernel_size: 2 stride: 2 } }'
    text = net_text(shapes, body)
    proto, model = write_net(tmp_path, text, seeded_weights(text, shapes, 3))
    net = senet.load_caffe(model, proto)
    senet.convert(model, "safetensors", tmp_path / "m.safetensors", prototxt=proto,
                  outputs=["z", "yb"])
    loaded = senet.load(tmp_path / "m.safetensors")
    fresh = senet.to_torch(net, outputs=["z", "yb"])
    assert sorted(loaded.state_dict()) == ["c.bias", "c.weight", "i.one_hot"]
    xs = [torch.from_numpy(make_input(s, k)) for k, s in enumerate(shapes.values())]
    with torch.no_grad():
        for got, want in zip(loaded(*xs), fresh(*xs)):
            assert torch.equal(got, want)
