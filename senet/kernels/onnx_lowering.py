"""Lowering of the senet ops to standard ONNX ops, for both of torch.onnx's exporters.

- ``senet::axpy``            → Mul, Add (+ Relu)
- ``senet::global_avg_pool`` → GlobalAveragePool

torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``, the default; needs the
``onnxscript`` package): pass ``custom_translation_table=onnx_translation_table()``, or call
``export_onnx`` which does so.

TorchScript exporter (``dynamo=False``): call ``register_torchscript_symbolics()`` once before
exporting.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import senet.kernels.ops  # noqa: F401  (registers torch.ops.senet.*)

# Mul/Add/Relu/GlobalAveragePool exist unchanged since opset 7 (6 for Relu); the
# torch.export-based exporter emits opset 18 and later.
TORCHSCRIPT_MIN_OPSET = 9


def onnx_translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.

    The values are traced ONNX Script functions; onnxscript is imported here, not before.
    """
    try:
        from onnxscript import opset18 as op
    except ImportError as error:
        raise ImportError("exporting senet ops with torch.onnx.export(dynamo=True) needs "
                          "onnxscript: pip install onnxscript") from error

    def axpy(scale, x, y, relu: bool = False):
        out = op.Add(op.Mul(scale, x), y)
        return op.Relu(out) if relu else out

    def global_avg_pool(x):
        return op.GlobalAveragePool(x)

    return {
        torch.ops.senet.axpy.default: axpy,
        torch.ops.senet.global_avg_pool.default: global_avg_pool,
    }


def export_onnx(model: torch.nn.Module, args: tuple[Any, ...], f=None, **kwargs):
    """``torch.onnx.export`` (torch.export-based) with the senet ops lowered to standard ops.

    Takes and returns what ``torch.onnx.export`` does; entries of a caller's own
    ``custom_translation_table`` win over ours.
    """
    table = onnx_translation_table()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    kwargs.setdefault("dynamo", True)
    if not kwargs["dynamo"]:
        raise ValueError("export_onnx uses the torch.export-based exporter; for dynamo=False "
                         "call register_torchscript_symbolics() and torch.onnx.export")
    return torch.onnx.export(model, args, f, custom_translation_table=table, **kwargs)


def _axpy_symbolic(g, scale, x, y, relu):
    from torch.onnx import symbolic_helper

    out = g.op("Add", g.op("Mul", scale, x), y)
    if symbolic_helper._maybe_get_const(relu, "b"):
        out = g.op("Relu", out)
    return out


def _global_avg_pool_symbolic(g, x):
    return g.op("GlobalAveragePool", x)


def register_torchscript_symbolics(opset_version: int = TORCHSCRIPT_MIN_OPSET) -> None:
    """Teach the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) the senet ops.

    Registered for ``opset_version`` and every later opset. Calling it again is harmless.
    """
    torch.onnx.register_custom_op_symbolic("senet::axpy", _axpy_symbolic, opset_version)
    torch.onnx.register_custom_op_symbolic("senet::global_avg_pool", _global_avg_pool_symbolic,
                                           opset_version)
