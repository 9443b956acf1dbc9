"""Reading nets as their authors wrote them: a prototxt alone for --inspect, text told from
binary by content, V1 files and fork V1 enums, Caffe's NetState rules, data layers of every
kind as inputs, --input-shape by input name, and every unsupported layer named at once."""

from __future__ import annotations

import numpy as np
import pytest

import senet
from senet.converter.caffe_reader import read_caffemodel
from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import looks_like_prototxt, parse_prototxt_text
from senet.errors import CaffeFormatError, UnsupportedLayerError, UsageError
from tests.conftest import require_shared
from tests.test_cli import assert_cli_error, run_cli

CONV = 'convolution_param { num_output: 2 kernel_size: 3 }'


def load(tmp_path, text: str, **options):
    path = tmp_path / "net.prototxt"
    path.write_bytes(text.encode())
    return senet.load_caffe(prototxt=path, **options)


def names(net) -> list[str]:
    return [layer.name for layer in net.layers]


# ------------------------------------------------------------------------ text or binary

@pytest.mark.parametrize("head", [b'name: "x"\n', b"layer {\n", b"\nengine: \"MKL2017\"\n",
                                  b"# a comment\n", b"  input: 'data'", b"layers{ name:'a' }",
                                  b"state { phase: TEST }\r\n"])
def test_text_heads_are_prototxt(head):
    assert looks_like_prototxt(head)


def test_a_written_caffemodel_is_not_text(tmp_path):
    cf = parse_prototxt_text('name: "layer"\nlayer { name: "c" type: "Convolution" }')
    net = cf.net
    net.layer.extend(raw.param for raw in cf.layers)
    write_caffemodel(tmp_path / "m.caffemodel", net, {"c": [np.ones((2, 1, 1, 1), np.float32)]})
    assert not looks_like_prototxt((tmp_path / "m.caffemodel").read_bytes()[:64])
    # a net name that reads like a field ('name: x', 10 bytes after a \n length byte)
    assert not looks_like_prototxt(b"\n\nname: x\xa2\x06\x10\n")


def test_a_binary_net_whose_name_length_is_a_hash_sign_is_binary(tmp_path):
    """A 35-character net name is stored after the length byte 0x23, '#': a sniffer that takes
    a leading '#' for a prototxt comment refuses a real caffemodel."""
    cf = parse_prototxt_text(f'name: "{"n" * 35}"\nlayer {{ name: "c" type: "Convolution" }}')
    net = cf.net
    net.layer.extend(raw.param for raw in cf.layers)
    write_caffemodel(tmp_path / "m.caffemodel", net, {"c": [np.ones((2, 1, 1, 1), np.float32)]})
    assert (tmp_path / "m.caffemodel").read_bytes()[:2] == b"\n#"
    assert read_caffemodel(tmp_path / "m.caffemodel").net.name == "n" * 35


def test_squeezenext_is_read_as_text_not_as_a_broken_binary():
    """Its file opens with a blank line and a fork's `engine` field: once sniffed as binary
    ("unsupported wire type 3")."""
    path = require_shared("caffe_zoo", "squeezenext_1.0_23", "deploy.prototxt")
    with pytest.raises(CaffeFormatError, match="a text prototxt, not a binary"):
        read_caffemodel(path)


# ------------------------------------------------------------------------ a prototxt alone

NET = f"""name: "small"
input: "data" input_shape {{ dim: 1 dim: 1 dim: 8 dim: 8 }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" {CONV} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
"""


