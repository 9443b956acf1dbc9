"""Fields of the Caffe forks (caffe.proto's "fork:" fields).

- Their numbers are the forks' own, so binary files written by a fork decode: the zoo nets'
  prototxts, written as caffemodels under the fork's numbers (including the numbers BVLC gave
  another field, re-read by the layer's type), decode to the same net as their prototxt.
- A stored net with fields our schema lacks still yields its blobs; it is used only without a
  prototxt, and then a warning names the fields.
- Semantics (read from the forks' C++): ceil_mode (Synopsys, forks of BVLC PR #3057), Synopsys'
  pad_t/pad_b/pad_l/pad_r and AVE_EXC_PAD, DeepLab v1's hole, py-faster-rcnn's scale_train,
  in both emitters and the float64 reference. Where the fork spelling means what a BVLC field
  means, real-Caffe cases rewritten in the fork's spelling must still give Caffe's outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import senet
from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import parse_caffemodel_bytes
from senet.converter.load import load_net
from senet.converter.prototxt import read_prototxt
from senet.errors import ShapeError
from tests.conftest import require_shared
from tests.converter.harness import check_net, reference, write_net
from tests.converter.test_layer_cases import assert_caffe_equal, load_case
from tests.converter.test_layers import net_text
from tests.reference.caffe_forward import forward
from tests.reference.caffemodel_wire import read_caffemodel
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input, make_weights

# (message, field, number, the fork whose number it is), from each fork's caffe.proto
FORK_NUMBERS = [
    ("LayerParameter", "bn_param", 45, "alexgkendall/caffe-segnet, synopsys-caffe"),
    ("LayerParameter", "upsample_param", 149, "ChenYingpeng/caffe-yolov3"),
    ("LayerParameter", "interp_param", 163, "hszhao/PSPNet, synopsys-caffe"),
    ("LayerParameter", "shuffle_channel_param", 164, "farmingyard/ShuffleNet"),
    ("LayerParameter", "dense_image_data_param", 168, "synopsys-caffe"),
    ("LayerParameter", "resize_nearest_neighbor_param", 210, "synopsys-caffe"),
    ("LayerParameter", "prior_box_param", 203, "weiliu89/caffe (ssd)"),
    ("LayerParameter", "detection_output_param", 204, "weiliu89/caffe (ssd)"),
    ("LayerParameter", "norm_param", 206, "weiliu89/caffe (ssd)"),
    ("LayerParameter", "roi_pooling_param", 8266711, "rbgirshick/caffe-fast-rcnn"),
    ("NetParameter", "engine", 9, "intel/caffe"),
    ("PoolingParameter", "ceil_mode", 14, "synopsys-caffe"),
    ("PoolingParameter", "pad_l", 16, "synopsys-caffe"),
    ("PoolingParameter", "pad_r", 17, "synopsys-caffe"),
    ("PoolingParameter", "pad_t", 18, "synopsys-caffe"),
    ("PoolingParameter", "pad_b", 19, "synopsys-caffe"),
    ("ConvolutionParameter", "pad_l", 26, "synopsys-caffe"),
    ("ConvolutionParameter", "pad_r", 27, "synopsys-caffe"),
    ("ConvolutionParameter", "pad_t", 28, "synopsys-caffe"),
    ("ConvolutionParameter", "pad_b", 29, "synopsys-caffe"),
    ("DropoutParameter", "sample_weights_test", 2, "synopsys-caffe"),
    ("DropoutParameter", "scale_train", 3, "synopsys-caffe"),
    ("ReLUParameter", "relu6", 3, "synopsys-caffe"),
    ("BNParameter", "scale_filler", 1, "alexgkendall/caffe-segnet"),
    ("BNParameter", "shift_filler", 2, "alexgkendall/caffe-segnet"),
    ("BNParameter", "bn_mode", 3, "alexgkendall/caffe-segnet"),
    ("BNParameter", "eps", 4, "hszhao/PSPNet"),
    ("BNParameter", "frozen", 5, "hszhao/PSPNet"),
    ("UpsampleParameter", "scale", 1, "alexgkendall/caffe-segnet, YOLO forks"),
    ("UpsampleParameter", "upsample_h", 6, "alexgkendall/caffe-segnet"),
    ("UpsampleParameter", "upsample_w", 7, "alexgkendall/caffe-segnet"),
    ("InterpParameter", "zoom_factor", 3, "hszhao/PSPNet"),
    ("InterpParameter", "shrink_factor", 4, "hszhao/PSPNet"),
    ("InterpParameter", "pad_end", 6, "hszhao/PSPNet"),
    ("V1LayerParameter", "interp_param", 43, "DeepLab-Context, hszhao/PSPNet"),
    # BVLC keeps the numbers forks reused
    ("LayerParameter", "embed_param", 137, "BVLC (PSPNet bn_param, SegNet upsample_param)"),
    ("LayerParameter", "tile_param", 138, "BVLC (SegNet dense_image_data_param)"),
    ("LayerParameter", "input_param", 143, "BVLC (DeepLab v2 interp_param)"),
    ("PoolingParameter", "round_mode", 13, "BVLC (PR #3057 ceil_mode)"),
    ("ConvolutionParameter", "force_nd_im2col", 17, "BVLC (DeepLab hole)"),
    ("ConvolutionParameter", "dilation", 18, "BVLC (DeepLab hole_h)"),
]


@pytest.mark.parametrize("message,field,number,fork", FORK_NUMBERS,
                         ids=[f"{m}.{f}" for m, f, _, _ in FORK_NUMBERS])
def test_fork_field_numbers(message, field, number, fork):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number, fork


def test_ave_exc_pad_is_synopsys_enum_value_3():
    assert pb.PoolingParameter.AVE_EXC_PAD == 3


# ----------------------------------------------------------------------------- wire helpers

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _top_fields(data: bytes):
    """(number, wire type, raw value bytes) of each top-level field of a message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        start = pos
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 2:
            length, start = _read_varint(data, pos)
            pos = start + length
        else:
            pos += 8 if wire == 1 else 4
        yield number, wire, data[start:pos]


