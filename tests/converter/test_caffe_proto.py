"""The generated caffe_pb2.py is exactly what a current protoc makes of our caffe.proto."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from senet.converter import caffe_pb2

PROTO_DIR = Path(caffe_pb2.__file__).parent


def _serialized_descriptor(python_source: str) -> bytes:
    """The descriptor bytes a generated _pb2 module registers (AddSerializedFile's argument)."""
    for node in ast.walk(ast.parse(python_source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile"):
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile call in generated code")


def test_generated_code_matches_the_schema(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) regenerates the schema")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                    f"--python_out={tmp_path}", "caffe.proto"], check=True)
    fresh = _serialized_descriptor((tmp_path / "caffe_pb2.py").read_text())
    shipped = _serialized_descriptor((PROTO_DIR / "caffe_pb2.py").read_text())
    assert shipped == fresh, ("caffe_pb2.py is stale: regenerate it with "
                              "`python -m grpc_tools.protoc -I senet/converter "
                              "--python_out=senet/converter caffe.proto`")


def test_caffe_field_numbers_are_caffes():
    # A few numbers every real .caffemodel depends on (BVLC caffe.proto).
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert layer["blobs"].number == 7 and layer["convolution_param"].number == 106
    assert layer["batch_norm_param"].number == 139 and layer["scale_param"].number == 142
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    blob = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name
    assert (blob["data"].number, blob["shape"].number, blob["double_data"].number) == (5, 7, 8)
    pool = caffe_pb2.PoolingParameter.DESCRIPTOR.fields_by_name
    assert pool["round_mode"].number == 13 and pool["global_pooling"].number == 12
