"""senet's torch emitter (converter/to_torch.py) and its files (converter/torch_io.py) against
the independent float64 NumPy reference: every layer case of test_layers.py, the seven SENets,
.pt2 and safetensors round trips, dynamic batch, torch.compile, output semantics."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import senet  # noqa: E402
from senet.converter.load import load_net  # noqa: E402
from senet.converter.to_torch import build_module, to_torch  # noqa: E402
from senet.converter.torch_io import export_pt2, load_safetensors, save_safetensors  # noqa: E402
from senet.errors import ConversionError, ModelFileError, UnsupportedLayerError  # noqa: E402
from senet.examples import make  # noqa: E402
from tests.converter.harness import reference, rel_error, write_net  # noqa: E402
from tests.converter.test_layers import CASES, net_text  # noqa: E402
from tests.converter.test_senet_models import MODELS, _bound, _case  # noqa: E402
from tests.reference.caffemodel_wire import read_caffemodel  # noqa: E402
from tests.reference.prototxt_text import parse_prototxt  # noqa: E402
from tests.reference.random_weights import make_input, make_weights  # noqa: E402

EXACT = 1e-9  # float64 module against the float64 reference
BATCH_SHAPED_WEIGHTS = {"scale_two_bottoms_axis0"}  # learned bias over axes (N, C)


def run(module, inputs: dict[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    """The module's outputs by Caffe name, for NumPy inputs by input name."""
    args = [torch.from_numpy(np.asarray(inputs[name], dtype)) for name in module.input_names]
    with torch.no_grad():
        result = module(*args)
    values = result if isinstance(result, tuple) else (result,)
    assert len(values) == len(module.output_names)
    return {name: v.numpy() for name, v in zip(module.output_names, values)}


def assert_matches(ours: dict, ref: dict, names, tol: float) -> None:
    for name in names:
        assert ours[name].shape == ref[name].shape, (name, ours[name].shape, ref[name].shape)
        err = rel_error(ours[name], ref[name])
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


# ----------------------------------------------------------------------------- layers

@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_reference_in_float64(tmp_path, case):
    input_shapes, body, outputs = CASES[case]
    text = net_text(input_shapes, body)
    weights = make_weights(parse_prototxt(text), input_shapes, 0)
    proto, caffemodel = write_net(tmp_path, text, weights)
    net = load_net(str(caffemodel), str(proto))
    unfolded = build_module(net, outputs).double()
    with_passes = to_torch(net, outputs, dtype=torch.float64)
    # the declared batch, and one more: the batch is dynamic (unless a weight spans it)
    for extra in (0,) if case in BATCH_SHAPED_WEIGHTS else (0, 1):
        inputs = {name: make_input((shape[0] + extra,) + shape[1:], i + 1)
                  for i, (name, shape) in enumerate(input_shapes.items())}
        ref = reference(text, weights, inputs)
        assert_matches(run(unfolded, inputs, np.float64), ref, outputs, EXACT)
        assert_matches(run(with_passes, inputs, np.float64), ref, outputs, EXACT)
    # every layer's parameters survive the safetensors graph spec
    save_safetensors(net, tmp_path / "case.safetensors", outputs)
    loaded, in_memory = senet.load(tmp_path / "case.safetensors"), to_torch(net, outputs)
    for name, value in run(loaded, inputs).items():
        np.testing.assert_array_equal(value, run(in_memory, inputs)[name], err_msg=name)


