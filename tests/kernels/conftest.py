"""Fixtures for the kernel tests: float64 references, rounding bounds, interpreted kernels."""

from __future__ import annotations

import os
import types

import pytest
import torch

# Machine epsilon of each dtype: an output rounded once (to nearest, or truncated as Triton's
# interpreter does for bf16) is within eps·|exact| of the exact value.
EPSILON = {
    torch.float64: 2.0**-52,
    torch.float32: 2.0**-23,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
FP32_EPSILON = 2.0**-23


def make_inputs(shape, dtype, memory_format=torch.contiguous_format, seed=0):
    """scale (N×C×1×1), x, y (N×C×H×W, in memory_format), standard normal, reproducible."""
    generator = torch.Generator().manual_seed(seed)
    n, c, _, _ = shape
    scale = torch.randn((n, c, 1, 1), generator=generator, dtype=torch.float64).to(dtype)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    return (scale, x.contiguous(memory_format=memory_format),
            y.contiguous(memory_format=memory_format))


def assert_axpy_matches(out, scale, x, y, relu):
    """out equals relu?(scale·x + y), exact in float64 from the same inputs, rounded once."""
    s, x64, y64 = scale.double(), x.double(), y.double()
    exact = torch.addcmul(y64, s, x64)
    if relu:
        exact = exact.relu()
    # inner arithmetic in fp32 (two roundings) plus the final rounding to the output dtype
    inner = 0.0 if x.dtype == torch.float64 else 2 * FP32_EPSILON
    bound = (EPSILON[x.dtype] + inner) * (s * x64).abs().add(y64.abs()) + 1e-300
    assert out.dtype == x.dtype and out.shape == x.shape
    error = (out.double() - exact).abs()
    worst = (error / bound).max().item()
    assert worst <= 1.0, f"axpy error {worst:.3g}× the rounding bound ({x.dtype})"


def assert_gap_matches(out, x):
    """out equals the mean over H, W of x, exact in float64, within fp32 summation and rounding."""
    x64 = x.double()
    exact = x64.mean(dim=(2, 3), keepdim=True)
    hw = x.shape[2] * x.shape[3]
    inner = 0.0 if x.dtype == torch.float64 else hw * FP32_EPSILON
    bound = (EPSILON[x.dtype] + inner) * x64.abs().mean(dim=(2, 3), keepdim=True) + 1e-300
    assert out.dtype == x.dtype and out.shape == exact.shape
    worst = ((out.double() - exact).abs() / bound).max().item()
    assert worst <= 1.0, f"global_avg_pool error {worst:.3g}× the rounding bound ({x.dtype})"


@pytest.fixture
def reference():
    """The helpers above, for test modules (conftest functions are not importable)."""
    return types.SimpleNamespace(make_inputs=make_inputs, assert_axpy_matches=assert_axpy_matches,
                                 assert_gap_matches=assert_gap_matches, epsilon=EPSILON)


@pytest.fixture(scope="session")
def interpreted_kernels():
    """senet.kernels.triton_kernels with its kernels built for Triton's CPU interpreter.

    Triton chooses between interpreter and GPU compilation when a function is decorated, for
    its own standard library (tl.zeros, tl.sum) at ``import triton``. TRITON_INTERPRET=1 must
    therefore be set before anything imports Triton, and it would then hold for the whole
    process; test_triton_interpreter.py runs the cases that need it in a child process.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 set before Triton is imported")
    pytest.importorskip("triton", reason="Triton is not installed")
    from senet.kernels import triton_kernels

    assert triton_kernels.INTERPRETED, "Triton was imported before TRITON_INTERPRET=1 was set"
    return triton_kernels