def _field(number: int, wire: int, value: bytes) -> bytes:
    length = _varint(len(value)) if wire == 2 else b""
    return _varint(number << 3 | wire) + length + value


def _renumbered(layer: bytes, numbers: dict[int, int]) -> bytes:
    """The layer's bytes with its top-level fields renumbered as a fork writes them."""
    return b"".join(_field(numbers.get(n, n), w, v) for n, w, v in _top_fields(layer))


def _caffemodel_bytes(layers: list[pb.LayerParameter], numbers=lambda layer: {},
                      extra=lambda layer: b"") -> bytes:
    """A binary net of `layers`, each serialised with the fork's numbers for its type."""
    return b"".join(_field(100, 2, _renumbered(layer.SerializeToString(), numbers(layer))
                           + extra(layer)) for layer in layers)


# ----------------------------------------------------------------------------- binary files

# zoo net -> LayerParameter numbers its fork writes where ours differ, by layer type
ZOO_FORK_NUMBERS = {
    "segnet_basic_camvid": {"Upsample": {149: 137}, "DenseImageData": {168: 138}},
    "bayesian_segnet_camvid": {"Upsample": {149: 137}, "DenseImageData": {168: 138}},
    "enet_cityscapes_bn": {"Upsample": {149: 137}},
    "pspnet50_ade20k": {"BN": {45: 137}},
    "pspnet101_voc2012": {"BN": {45: 137}},
    "deeplab_v2_vgg16_aspp": {"Interp": {163: 143}},
    "shufflenet_v1_1x_g3": {},
    "densenet161_shicai": {},
    "dan_alignment_snps": {},
    "mobilenet_v3_large_snps": {},
    "faster_rcnn_zf_voc": {},
    "yolov3_spp": {},
    "yolov2_intel": {},
}


@pytest.mark.parametrize("name", sorted(ZOO_FORK_NUMBERS))
def test_zoo_net_written_with_its_forks_numbers_decodes_as_its_prototxt(name):
    path = require_shared("caffe_zoo", name, "deploy.prototxt")
    text = read_prototxt(path)
    layers = [raw.param for raw in text.layers]
    by_type = ZOO_FORK_NUMBERS[name]
    data = _caffemodel_bytes(layers, lambda layer: by_type.get(layer.type, {}))
    stored = parse_caffemodel_bytes(data, name)
    assert [raw.param for raw in stored.layers] == layers
    assert stored.unknown_fields == []


