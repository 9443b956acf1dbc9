"""Bad input files through senet-convert and through load_net.

Through the CLI each case must give exit status 1 (2 for usage errors), exactly one stderr line
``senet-convert: error: ...`` naming what is wrong, no traceback, and no output or ``.part`` file.
Through the library each case must raise the documented SenetError subclass. The broken files
are made here from real Caffe files (../shared, skipped when absent) and from the example bundled
with the package, by cutting bytes or by building protobuf messages with the Caffe schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from senet.converter import caffe_pb2 as pb
from senet.converter.load import load_net
from senet.errors import (CaffeFormatError, GraphError, SenetError, ShapeError,
                          UnsupportedLayerError)
from tests.conftest import require_shared
from tests.test_cli import (TINY, TINY_PROTOTXT, assert_cli_error, assert_nothing_written,
                            run_cli)


def real(*parts: str) -> Path:
    return require_shared("real_caffe", *parts)


def convert_expecting_error(tmp_path: Path, model, *extra, code: int = 1,
                            fragments: tuple[str, ...] = ()) -> str:
    """Run the CLI into an empty output folder; check the failure contract and that the
    folder stays empty. Returns the error message."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    result = run_cli(model, "--to", "onnx", "-q", "-o", out_dir / "model.onnx", *extra)
    message = assert_cli_error(result, code, *fragments)
    assert_nothing_written(out_dir)
    return message


def one_layer_net(blob: pb.BlobProto | None = None, *, num_output: int = 2,
                  bias_term: bool = False) -> bytes:
    """A caffemodel: input 1x3x4x4 -> InnerProduct 'ip' with the given stored blob."""
    net = pb.NetParameter(name="crafted")
    net.input.append("data")
    net.input_shape.add().dim.extend([1, 3, 4, 4])
    layer = net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    layer.inner_product_param.num_output = num_output
    layer.inner_product_param.bias_term = bias_term
    if blob is not None:
        layer.blobs.add().CopyFrom(blob)
    return net.SerializeToString()


def blob(shape=None, values: int = 0, legacy=None) -> pb.BlobProto:
    b = pb.BlobProto()
    if shape is not None:
        b.shape.dim.extend(shape)
    if legacy is not None:
        b.num, b.channels, b.height, b.width = legacy
    b.data.extend(np.arange(values, dtype=np.float32).tolist())
    return b


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


# ------------------------------------------------------------------------ the crafted net is sound