def test_inspect_a_prototxt_alone(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(NET)
    result = run_cli(path, "--inspect")
    assert result.exit_code == 0, result.stderr
    assert "conv" in result.stdout and "[1, 2, 6, 6]" in result.stdout
    assert "parameters: 20 " in result.stdout
    assert senet.inspect(path) == result.stdout.rstrip("\n")


def test_converting_a_prototxt_alone_is_refused(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(NET)
    assert_cli_error(run_cli(path, "--to", "onnx", "-q", "-o", tmp_path / "x.onnx"), 1,
                     "no weights to convert", "--inspect")
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------ spellings

V1_NET = ("name: 'v1'\r\ninput: 'data'\r\ninput_dim: 1\r\ninput_dim: 1\r\ninput_dim: 8\r\n"
          "input_dim: 8\r\n"
          "layers {\tname: 'conv'\ttype: 4\tbottom: 'data'\ttop: 'conv'\t" + CONV + " }\r\n"
          "layers { name: 'pool' type: POOLING bottom: 'conv' top: 'pool' "
          "pooling_param { pool: 1 kernel_size: 2 stride: 2 } }\r\n"
          "layers { name: 'relu' type: RELU bottom: 'pool' top: 'pool' }\r\n"
          "layers { name: 'prob' type: SOFTMAX bottom: 'pool' top: 'prob' }\r\n")


def test_v1_with_crlf_tabs_single_quotes_numbers_and_one_line_layers(tmp_path):
    net = load(tmp_path, V1_NET)
    assert [layer.type for layer in net.layers] == ["Convolution", "Pooling", "ReLU", "Softmax"]
    assert net.layers[1].param.pooling_param.pool == 1  # AVE, written as a number
    assert net.shapes["prob"] == (1, 2, 3, 3)


def test_fork_v1_enums_keep_their_names(tmp_path):
    """DeepLab writes `type: IMAGE_SEG_DATA` (a data layer), Synopsys `type: CROP`: enum values
    stock Caffe lacks, read as the types the forks' upgrades give them."""
    text = ("layers { name: 'data' type: IMAGE_SEG_DATA top: 'data' top: 'label' "
            "transform_param { crop_size: 8 } }\n"
            "layers { name: 'conv' type: CONVOLUTION bottom: 'data' top: 'conv' " + CONV + " }\n"
            "layers { name: 'fancy' type: FANCY_THING bottom: 'conv' top: 'out' }\n")
    with pytest.raises(UnsupportedLayerError, match=r"fancy \(FancyThing\)"):
        load(tmp_path, text)
    net = load(tmp_path, text.rsplit("layers", 1)[0])
    assert net.inputs == {"data": (1, 3, 8, 8)}


# ------------------------------------------------------------------------ NetState rules

def test_train_and_test_copies_of_a_layer(tmp_path):
    text = (NET.replace('layer { name: "relu"', 'layer { name: "relu" include { phase: TRAIN }')
            + 'layer { name: "relu" type: "Sigmoid" bottom: "conv" top: "conv" '
              'include { phase: TEST } }\n')
    net = load(tmp_path, text)
    assert [layer.type for layer in net.layers] == ["Convolution", "Sigmoid"]


def test_stages_levels_and_the_nets_state(tmp_path):
    layers = [("deploy_only", 'include { stage: "deploy" }'),
              ("not_deploy", 'include { not_stage: "deploy" }'),
              ("excluded_in_deploy", 'exclude { stage: "deploy" }'),
              ("level_1", "include { min_level: 1 }"),
              ("level_0", "include { max_level: 0 }")]
    body = "".join(f'layer {{ name: "{name}" type: "ReLU" bottom: "conv" top: "conv" {rule} }}\n'
                   for name, rule in layers)
    assert names(load(tmp_path, NET + body)) == ["conv", "relu", "not_deploy",
                                                 "excluded_in_deploy", "level_0"]
    staged = 'state { stage: "deploy" }\n' + NET + body
    assert names(load(tmp_path, staged)) == ["conv", "relu", "deploy_only", "level_0"]


# ------------------------------------------------------------------------ data layers

TAIL = (f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" {CONV} }}\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" '
        'top: "loss" }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "conv" bottom: "label" top: "acc" '
        'include { phase: TEST } }\n')

DATA_LAYERS = {
    "Data crop": ('type: "Data" top: "data" top: "label" transform_param { crop_size: 9 }',
                  (1, 3, 9, 9)),
    "ImageData gray": ('type: "ImageData" top: "data" top: "label" '
                       'image_data_param { is_color: false new_height: 6 new_width: 7 }',
                       (1, 1, 6, 7)),
    "DummyData": ('type: "DummyData" top: "data" top: "label" dummy_data_param { '
                  'shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } }', (2, 3, 5, 5)),
    "DummyData legacy": ('type: "DummyData" top: "data" top: "label" dummy_data_param { '
                         'num: 4 channels: 1 height: 6 width: 6 }', (4, 1, 6, 6)),
    "MemoryData": ('type: "MemoryData" top: "data" top: "label" memory_data_param { '
                   'batch_size: 3 channels: 2 height: 5 width: 4 }', (3, 2, 5, 4)),
    "WindowData": ('type: "WindowData" top: "data" top: "label" '
                   'window_data_param { crop_size: 7 }', (1, 3, 7, 7)),
    "Python": ('type: "Python" top: "data" top: "label" '
               'python_param { module: "voc_layers" layer: "VOCSegDataLayer" }', None),
    "DenseImageData": ('type: "DenseImageData" top: "data" top: "label" '
                       'transform_param { crop_size: 6 }', (1, 3, 6, 6)),
    "ImageSegData": ('type: "ImageSegData" top: "data" top: "label" '
                     'transform_param { crop_size: 6 }', (1, 3, 6, 6)),
    "AnnotatedData": ('type: "AnnotatedData" top: "data" top: "label" '
                      'transform_param { crop_size: 6 }', (1, 3, 6, 6)),
    "HDF5Data": ('type: "HDF5Data" top: "data" top: "label"', None),
}


@pytest.mark.parametrize("kind", sorted(DATA_LAYERS))
def test_data_layers_become_inputs_and_losses_go(tmp_path, kind):
    layer, shape = DATA_LAYERS[kind]
    text = f'layer {{ name: "input" {layer} }}\n' + TAIL
    warnings = []
    net = load(tmp_path, text, input_shape=None if shape else {"data": (1, 3, 5, 5)},
               warn=warnings.append)
    assert net.inputs == {"data": shape or (1, 3, 5, 5)}
    assert names(net) == ["conv"] and not warnings


def test_an_undeclared_input_shape_is_defaulted_with_a_warning(tmp_path):
    warnings = []
    net = load(tmp_path, 'layer { name: "d" type: "HDF5Data" top: "data" }\n' + TAIL,
               warn=warnings.append)
    assert net.inputs == {"data": (1, 3, 224, 224)}
    assert len(warnings) == 1 and "--input-shape NAME=" in warnings[0]


def test_every_data_top_of_a_python_layer_is_an_input(tmp_path):
    """FCN's NYUD layer gives color, hha and label: both images feed the net."""
    text = ('layer { name: "d" type: "Python" top: "color" top: "hha" top: "label" '
            'python_param { module: "nyud_layers" layer: "NYUDSegDataLayer" } }\n'
            f'layer {{ name: "c1" type: "Convolution" bottom: "color" top: "c1" {CONV} }}\n'
            f'layer {{ name: "c2" type: "Convolution" bottom: "hha" top: "c2" {CONV} }}\n'
            'layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "sum" }\n')
    net = load(tmp_path, text, input_shape={"color": (1, 3, 8, 8), "hha": (1, 3, 8, 8)})
    assert list(net.inputs) == ["color", "hha"] and names(net) == ["c1", "c2", "sum"]


def test_a_label_only_data_layer_is_no_input(tmp_path):
    text = ('layer { name: "d" type: "DummyData" top: "data" '
            'dummy_data_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }\n'
            'layer { name: "l" type: "DummyData" top: "label" '
            'dummy_data_param { shape { dim: 1 } } }\n' + TAIL)
    assert load(tmp_path, text).inputs == {"data": (1, 3, 5, 5)}


# ------------------------------------------------------------------------ --input-shape

TWO = (f'input: "a" input_shape {{ dim: 1 dim: 1 dim: 4 dim: 4 }}\n'
       f'input: "b" input_shape {{ dim: 1 dim: 1 dim: 4 dim: 4 }}\n'
       f'layer {{ name: "ca" type: "Convolution" bottom: "a" top: "ca" {CONV} }}\n'
       f'layer {{ name: "cb" type: "Convolution" bottom: "b" top: "cb" {CONV} }}\n')


@pytest.mark.parametrize("args", [["--input-shape", "a=1,1,9,9", "--input-shape", "b=2x1x8x8"],
                                  ["--input-shape", "a=1,1,9,9;b=2,1,8,8"],
                                  ["--input-shape", "a=1,1,9,9,b=2,1,8,8"]])
def test_input_shape_by_name(tmp_path, args):
    path = tmp_path / "two.prototxt"
    path.write_text(TWO)
    result = run_cli(path, "--inspect", *args)
    assert result.exit_code == 0, result.stderr
    assert "inputs: a [1, 1, 9, 9], b [2, 1, 8, 8]" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--input-shape", "1,1,9,9"], "ambiguous"),
    (["--input-shape", "c=1,1,9,9"], "not an input of the net"),
    (["--input-shape", "a=1,9,9"], "3 dimensions"),
    (["--input-shape", "a=1,1,9,9", "--input-shape", "a=1,1,8,8"], "twice"),
    (["--input-shape", "a=1,1,x,9"], "--input-shape"),
    (["--input-shape", "a=1,1,0,9"], "positive"),
    (["--input-shape", "=1,1,9,9"], "NAME="),
])
def test_bad_input_shapes_by_name(tmp_path, args, fragment):
    path = tmp_path / "two.prototxt"
    path.write_text(TWO)
    assert_cli_error(run_cli(path, "--inspect", *args), 2, fragment)