def test_a_fork_number_bvlc_reuses_is_read_by_the_layer_type():
    """PSPNet writes bn_param at 137, BVLC's embed_param: read as embed_param the BN layer
    would lose its eps and frozen flag; an Embed layer keeps 137 as embed_param."""
    bn = pb.LayerParameter(name="bn", type="BN", bottom=["x"], top=["x"])
    bn.bn_param.eps = 1e-3
    bn.bn_param.frozen = True
    embed = pb.LayerParameter(name="e", type="Embed", bottom=["i"], top=["e"])
    embed.embed_param.num_output = 7
    embed.embed_param.input_dim = 3
    data = _caffemodel_bytes([bn, embed], lambda layer: {45: 137} if layer.type == "BN" else {})
    first, second = (raw.param for raw in parse_caffemodel_bytes(data).layers)
    assert first == bn and not first.HasField("embed_param")
    assert second == embed


CONV = '''layer { name: "c" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 2 kernel_size: 3 } }'''


def test_stored_net_with_unknown_fields_keeps_its_blobs_and_is_named_in_a_warning(tmp_path):
    text = net_text({"x": (1, 1, 5, 5)}, CONV)
    weights = make_weights(parse_prototxt(text), {"x": (1, 1, 5, 5)}, 0)
    proto, model = write_net(tmp_path, text, weights)
    # field 999 of the conv layer and field 77 of its convolution_param: no fork we declare
    unknown = _field(999, 0, _varint(1)) + _field(106, 2, _field(77, 0, _varint(5)))
    forked = b"".join(
        _field(n, w, v + unknown if n == 100 and pb.LayerParameter.FromString(v).name == "c"
               else v) for n, w, v in _top_fields(model.read_bytes()))
    (tmp_path / "fork.caffemodel").write_bytes(forked)
    warnings = []
    net = load_net(str(tmp_path / "fork.caffemodel"), warn=warnings.append)
    np.testing.assert_array_equal(net.layers[-1].blobs[0], weights["c"][0])
    assert len(warnings) == 1
    assert "layer 'c': LayerParameter field 999" in warnings[0]
    assert "ConvolutionParameter field 77" in warnings[0]
    warnings.clear()
    load_net(str(tmp_path / "fork.caffemodel"), str(proto), warn=warnings.append)
    assert warnings == []  # the prototxt is used: the stored net's fields do not matter


# ----------------------------------------------------------------------------- semantics

def _torch_outputs(tmp_path, text, weights, inputs, outputs):
    torch = pytest.importorskip("torch")
    proto, model = write_net(tmp_path, text, weights, name="torch")
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=outputs)
    with torch.no_grad():
        values = module(*[torch.from_numpy(v.astype(np.float32)) for v in inputs.values()])
    values = values if isinstance(values, tuple) else (values,)
    return dict(zip(outputs, (v.numpy() for v in values)))


def _both_emitters(tmp_path, shapes, body, outputs, tol=1e-5):
    """ONNX and torch against the float64 reference; returns the reference outputs."""
    text = net_text(shapes, body)
    weights = make_weights(parse_prototxt(text), shapes, 0)
    inputs = {n: make_input(s, i + 1) for i, (n, s) in enumerate(shapes.items())}
    check_net(tmp_path, text, weights, inputs, outputs, tol)
    ref = reference(text, weights, inputs)
    for name, value in _torch_outputs(tmp_path, text, weights, inputs, outputs).items():
        assert value.shape == ref[name].shape
        np.testing.assert_allclose(value, ref[name], rtol=0,
                                   atol=tol * np.abs(ref[name]).max(), err_msg=name)
    return ref


# Real-Caffe cases in a fork's spelling that, per the fork's source, means the same thing.
SPELLINGS = {
    "Pooling/max_floor_round_mode": ("round_mode: FLOOR", "ceil_mode: false"),
    "Pooling/ave_floor_round_mode_pad": ("round_mode: FLOOR", "ceil_mode: false"),
    "Pooling/ave_pad1_k3_s2": ("pad: 1", "pad_t: 1 pad_b: 1 pad_l: 1 pad_r: 1"),
    "Pooling/max_pad1_k3_s2": ("pad: 1", "pad_t: 1 pad_b: 1 pad_l: 1 pad_r: 1"),
    "Convolution/k3_pad1_basic": ("pad: 1", "pad_t: 1 pad_b: 1 pad_l: 1 pad_r: 1"),
    "Convolution/group2_dilation2": ("dilation: 2", "hole: 2"),
}