def test_crafted_net_with_a_matching_blob_converts(tmp_path):
    """Control for the crafted cases below: with 2x48 values the same file converts."""
    model = write(tmp_path, "ok.caffemodel", one_layer_net(blob([2, 48], 96)))
    out = tmp_path / "ok.onnx"
    result = run_cli(model, "--to", "onnx", "-q", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.exists()


# -------------------------------------------------------------------------------- not a caffemodel

@pytest.mark.parametrize("source", ["bundled", "real_v2", "real_v1"])
def test_truncated_caffemodel(tmp_path, source):
    original = {"bundled": lambda: TINY,
                "real_v2": lambda: real("mtcnn_kpzhang93", "det1.caffemodel"),
                "real_v1": lambda: real("everpeace_cifar10_v1",
                                        "cifar10_quick_iter_5000.caffemodel")}[source]()
    data = original.read_bytes()
    model = write(tmp_path, "half.caffemodel", data[:len(data) // 2])
    message = convert_expecting_error(tmp_path, model, fragments=("half.caffemodel",))
    assert "truncated" in message or "cut short" in message, message
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_random_bytes(tmp_path):
    noise = np.random.default_rng(20240601).integers(0, 256, 64 * 1024, np.uint8).tobytes()
    model = write(tmp_path, "noise.caffemodel", noise)
    convert_expecting_error(tmp_path, model, fragments=("noise.caffemodel",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_empty_file(tmp_path):
    model = write(tmp_path, "empty.caffemodel", b"")
    convert_expecting_error(tmp_path, model, fragments=("empty",))


def test_onnx_file_given_as_caffemodel(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, producer_name="someone"), str(model))
    convert_expecting_error(tmp_path, model, fragments=("relu.onnx",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_blobproto_given_as_caffemodel(tmp_path):
    """A valid protobuf that is not a net: a mean file (serialized BlobProto)."""
    mean = pb.BlobProto()
    mean.num, mean.channels, mean.height, mean.width = 1, 3, 4, 4
    mean.data.extend([104.0] * 16 + [117.0] * 16 + [123.0] * 16)
    model = write(tmp_path, "mean.binaryproto", mean.SerializeToString())
    message = convert_expecting_error(tmp_path, model, fragments=("mean.binaryproto",))
    assert "layer" in message  # says that no layers were found
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_real_mean_binaryproto_given_as_caffemodel(tmp_path):
    model = require_shared("real_caffe", "bvlc_caffe_aux", "imagenet_mean.binaryproto")
    convert_expecting_error(tmp_path, model, fragments=("imagenet_mean.binaryproto",))


def test_prototxt_given_as_caffemodel(tmp_path):
    convert_expecting_error(tmp_path, TINY_PROTOTXT, fragments=("tiny_senet.prototxt",))


def test_caffemodel_given_as_prototxt(tmp_path):
    convert_expecting_error(tmp_path, TINY, "--prototxt", TINY,
                            fragments=("tiny_senet.caffemodel",))


def test_layer_name_not_utf8(tmp_path):
    data = one_layer_net(blob([2, 48], 96)).replace(b"\x0a\x02ip", b"\x0a\x02\xff\xfe")
    assert b"\xff\xfe" in data
    model = write(tmp_path, "latin.caffemodel", data)
    convert_expecting_error(tmp_path, model, fragments=("latin.caffemodel",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


# ---------------------------------------------------------------------------------- blobs that lie

def test_blob_length_differs_from_shape(tmp_path):
    model = write(tmp_path, "short.caffemodel", one_layer_net(blob([2, 48], 95)))
    convert_expecting_error(tmp_path, model, fragments=("95", "96", "'ip'"))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_legacy_blob_length_differs_from_shape(tmp_path):
    model = write(tmp_path, "legacy.caffemodel",
                  one_layer_net(blob(legacy=[1, 1, 2, 48], values=100)))
    convert_expecting_error(tmp_path, model, fragments=("100", "96"))


@pytest.mark.parametrize("shape", [[2 ** 40, 2 ** 40], [2 ** 62, 2 ** 62, 16],
                                   [2 ** 31 - 1] * 4])
def test_blob_shape_product_overflows(tmp_path, shape):
    """An absurd shape is refused up front (no attempt to allocate or reshape)."""
    model = write(tmp_path, "huge.caffemodel", one_layer_net(blob(shape, 4)))
    convert_expecting_error(tmp_path, model, fragments=("'ip'",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_blob_shape_exceeds_its_data(tmp_path):
    model = write(tmp_path, "big.caffemodel", one_layer_net(blob([1000, 1000], 4)))
    convert_expecting_error(tmp_path, model, fragments=("1000000",))


def test_negative_blob_dimension(tmp_path):
    model = write(tmp_path, "neg.caffemodel", one_layer_net(blob([-2, 48], 96)))
    convert_expecting_error(tmp_path, model, fragments=("-2",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


def test_blob_shape_wrong_for_the_layer(tmp_path):
    """96 values, self-consistent blob, but InnerProduct 2 x (3*4*4) needs [2, 48]."""
    model = write(tmp_path, "shape.caffemodel", one_layer_net(blob([4, 24], 96)))
    convert_expecting_error(tmp_path, model, fragments=("'ip'", "[4, 24]", "[2, 48]"))
    with pytest.raises(ShapeError):
        load_net(str(model))


def test_blob_count_wrong_for_the_layer(tmp_path):
    """bias_term: true needs weights and bias; the file stores only the weights."""
    model = write(tmp_path, "nobias.caffemodel",
                  one_layer_net(blob([2, 48], 96), bias_term=True))
    convert_expecting_error(tmp_path, model, fragments=("'ip'",))
    with pytest.raises(ShapeError):
        load_net(str(model))


def test_layer_without_weights(tmp_path):
    model = write(tmp_path, "noweights.caffemodel", one_layer_net(None))
    convert_expecting_error(tmp_path, model, fragments=("'ip'",))
    with pytest.raises(ShapeError):
        load_net(str(model))


# -------------------------------------------------------------------------- prototxt vs caffemodel

def _edited_prototxt(tmp_path: Path, source: Path, old: str, new: str, name: str,
                     count: int = 1) -> Path:
    text = source.read_text()
    assert text.count(old) >= count, f"{old!r} not in {source}"
    edited = text.replace(old, new, count)
    return write(tmp_path, name, edited)


def test_prototxt_num_output_mismatch_bundled(tmp_path):
    prototxt = _edited_prototxt(tmp_path, TINY_PROTOTXT, "num_output: 16 kernel_size: 3 pad: 1 "
                                "stride: 1", "num_output: 8 kernel_size: 3 pad: 1 stride: 1",
                                "narrow.prototxt")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt,
                            fragments=("'conv1'", "16", "8"))
    with pytest.raises(ShapeError):
        load_net(str(TINY), str(prototxt))


def test_prototxt_num_output_mismatch_real(tmp_path):
    source = real("mtcnn_kpzhang93", "det1.prototxt")
    prototxt = _edited_prototxt(tmp_path, source, "num_output: 10", "num_output: 12",
                                "det1_wide.prototxt")
    model = real("mtcnn_kpzhang93", "det1.caffemodel")
    convert_expecting_error(tmp_path, model, "--prototxt", prototxt,
                            fragments=("'conv1'", "[10, 3, 3, 3]", "[12, 3, 3, 3]"))
    with pytest.raises(ShapeError):
        load_net(str(model), str(prototxt))


def test_unknown_layer_types_listed_at_once(tmp_path):
    text = TINY_PROTOTXT.read_text()
    text = text.replace('name: "conv1/relu" type: "ReLU"', 'name: "conv1/relu" type: "FancyNorm"')
    text = text.replace('name: "res2/prob" type: "Sigmoid"', 'name: "res2/prob" type: "WarpDrive"')
    assert "FancyNorm" in text and "WarpDrive" in text
    prototxt = write(tmp_path, "fork.prototxt", text)
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt,
                            fragments=("conv1/relu", "FancyNorm", "res2/prob", "WarpDrive"))
    with pytest.raises(UnsupportedLayerError):
        load_net(str(TINY), str(prototxt))


def test_unknown_layer_types_in_real_model(tmp_path):
    source = real("mtcnn_kpzhang93", "det1.prototxt")
    text = source.read_text()
    text = text.replace('type: "PReLU"\n  bottom: "conv1"', 'type: "FancyNorm"\n  bottom: "conv1"')
    text = text.replace('type: "PReLU"\n  bottom: "conv2"', 'type: "WarpDrive"\n  bottom: "conv2"')
    assert "FancyNorm" in text and "WarpDrive" in text
    prototxt = write(tmp_path, "det1_fork.prototxt", text)
    convert_expecting_error(tmp_path, real("mtcnn_kpzhang93", "det1.caffemodel"),
                            "--prototxt", prototxt,
                            fragments=("PReLU1", "FancyNorm", "PReLU2", "WarpDrive"))


def test_layer_name_with_newline_stays_one_line(tmp_path):
    prototxt = _edited_prototxt(tmp_path, TINY_PROTOTXT, 'name: "conv1/relu" type: "ReLU"',
                                'name: "conv1\\nrelu" type: "FancyNorm"', "newline.prototxt")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt, fragments=("FancyNorm",))


def test_bottom_nothing_produces(tmp_path):
    prototxt = _edited_prototxt(tmp_path, TINY_PROTOTXT,
                                'type: "Pooling" bottom: "conv1" top: "pool1"',
                                'type: "Pooling" bottom: "ghost" top: "pool1"', "ghost.prototxt")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt, fragments=("ghost", "pool1"))
    with pytest.raises(GraphError):
        load_net(str(TINY), str(prototxt))


def test_unknown_prototxt_field_names_field_and_line(tmp_path):
    text = TINY_PROTOTXT.read_text()
    lines = text.splitlines()
    (index,) = [i for i, line in enumerate(lines) if 'name: "res2/down"' in line]
    lines[index] = lines[index].replace("kernel_size: 1", "kernel_size: 1 warp_factor: 7")
    prototxt = write(tmp_path, "fork.prototxt", "\n".join(lines) + "\n")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt,
                            fragments=("warp_factor", f"line {index + 1}", "fork.prototxt"))
    with pytest.raises(CaffeFormatError):
        load_net(str(TINY), str(prototxt))


def test_every_unknown_prototxt_field_is_listed(tmp_path):
    lines = TINY_PROTOTXT.read_text().splitlines()
    marks = []
    for layer, extra in (("res2/down", "warp_factor: 7"), ("pool1", 'fork_param { mode: "x}" }')):
        (index,) = [i for i, line in enumerate(lines) if f'name: "{layer}"' in line]
        lines[index] = lines[index].replace("} }", f"}} {extra} }}", 1)
        marks.append(f"line {index + 1}")
    prototxt = write(tmp_path, "fork.prototxt", "\n".join(lines) + "\n")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt,
                            fragments=("warp_factor", "fork_param", *marks))


def test_input_shape_of_the_wrong_rank_is_a_usage_error(tmp_path):
    convert_expecting_error(tmp_path, TINY, "--input-shape", "1,3,32", code=2,
                            fragments=("--input-shape has 3 dimensions", "'data' has 4"))


def test_prototxt_syntax_error_names_line(tmp_path):
    lines = TINY_PROTOTXT.read_text().splitlines()
    (index,) = [i for i, line in enumerate(lines) if 'name: "pool1"' in line]
    lines[index] = lines[index].replace("kernel_size: 3", "kernel_size: {")
    prototxt = write(tmp_path, "broken.prototxt", "\n".join(lines) + "\n")
    convert_expecting_error(tmp_path, TINY, "--prototxt", prototxt,
                            fragments=(f"line {index + 1}",))


def test_v1_layer_without_type(tmp_path):
    net = pb.NetParameter(name="v1")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 4])
    net.layers.add(name="mystery", bottom=["data"], top=["out"])
    model = write(tmp_path, "v1.caffemodel", net.SerializeToString())
    convert_expecting_error(tmp_path, model, fragments=("mystery",))
    with pytest.raises(CaffeFormatError):
        load_net(str(model))


# ------------------------------------------------------------------------------- files and options

def test_missing_caffemodel(tmp_path):
    convert_expecting_error(tmp_path, tmp_path / "absent.caffemodel",
                            fragments=("absent.caffemodel", "not found"))


def test_missing_prototxt(tmp_path):
    convert_expecting_error(tmp_path, TINY, "--prototxt", tmp_path / "absent.prototxt",
                            fragments=("absent.prototxt", "not found"))


@pytest.mark.parametrize("where", ["missing_folder", "proc"])
def test_unwritable_output(tmp_path, where):
    # Tests may run as root, for whom a chmod'ed read-only folder is writable: use a folder
    # that does not exist, and /proc, where nobody can create files.
    out = (tmp_path / "no" / "such" / "folder" / "model.onnx" if where == "missing_folder"
           else Path("/proc/senet-bad-input-test.onnx"))
    result = run_cli(TINY, "--to", "onnx", "-q", "-o", out)
    assert_cli_error(result, 1, str(out))
    assert not out.exists()
    if where == "missing_folder":
        assert not (tmp_path / "no").exists()


def test_outputs_names_a_missing_blob(tmp_path):
    convert_expecting_error(tmp_path, TINY, "--outputs", "prob,no_such_blob",
                            fragments=("no_such_blob",))


def test_input_shape_with_wrong_channel_count(tmp_path):
    """conv1's stored weights are 16x3x3x3: a 4-channel input cannot use them."""
    convert_expecting_error(tmp_path, TINY, "--input-shape", "1,4,32,32", fragments=("conv1",))


def test_input_shape_smaller_than_the_kernel(tmp_path):
    """MTCNN P-Net starts with an unpadded 3x3 convolution: a 2x2 image has no output."""
    convert_expecting_error(tmp_path, real("mtcnn_kpzhang93", "det1.caffemodel"),
                            "--input-shape", "1,3,2,2", fragments=("conv1",))


def test_every_failure_is_a_senet_error():
    """The exception family is what the CLI relies on."""
    for cls in (CaffeFormatError, GraphError, ShapeError, UnsupportedLayerError):
        assert issubclass(cls, SenetError)


def test_hdf5_snapshot_is_named(tmp_path):
    path = real("arm_ml_examples", "cifar10_m4_iter_70000.caffemodel.h5")
    convert_expecting_error(tmp_path, path, fragments=("HDF5 snapshot",))


def test_prototxt_given_as_model_is_named(tmp_path):
    convert_expecting_error(tmp_path, TINY_PROTOTXT, fragments=("text prototxt", "--prototxt"))