def test_input_shape_by_name_through_the_api(tmp_path):
    net = load(tmp_path, TWO, input_shape={"b": (3, 1, 5, 5)})
    assert net.inputs == {"a": (1, 1, 4, 4), "b": (3, 1, 5, 5)}
    assert net.shapes["cb"] == (3, 2, 3, 3)
    with pytest.raises(UsageError, match="positive"):
        load(tmp_path, TWO, input_shape={"b": (3, 0, 5, 5)})


# ------------------------------------------------------------------------ unsupported layers

def test_every_unsupported_layer_is_listed_at_once(tmp_path):
    text = NET + ('layer { name: "odd" type: "Oddity" bottom: "conv" top: "odd" }\n'
                  'layer { name: "prop" type: "Python" bottom: "conv" top: "rois" '
                  'python_param { module: "rpn.anchor_target_layer" '
                  'layer: "AnchorTargetLayer" } }\n'
                  'layer { name: "odd2" type: "Oddity" bottom: "odd" top: "odd2" }\n')
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    message = assert_cli_error(run_cli(path, "--inspect"), 1, "unsupported Caffe layers")
    assert ("odd (Oddity), prop (Python rpn.anchor_target_layer.AnchorTargetLayer), "
            "odd2 (Oddity)" in message)
    assert '@senet.converter.register("Oddity")' in message and "python_param" in message


