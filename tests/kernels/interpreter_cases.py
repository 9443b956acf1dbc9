"""The Triton kernels, run on CPU by Triton's interpreter, against float64 ATen references.

Not collected directly (the name does not start with ``test_``): test_triton_interpreter.py runs
this file in a child process with TRITON_INTERPRET=1. By hand:
``TRITON_INTERPRET=1 python -m pytest tests/kernels/interpreter_cases.py``.
"""

from __future__ import annotations

import pytest
import torch

from senet.kernels import memory_format_of

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPES = [
    (1, 3, 7, 7),
    (3, 5, 13, 17),
    (3, 4, 1, 1),
    (1, 64, 13, 17),  # channels_last pooling splits H·W over programs (two-pass path)
    (2, 8, 56, 56),   # several H·W blocks per NCHW row
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_axpy_kernel(interpreted_kernels, reference, dtype, layout, shape):
    scale, x, y = reference.make_inputs(shape, dtype, LAYOUTS[layout])
    for relu in (False, True):
        out = interpreted_kernels.axpy_triton(scale, x, y, relu)
        reference.assert_axpy_matches(out, scale, x, y, relu)
        assert out.stride() == x.stride()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_global_avg_pool_kernel(interpreted_kernels, reference, dtype, layout, shape):
    _, x, _ = reference.make_inputs(shape, dtype, LAYOUTS[layout], seed=1)
    out = interpreted_kernels.global_avg_pool_triton(x)
    reference.assert_gap_matches(out, x)
    # x's layout as the ops define it (1×1 maps are NCHW and channels_last at once)
    expected = torch.empty((shape[0], shape[1], 1, 1), memory_format=memory_format_of(x))
    assert out.stride() == expected.stride()


def test_kernels_match_the_eager_ops_layout_for_layout(interpreted_kernels, reference):
    from senet.kernels import ops

    for layout in LAYOUTS.values():
        scale, x, y = reference.make_inputs((2, 6, 5, 3), torch.float32, layout)
        eager = ops.axpy_eager(scale, x, y, True)
        kernel = interpreted_kernels.axpy_triton(scale, x, y, True)
        assert kernel.stride() == eager.stride()
        torch.testing.assert_close(kernel, eager)
        eager_gap = ops.global_avg_pool_eager(x)
        kernel_gap = interpreted_kernels.global_avg_pool_triton(x)
        assert kernel_gap.stride() == eager_gap.stride()
        torch.testing.assert_close(kernel_gap, eager_gap)


def test_mixed_and_strided_layouts(interpreted_kernels, reference):
    scale, x, y = reference.make_inputs((3, 6, 9, 5), torch.float32, torch.channels_last)
    y_nchw = y.contiguous()
    out = interpreted_kernels.axpy_triton(scale, x, y_nchw, True)
    reference.assert_axpy_matches(out, scale, x, y_nchw, True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # neither layout: a spatial slice and an expanded scale; processed as NCHW copies
    wide = torch.randn(3, 6, 9, 11)[..., 2:7]
    broadcast_scale = torch.randn(1, 6, 1, 1).expand(3, 6, 1, 1)
    out = interpreted_kernels.axpy_triton(broadcast_scale, wide, x, False)
    reference.assert_axpy_matches(out, broadcast_scale, wide, x, False)
    assert out.is_contiguous()
    reference.assert_gap_matches(interpreted_kernels.global_avg_pool_triton(wide), wide)


def test_relu_keeps_nan_and_zeroes_negatives(interpreted_kernels):
    x = torch.tensor([float("nan"), -1.0, 2.0, 0.5]).reshape(1, 1, 2, 2)
    y = torch.zeros_like(x)
    out = interpreted_kernels.axpy_triton(torch.ones(1, 1, 1, 1), x, y, True)
    torch.testing.assert_close(out, torch.relu(x), equal_nan=True)


def test_64_bit_indexing_path(interpreted_kernels, reference, monkeypatch):
    # Tensors of 2**31 elements do not fit a CI machine; force the int64 code path instead.
    monkeypatch.setattr(interpreted_kernels, "_INT32_LIMIT", 0)
    for layout in LAYOUTS.values():
        scale, x, y = reference.make_inputs((2, 5, 7, 3), torch.float32, layout)
        reference.assert_axpy_matches(interpreted_kernels.axpy_triton(scale, x, y, True),
                                      scale, x, y, True)
        reference.assert_gap_matches(interpreted_kernels.global_avg_pool_triton(x), x)


def test_empty_batch(interpreted_kernels):
    x = torch.empty(0, 4, 3, 3)
    assert interpreted_kernels.axpy_triton(torch.empty(0, 4, 1, 1), x, x, True).shape == x.shape
    assert interpreted_kernels.global_avg_pool_triton(x).shape == (0, 4, 1, 1)


@pytest.mark.parametrize("block, num_warps", [(128, 1), (1024, 4)])
def test_axpy_block_sizes(interpreted_kernels, reference, block, num_warps):
    # gpu_check.py tries other blocks; every block size must give the same result
    scale, x, y = reference.make_inputs((3, 5, 13, 17), torch.float32, torch.channels_last)
    out = interpreted_kernels.axpy_triton(scale, x, y, True, block=block, num_warps=num_warps)
    reference.assert_axpy_matches(out, scale, x, y, True)