# Pooling geometries that take the torch emitter's other paths: explicit -inf / zero padding
# (pad above kernel/2), PyTorch's ceil mode keeping a window Caffe drops (sliced off), the
# last-window rule applied to an unpadded axis because the other one is padded.
POOLS = {
    "max_pad_over_half_kernel": ((1, 2, 7, 8), "MAX", "kernel_size: 3 stride: 2 pad: 2"),
    "ave_pad_over_half_kernel": ((1, 2, 7, 8), "AVE", "kernel_size: 3 stride: 2 pad: 2"),
    "ave_window_dropped_by_caffe": ((2, 3, 5, 5), "AVE", "kernel_size: 2 stride: 3 pad: 1"),
    "max_window_dropped_by_caffe": ((2, 3, 5, 5), "MAX", "kernel_size: 2 stride: 3 pad: 1"),
    "one_axis_padded": ((1, 2, 5, 6), "MAX",
                        "kernel_h: 1 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 1"),
    "ave_full_window_not_global": ((1, 2, 6, 6), "AVE", "kernel_size: 6"),
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling_paths_match_reference(tmp_path, case):
    shape, method, geometry = POOLS[case]
    text = net_text({"x": shape}, f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" '
                                  f'pooling_param {{ pool: {method} {geometry} }} }}')
    proto, caffemodel = write_net(tmp_path, text, {})
    module = build_module(load_net(str(caffemodel), str(proto))).double()
    x = make_input(shape, seed=4)
    assert_matches(run(module, {"x": x}, np.float64), reference(text, {}, {"x": x}), ["p"], EXACT)


# ----------------------------------------------------------------------------- SENets

@lru_cache(maxsize=None)
def _senet(model: str, folder):
    text, weights, *_ = _case(model)
    proto, caffemodel = write_net(folder, text, weights, model)
    return load_net(str(caffemodel), str(proto))


@pytest.fixture(scope="module")
def senet_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("senet_models")


@pytest.mark.parametrize("model", MODELS)
def test_senet_matches_reference(senet_dir, model):
    text, weights, x, ref64, dev32 = _case(model)
    net = _senet(model, senet_dir)
    module = build_module(net, ["classifier"])
    err64 = rel_error(run(module.double(), {"data": x}, np.float64)["classifier"], ref64)
    assert err64 <= EXACT, f"{model} float64: {err64:.3g}"
    bound = _bound(dev32)
    err32 = rel_error(run(module.float(), {"data": x})["classifier"], ref64)
    assert err32 <= bound, f"{model} float32 unfolded: {err32:.3g} > {bound:.3g}"
    folded = to_torch(net, ["classifier"])
    err32 = rel_error(run(folded, {"data": x})["classifier"], ref64)
    assert err32 <= bound, f"{model} float32 folded: {err32:.3g} > {bound:.3g}"
    # the SE block's ops are the senet kernels; every BatchNorm folded
    targets = [node.target for node in folded.graph.nodes if node.op == "call_function"]
    squeezes = [layer for layer in net.layers if layer.type == "Pooling"
                and layer.param.pooling_param.global_pooling]
    assert targets.count(torch.ops.senet.global_avg_pool.default) >= len(squeezes)
    assert targets.count(torch.ops.senet.axpy.default) == sum(
        layer.type == "Axpy" for layer in net.layers)
    assert torch.nn.functional.batch_norm not in targets


def test_weights_are_named_after_caffe_layers(senet_dir):
    if "SE-ResNet-50" not in MODELS:
        pytest.skip("no SE-ResNet-50")
    module = to_torch(_senet("SE-ResNet-50", senet_dir))
    keys = set(module.state_dict())
    assert {"conv1_7x7_s2.weight", "conv1_7x7_s2.bias", "classifier.weight"} <= keys
    unfolded = build_module(_senet("SE-ResNet-50", senet_dir))
    assert {"conv1_7x7_s2_bn.running_mean", "conv1_7x7_s2_bn_scale.weight"} <= set(
        unfolded.state_dict())
    assert "conv1_7x7_s2 = " in unfolded.code  # nodes named after blobs


# ----------------------------------------------------------------------------- files

def _tiny():
    return load_net(str(make.CAFFEMODEL), str(make.PROTOTXT))


def _round_trip_net(which, senet_dir):
    return _tiny() if which == "tiny" else _senet(which, senet_dir)


@pytest.mark.parametrize("which", ["tiny", "SE-ResNet-50"])
def test_pt2_and_safetensors_round_trips_are_bitwise(tmp_path, senet_dir, which):
    net = _round_trip_net(which, senet_dir)
    module = to_torch(net)
    export_pt2(net, tmp_path / "m.pt2")
    save_safetensors(net, tmp_path / "m.safetensors")
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    loaded = senet.load(tmp_path / "m.safetensors")
    shape = net.inputs["data"][1:]
    for batch in (1, 3):
        x = torch.from_numpy(make_input((batch,) + shape, seed=batch))
        with torch.no_grad():
            expected = module(x)
            assert isinstance(expected, torch.Tensor)
            assert torch.equal(program(x), expected)
            assert torch.equal(loaded(x), expected)
    assert not list(tmp_path.glob(".*.part*"))


@pytest.mark.parametrize("case", ["inner_product_axes", "scale_axis_num_axes"])
def test_every_way_of_building_gives_weights_of_one_layout(tmp_path, case):
    """In memory, from .pt2 and from safetensors: the same dtype, shape, strides and torch's
    64-byte allocation alignment for every weight. CPU GEMM kernels are chosen by stride and
    alignment, so this is what keeps the bitwise round trips bitwise on every CPU (a transposed
    InnerProduct weight kept as a strided view broke them on AMD EPYC)."""
    input_shapes, body, outputs = CASES[case]
    text = net_text(input_shapes, body)
    proto, caffemodel = write_net(tmp_path, text, make_weights(parse_prototxt(text),
                                                               input_shapes, 0))
    net = load_net(str(caffemodel), str(proto))
    export_pt2(net, tmp_path / "m.pt2", outputs)
    save_safetensors(net, tmp_path / "m.safetensors", outputs)
    modules = {"in memory": to_torch(net, outputs),
               "pt2": torch.export.load(str(tmp_path / "m.pt2")).module(),
               "safetensors": senet.load(tmp_path / "m.safetensors")}
    layouts = {}
    for how, module in modules.items():
        state = module.state_dict()
        assert state, how
        layouts[how] = {key: (t.dtype, tuple(t.shape), t.stride()) for key, t in state.items()}
        for key, t in state.items():
            assert t.is_contiguous() and t.data_ptr() % 64 == 0, (how, key, t.stride())
    assert layouts["pt2"] == layouts["in memory"] == layouts["safetensors"]


def test_saved_files_hold_names_and_a_json_graph(tmp_path):
    net = _tiny()
    save_safetensors(net, tmp_path / "t.safetensors", fold=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        keys, spec = set(f.keys()), json.loads(f.metadata()["senet.graph"])
    assert {"conv1.weight", "conv1_bn.running_mean", "conv1_scale.bias"} <= keys
    # the spec is the IR after the passes: unfolded here, Axpy+ReLU fused
    assert [layer["name"] for layer in spec["layers"]] == [
        layer.name for layer in net.layers if layer.name != "res2/relu"]
    assert next(layer for layer in spec["layers"] if layer["type"] == "Axpy")["fused_relu"]
    assert spec["inputs"] == [["data", [1, 3, 32, 32]]]
    pool2 = next(layer for layer in spec["layers"] if layer["name"] == "pool2")
    assert pool2["param"]["pooling_param"] == {"pool": "AVE", "kernel_size": 3, "stride": 2,
                                               "pad": 1}


def test_several_outputs_come_as_a_tuple_in_the_asked_order(tmp_path):
    net = _tiny()
    outputs = ["prob", "conv1", "res2", "classifier"]  # conv1, res2: in place, final values
    text = make.PROTOTXT.read_text()
    x = make_input((2, 3, 32, 32), seed=3)
    ref = reference(text, read_caffemodel(make.CAFFEMODEL), {"data": x})
    module = to_torch(net, outputs, dtype=torch.float64)
    assert module.output_names == outputs
    assert_matches(run(module, {"data": x}, np.float64), ref, outputs, EXACT)
    export_pt2(net, tmp_path / "m.pt2", outputs)
    save_safetensors(net, tmp_path / "m.safetensors", outputs)
    x32 = torch.from_numpy(x)
    with torch.no_grad():
        expected = to_torch(net, outputs)(x32)
        for restored in (torch.export.load(str(tmp_path / "m.pt2")).module(),
                         senet.load(tmp_path / "m.safetensors")):
            got = restored(x32)
            assert isinstance(got, tuple) and len(got) == 4
            assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_pt2_loads_in_a_fresh_process_after_import_senet_kernels(tmp_path):
    export_pt2(_tiny(), tmp_path / "t.pt2")
    code = ("import sys, senet\n"
            "assert 'torch' not in sys.modules  # import senet stays light\n"
            "assert not any(type(f).__module__.split('.')[0] == 'senet' for f in sys.meta_path)\n"
            "import torch\n"
            "assert not hasattr(torch.ops.senet, 'axpy')  # nothing registered behind our back\n"
            "import senet.kernels  # what README tells a user of a bare .pt2 to import\n"
            "m = torch.export.load(sys.argv[1]).module()\n"
            "print(tuple(m(torch.zeros(4, 3, 32, 32)).shape))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.pt2")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(4, 10)"


def test_torch_compile_equals_eager():
    module = to_torch(_tiny())
    x = torch.from_numpy(make_input((2, 3, 32, 32), seed=5))
    with torch.no_grad():
        eager = module(x)
        compiled = torch.compile(module)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors

def test_not_a_senet_file_is_a_model_file_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="no senet graph spec"):
        load_safetensors(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError):
        senet.load(tmp_path / "junk.safetensors")


def test_unwritable_target_is_a_conversion_error(tmp_path):
    with pytest.raises(ConversionError):
        save_safetensors(_tiny(), tmp_path / "missing" / "t.safetensors")


def test_layers_without_a_torch_emitter_are_listed_at_once():
    from senet.converter import LayerConverter, register
    from senet.converter.layers import converter_for

    if converter_for("TorchlessTestLayer") is None:
        @register("TorchlessTestLayer")
        class Torchless(LayerConverter):  # ONNX only, as a fork's layer might be
            def to_onnx(self, layer, g):
                g.node("Identity", layer.bottoms, layer.tops)

    text = net_text({"x": (1, 2, 3, 3)}, '''
layer { name: "a" type: "TorchlessTestLayer" bottom: "x" top: "a" }
layer { name: "b" type: "TorchlessTestLayer" bottom: "a" top: "b" }''')
    from senet.converter.prototxt import parse_prototxt_text
    from senet.converter.load import assemble

    net = assemble(parse_prototxt_text(text), None, None)
    with pytest.raises(UnsupportedLayerError, match=r"a \(TorchlessTestLayer\), b "):
        build_module(net)


def test_a_users_converter_can_call_a_torch_module(tmp_path):
    from senet.converter import LayerConverter, register
    from senet.converter.layers import converter_for

    if converter_for("AffineModuleTestLayer") is None:
        @register("AffineModuleTestLayer")
        class AffineModule(LayerConverter):  # a fork's layer emitted as an nn.Conv2d
            def blob_shapes(self, layer, in_shapes):
                return [(in_shapes[0][1], in_shapes[0][1], 1, 1)]

            def to_torch(self, layer, ctx):
                conv = torch.nn.Conv2d(*layer.blobs[0].shape[:2], 1, bias=False)
                conv.weight.data = torch.from_numpy(np.array(layer.blobs[0]))
                ctx.call_module(layer.tops[0], "conv", conv, ctx.value(layer.bottoms[0]))

    text = net_text({"data": (1, 2, 3, 3)}, '''
layer { name: "m" type: "AffineModuleTestLayer" bottom: "data" top: "m" }''')
    weight = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    net = load_net(*map(str, reversed(write_net(tmp_path, text, {"m": [weight]}))))
    x = make_input((1, 2, 3, 3), seed=2)
    expected = np.einsum("oi,nihw->nohw", weight[:, :, 0, 0], x)
    module = build_module(net)
    assert "m.conv.weight" in module.state_dict()
    np.testing.assert_allclose(run(module, {"data": x})["m"], expected, rtol=1e-6)
    save_safetensors(net, tmp_path / "m.safetensors")
    np.testing.assert_array_equal(run(senet.load(tmp_path / "m.safetensors"), {"data": x})["m"],
                                  run(module, {"data": x})["m"])
