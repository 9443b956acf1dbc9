"""The ``senet::axpy`` and ``senet::global_avg_pool`` custom operators.

Each op has one eager ATen implementation used on every device but CUDA (CPU included, float64
too), a CUDA implementation through the Triton kernels (``triton_kernels``, imported at the
first CUDA call; without Triton the eager one runs, after a one-time warning), a fake
implementation for torch.compile / torch.export, and an autograd formula.

Both ops take and return N×C×H×W tensors of one dtype on one device; the output keeps the
input's memory format (``layout.memory_format_of`` decides it for every path, fake included,
so the strides agree). fp16/bf16 accumulate in fp32, float64 in float64.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from senet.errors import ShapeError
from senet.kernels.layout import memory_format_of

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_triton_missing_warned = False


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_feature_map(name: str, op: str, t: Tensor) -> None:
    if t.dim() != 4:
        raise ShapeError(f"senet::{op}: {name} must be N×C×H×W, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATING:
        raise TypeError(f"senet::{op}: {name} must be float16/bfloat16/float32/float64, "
                        f"got {t.dtype}")


def _check_axpy_args(scale: Tensor, x: Tensor, y: Tensor) -> None:
    _check_feature_map("x", "axpy", x)
    if y.shape != x.shape:
        raise ShapeError(f"senet::axpy: y has shape {tuple(y.shape)}, x has {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if scale.shape != (n, c, 1, 1):
        raise ShapeError(f"senet::axpy: scale must be {n}×{c}×1×1 for x of shape {tuple(x.shape)},"
                         f" got {tuple(scale.shape)}")
    if not scale.dtype == x.dtype == y.dtype:
        raise TypeError(f"senet::axpy: scale, x, y must share one dtype, got "
                        f"{scale.dtype}, {x.dtype}, {y.dtype}")
    if not scale.device == x.device == y.device:
        raise ValueError(f"senet::axpy: scale, x, y must be on one device, got "
                         f"{scale.device}, {x.device}, {y.device}")


# --- eager ATen implementations ------------------------------------------------------------

def axpy_eager(scale: Tensor, x: Tensor, y: Tensor, relu: bool = False) -> Tensor:
    """relu?(scale·x + y) with ATen ops, rounded once from fp32 (fp64 for fp64)."""
    fmt = memory_format_of(x)
    if x.device.type != "cuda" and x.dtype in (torch.float16, torch.bfloat16):
        # CPU: compute in fp32 explicitly (CUDA's addcmul already does so internally)
        acc = _accumulation_dtype(x.dtype)
        out = torch.addcmul(y.to(acc), scale.to(acc), x.to(acc))
    else:
        out = torch.addcmul(y, scale, x)
    if relu:
        out = out.relu_()
    return out.to(dtype=x.dtype, memory_format=fmt)


def global_avg_pool_eager(x: Tensor) -> Tensor:
    """Mean over H and W with ATen, accumulated in fp32 (fp64 for fp64)."""
    fmt = memory_format_of(x)
    out = torch.mean(x, dim=(2, 3), keepdim=True, dtype=_accumulation_dtype(x.dtype))
    return out.to(dtype=x.dtype, memory_format=fmt)


# --- the operators -------------------------------------------------------------------------

@torch.library.custom_op("senet::axpy", mutates_args=())
def axpy(scale: Tensor, x: Tensor, y: Tensor, relu: bool = False) -> Tensor:
    """relu?(scale·x + y): Caffe's Axpy layer (SE-block rescale and residual add), optional ReLU.

    scale is N×C×1×1, x and y are N×C×H×W; all three share dtype and device. The result is a
    new tensor in x's memory format.
    """
    _check_axpy_args(scale, x, y)
    return axpy_eager(scale, x, y, relu)


@torch.library.custom_op("senet::global_avg_pool", mutates_args=())
def global_avg_pool(x: Tensor) -> Tensor:
    """Mean of an N×C×H×W tensor over H and W, as N×C×1×1 in x's memory format."""
    _check_feature_map("x", "global_avg_pool", x)
    return global_avg_pool_eager(x)


def _triton_or_none():
    """The Triton launchers, or None (with a one-time warning) when Triton is missing."""
    global _triton_missing_warned
    from senet.kernels import triton_kernels

    if triton_kernels.HAVE_TRITON:
        return triton_kernels
    if not _triton_missing_warned:
        warnings.warn("senet.kernels: Triton is not installed; senet::axpy and "
                      "senet::global_avg_pool run as ATen ops on CUDA (pip install triton)",
                      RuntimeWarning, stacklevel=3)
        _triton_missing_warned = True
    return None


@axpy.register_kernel("cuda")
def _axpy_cuda(scale: Tensor, x: Tensor, y: Tensor, relu: bool = False) -> Tensor:
    _check_axpy_args(scale, x, y)
    kernels = _triton_or_none()
    if kernels is None:
        return axpy_eager(scale, x, y, relu)
    return kernels.axpy_triton(scale, x, y, relu)


@global_avg_pool.register_kernel("cuda")
def _global_avg_pool_cuda(x: Tensor) -> Tensor:
    _check_feature_map("x", "global_avg_pool", x)
    kernels = _triton_or_none()
    if kernels is None:
        return global_avg_pool_eager(x)
    return kernels.global_avg_pool_triton(x)


# --- fake (meta) implementations -----------------------------------------------------------

@axpy.register_fake
def _axpy_fake(scale: Tensor, x: Tensor, y: Tensor, relu: bool = False) -> Tensor:
    _check_axpy_args(scale, x, y)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


@global_avg_pool.register_fake
def _global_avg_pool_fake(x: Tensor) -> Tensor:
    _check_feature_map("x", "global_avg_pool", x)
    n, c = x.shape[0], x.shape[1]
    return torch.empty((n, c, 1, 1), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


# --- autograd ------------------------------------------------------------------------------

def _axpy_setup_context(ctx, inputs, output):
    scale, x, _y, relu = inputs
    ctx.relu = relu
    ctx.save_for_backward(scale if ctx.needs_input_grad[1] else None,
                          x if ctx.needs_input_grad[0] else None,
                          output if relu else None)


def _axpy_backward(ctx, grad):
    scale, x, output = ctx.saved_tensors
    if ctx.relu:
        # the mask comes from the output, as for torch.relu
        grad = torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    grad_scale = grad_x = grad_y = None
    if ctx.needs_input_grad[0]:
        acc = _accumulation_dtype(grad.dtype)
        products = grad.to(acc) * x.to(acc)
        grad_scale = products.sum(dim=(2, 3), keepdim=True).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        grad_x = grad * scale
    if ctx.needs_input_grad[2]:
        grad_y = grad
    return grad_scale, grad_x, grad_y, None


def _global_avg_pool_setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.input_shape = x.shape


def _global_avg_pool_backward(ctx, grad):
    n, c, h, w = ctx.input_shape
    # an expanded view: no N×C×H×W buffer; consumers copy it to the layout they need
    return (grad / (h * w)).expand(n, c, h, w)


axpy.register_autograd(_axpy_backward, setup_context=_axpy_setup_context)
global_avg_pool.register_autograd(_global_avg_pool_backward,
                                  setup_context=_global_avg_pool_setup_context)
