"""Custom operators: ``senet::axpy`` and ``senet::global_avg_pool`` for the SE-block element-wise
work, ``senet::nms`` for the detectors' non-maximum suppression (``senet.kernels.nms``) and
``senet::detection_output`` for SSD's DetectionOutput (``senet.kernels.detection``).

Importing this package registers the ops with ``torch.library``: axpy and global_avg_pool eager on
every device, Triton kernels on CUDA, fake impls for torch.compile / torch.export, autograd (Triton
itself is imported only at the first call on a CUDA tensor; ONNX lowering:
``senet.kernels.onnx_lowering``); nms and detection_output eager with fake impls of
data-dependent size.
"""

from __future__ import annotations

from torch import Tensor

from senet.kernels import detection as _detection  # noqa: F401  (senet::detection_output)
from senet.kernels import nms as _nms  # noqa: F401  (registers senet::nms)
from senet.kernels import ops as _ops
from senet.kernels.layout import memory_format_of

__all__ = ["axpy", "global_avg_pool", "memory_format_of"]


def axpy(scale: Tensor, x: Tensor, y: Tensor, relu: bool = False) -> Tensor:
    """relu?(scale·x + y) — Caffe's Axpy (optionally fused with the ReLU after it).

    scale: N×C×1×1; x, y: N×C×H×W; one dtype (fp16, bf16, fp32, fp64) and one device.
    Returns a new tensor in x's memory format; computed in fp32 (fp64 for fp64), rounded once.
    """
    return _ops.axpy(scale, x, y, relu)


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean of an N×C×H×W tensor over H and W → N×C×1×1 in x's memory format (fp32 accumulation)."""
    return _ops.global_avg_pool(x)
