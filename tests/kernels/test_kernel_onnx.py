"""ONNX export of modules calling the senet ops: standard ops only, same numbers in onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import senet.kernels as kernels
from senet.kernels import onnx_lowering

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


class AxpyThenPool(torch.nn.Module):
    def __init__(self, relu: bool):
        super().__init__()
        self.relu = relu

    def forward(self, scale, x, y):
        out = kernels.axpy(scale, x, y, self.relu)
        return out, kernels.global_avg_pool(out)


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 1, 1, generator=generator),
            torch.randn(2, 4, 5, 7, generator=generator),
            torch.randn(2, 4, 5, 7, generator=generator))


def _check_runs_like_torch(model_proto, module, inputs):
    assert {opset.domain for opset in model_proto.opset_import} <= {"", "ai.onnx"}
    session = onnxruntime.InferenceSession(model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs)}
    for got, expected in zip(session.run(None, feeds), module(*inputs)):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
def test_torch_export_based_exporter(relu):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    module, inputs = AxpyThenPool(relu).eval(), _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = onnx_lowering.export_onnx(module, inputs, verbose=False)
    model_proto = program.model_proto
    onnx.checker.check_model(model_proto)
    ops = [node.op_type for node in model_proto.graph.node]
    assert ops == ["Mul", "Add"] + (["Relu"] if relu else []) + ["GlobalAveragePool"]
    _check_runs_like_torch(model_proto, module, inputs)


@pytest.mark.parametrize("relu", [False, True])
def test_torchscript_exporter(relu):
    onnx_lowering.register_torchscript_symbolics()
    module, inputs = AxpyThenPool(relu).eval(), _inputs()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=13)
    model_proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model_proto)
    ops = [node.op_type for node in model_proto.graph.node]
    assert ops == ["Mul", "Add"] + (["Relu"] if relu else []) + ["GlobalAveragePool"]
    _check_runs_like_torch(model_proto, module, inputs)