@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_fork_spelling_of_a_real_caffe_case_gives_caffes_output(tmp_path, case):
    model, prototxt, inputs, outputs = load_case(case)
    bvlc, fork = SPELLINGS[case]
    text = prototxt.read_text()
    assert text.count(bvlc) == 1
    forked = tmp_path / "fork.prototxt"
    forked.write_text(text.replace(bvlc, fork))
    with np.errstate(all="ignore"):
        ref = forward(parse_prototxt(forked.read_text()), read_caffemodel(model), inputs)
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=forked,
                         outputs=list(outputs))
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {i.name: inputs[i.name] for i in session.get_inputs()})
    for name, value in zip(names, values):
        assert_caffe_equal(f"onnx {name}", value, outputs[name])
        assert_caffe_equal(f"reference {name}", ref[name].astype(np.float32), outputs[name])
    torch = pytest.importorskip("torch")
    module = senet.to_torch(senet.load_caffe(model, forked), outputs=list(outputs))
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in inputs.values()])
    got = got if isinstance(got, tuple) else (got,)
    for name, value in zip(outputs, got):
        assert_caffe_equal(f"torch {name}", value.numpy(), outputs[name])


def test_trap_densenet_ceil_mode_false_pools_57_to_56(tmp_path):
    """shicai's DenseNet-161 pools 112 -> 56 with ceil_mode: false (floor); a converter that
    ignores the field rounds up as BVLC does and gives 57, and every later shape is off."""
    path = require_shared("caffe_zoo", "densenet161_shicai", "deploy.prototxt")
    net = load_net(None, str(path), weights_optional=True)
    pool = next(layer for layer in net.layers if layer.type == "Pooling")
    assert net.shapes[pool.bottoms[0]][2:] == (112, 112)
    assert net.shapes[pool.tops[0]][2:] == (56, 56)
    ignored = path.read_text().replace("ceil_mode: false", "")
    (tmp_path / "ignored.prototxt").write_text(ignored)
    wrong_net = load_net(None, str(tmp_path / "ignored.prototxt"), weights_optional=True)
    assert wrong_net.shapes[pool.tops[0]][2:] == (57, 57)  # what ignoring it gives


ASYMMETRIC = {
    "conv": ({"x": (2, 3, 7, 8)}, '''layer { name: "y" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride: 2
  pad_t: 0 pad_b: 2 pad_l: 1 pad_r: 0 } }'''),
    "max": ({"x": (2, 3, 7, 8)}, '''layer { name: "y" type: "Pooling" bottom: "x" top: "y"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad_t: 0 pad_b: 2 pad_l: 1 pad_r: 0 } }'''),
    "ave": ({"x": (2, 3, 7, 8)}, '''layer { name: "y" type: "Pooling" bottom: "x" top: "y"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad_t: 0 pad_b: 2 pad_l: 1 pad_r: 0 } }'''),
    "ave_exc_pad": ({"x": (2, 3, 7, 8)}, '''layer { name: "y" type: "Pooling" bottom: "x" top: "y"
  pooling_param { pool: AVE_EXC_PAD kernel_size: 3 stride: 2 pad_t: 1 pad_b: 1 pad_l: 1
  pad_r: 2 } }'''),
    "ave_exc_pad_symmetric_floor": ({"x": (2, 3, 9, 6)}, '''layer { name: "y" type: "Pooling"
  bottom: "x" top: "y" pooling_param { pool: AVE_EXC_PAD kernel_size: 3 stride: 2 pad: 1
  ceil_mode: false } }'''),
    "hole_hw": ({"x": (1, 2, 11, 10)}, '''layer { name: "y" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 hole_h: 2 hole_w: 3 } }'''),
}


@pytest.mark.parametrize("case", sorted(ASYMMETRIC))
def test_fork_geometry_in_both_emitters(tmp_path, case):
    shapes, body = ASYMMETRIC[case]
    _both_emitters(tmp_path, shapes, body, ["y"])