def test_every_v1_enum_and_parameter_survives_the_upgrade():
    """Each V1 LayerType has its type string, and every V1 parameter that LayerParameter
    also has is carried over (a V1 WindowData's crop size, for one)."""
    from senet.converter import caffe_pb2 as pb
    from senet.converter.upgrade import upgrade_v1_layer
    for name, number in pb.V1LayerParameter.LayerType.items():
        if number:
            assert upgrade_v1_layer(pb.V1LayerParameter(name="x", type=number), "t").type
    v1 = pb.V1LayerParameter(name="w", type=pb.V1LayerParameter.WINDOW_DATA)
    shared = {f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields if f.message_type} & {
        f.name for f in pb.LayerParameter.DESCRIPTOR.fields} - {"blobs", "include", "exclude"}
    for field in shared:
        getattr(v1, field).SetInParent()
    upgraded = upgrade_v1_layer(v1, "t")
    assert sorted(f for f in shared if not upgraded.HasField(f)) == []


def test_declared_inputs_beat_a_train_only_data_layer(tmp_path):
    """U-Net (phseg_v5) declares `input: "data"` 1x1x444x892 beside an HDF5Data that only the
    TRAIN net has: the TEST net's input is the declared one."""
    text = ('input: "data" input_dim: 1 input_dim: 1 input_dim: 9 input_dim: 8\n'
            'layers { top: "data" top: "label" name: "load" type: HDF5_DATA '
            'include: { phase: TRAIN } }\n'
            f'layers {{ name: "conv" type: CONVOLUTION bottom: "data" top: "conv" {CONV} }}\n')
    assert load(tmp_path, text).inputs == {"data": (1, 1, 9, 8)}