def test_asymmetric_shapes_follow_synopsys_rule(tmp_path):
    """Synopsys: out = ceil((in + pad_t + pad_b - k) / s) + 1 (floor for conv), then the
    last window dropped when it starts at in + pad_t or later."""
    for case, want in (("conv", (4, 4)), ("max", (4, 4)), ("ave", (4, 4))):
        shapes, body = ASYMMETRIC[case]
        proto = tmp_path / f"{case}.prototxt"
        proto.write_text(net_text(shapes, body))
        assert load_net(None, str(proto), weights_optional=True).shapes["y"][2:] == want


def test_ave_exc_pad_divides_by_the_cells_inside_the_input(tmp_path):
    """On a constant input AVE_EXC_PAD gives the constant everywhere; AVE (BVLC) divides a
    corner window by 9 although it holds 4 cells: the wrong variant gives 4/9 there."""
    shapes = {"x": (1, 1, 3, 3)}
    ones = {"x": np.ones((1, 1, 3, 3))}
    exc = '''layer { name: "y" type: "Pooling" bottom: "x" top: "y"
  pooling_param { pool: AVE_EXC_PAD kernel_size: 3 stride: 1 pad: 1 } }'''
    got = check_net(tmp_path, net_text(shapes, exc), {}, ones, ["y"])
    np.testing.assert_allclose(got["y"], np.ones((1, 1, 3, 3)), rtol=1e-6)
    ave = reference(net_text(shapes, exc.replace("AVE_EXC_PAD", "AVE")), {}, ones)["y"]
    assert ave[0, 0, 0, 0] == pytest.approx(4 / 9)


def test_hole_is_dilation(tmp_path):
    shapes = {"x": (1, 2, 11, 11)}
    body = '''layer { name: "y" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 3 kernel_size: 3 hole: 2 } }'''
    hole = _both_emitters(tmp_path, shapes, body, ["y"])["y"]
    assert hole.shape == (1, 3, 7, 7)
    text = net_text(shapes, body.replace("hole: 2", "dilation: 2"))
    weights = make_weights(parse_prototxt(net_text(shapes, body)), shapes, 0)
    inputs = {"x": make_input(shapes["x"], 1)}
    np.testing.assert_array_equal(reference(text, weights, inputs)["y"], hole)


def test_dropout_scale_train_false_scales_at_test_time(tmp_path):
    """py-faster-rcnn: with scale_train: false the test pass multiplies by 1 − ratio
    (an identity Dropout, BVLC's, would be off by 1/(1 − ratio))."""
    shapes = {"x": (2, 3, 4, 4)}
    body = '''layer { name: "y" type: "Dropout" bottom: "x" top: "y"
  dropout_param { dropout_ratio: 0.3 scale_train: false } }'''
    ref = _both_emitters(tmp_path, shapes, body, ["y"], tol=1e-6)
    np.testing.assert_allclose(ref["y"], 0.7 * make_input(shapes["x"], 1), rtol=1e-6)


REFUSED = {
    "sample_weights_test": ('''layer { name: "d" type: "Dropout" bottom: "x" top: "y"
  dropout_param { sample_weights_test: true } }''', "Monte Carlo dropout"),
    "ceil_and_round_mode": ('''layer { name: "d" type: "Pooling" bottom: "x" top: "y"
  pooling_param { kernel_size: 2 ceil_mode: false round_mode: CEIL } }''', "disagree"),
    "pad_and_pad_t": ('''layer { name: "d" type: "Pooling" bottom: "x" top: "y"
  pooling_param { kernel_size: 3 pad: 1 pad_t: 1 } }''', "not both"),
    "conv_pad_h_and_pad_l": ('''layer { name: "d" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 1 kernel_size: 3 pad_h: 1 pad_w: 1 pad_l: 1 } }''',
                             "not both"),
    "hole_and_dilation": ('''layer { name: "d" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 1 kernel_size: 3 hole: 2 dilation: 3 } }''', "disagree"),
    "deconv_pad_t": ('''layer { name: "d" type: "Deconvolution" bottom: "x" top: "y"
  convolution_param { num_output: 1 kernel_size: 3 pad_t: 1 } }''', "Convolution only"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_fork_field_misuse_is_one_error_naming_the_layer(tmp_path, case):
    body, fragment = REFUSED[case]
    proto = tmp_path / "net.prototxt"
    proto.write_text(net_text({"x": (1, 2, 6, 6)}, body))
    with pytest.raises(ShapeError, match=fragment) as error:
        load_net(None, str(proto), weights_optional=True)
    assert error.value.layer == "d"
