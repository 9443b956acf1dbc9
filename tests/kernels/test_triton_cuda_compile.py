"""The Triton kernels compile for a Hopper GPU (sm_90) without one: ahead-of-time compilation
through Triton's own PTX assembler catches lowering errors that the CPU interpreter cannot."""

from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

_VERSION = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
pytestmark = pytest.mark.skipif(_VERSION < (3, 3), reason="ASTSource signature of Triton ≥ 3.3")

DIVISIBLE_BY_16 = [["tt.divisibility", 16]]


def _compile_ptx(kernel, runtime_args, constexprs, num_warps=4):
    """PTX of ``kernel`` for sm_90, pointers and sizes assumed 16-aligned as the launcher sees
    them for the SE-ResNet shapes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = dict(runtime_args, **{name: "constexpr" for name in constexprs})
    attrs = {(index,): DIVISIBLE_BY_16 for index, name in enumerate(runtime_args)}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    from senet.kernels.triton_kernels import FP_FUSION

    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "enable_fp_fusion": FP_FUSION})
    return compiled.asm["ptx"]


@pytest.fixture(scope="module")
def kernels():
    from senet.kernels import triton_kernels

    if triton_kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET is set: the kernels are built for the interpreter")
    return triton_kernels


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_axpy_compiles_to_vector_loads(kernels, dtype, channels_last):
    import triton.language as tl

    pointers = {name: f"*{dtype}" for name in ("scale_ptr", "x_ptr", "y_ptr", "out_ptr")}
    ptx = _compile_ptx(kernels._axpy_kernel, dict(pointers, numel="i32"),
                       {"HW": 56 * 56, "C": 256, "CHANNELS_LAST": channels_last, "RELU": True,
                        "ACC": tl.float32, "INT64": False, "BLOCK": kernels.AXPY_BLOCK},
                       kernels.AXPY_WARPS)
    assert re.search(r"ld\.global(\.\w+)*\.v[24]\.", ptx), "x and y are not loaded as vectors"
    assert not re.search(r"\b(div|rem)\.[su]\d+", ptx), "index arithmetic divides at run time"


@pytest.mark.parametrize("hw", [1, 49, 56 * 56])
def test_gap_rows_compiles(kernels, hw):
    import triton.language as tl

    block_hw = min(kernels._next_power_of_2(hw), kernels.GAP_MAX_BLOCK_HW)
    _compile_ptx(kernels._gap_rows_kernel, {"x_ptr": "*bf16", "out_ptr": "*bf16", "n_rows": "i32"},
                 {"HW": hw, "ACC": tl.float32, "INT64": True,
                  "ROWS": max(1, kernels.GAP_TILE // block_hw), "BLOCK_HW": block_hw})


@pytest.mark.parametrize("split", [1, 4])
def test_gap_channels_last_compiles(kernels, split):
    import triton.language as tl

    partial = "*fp32" if split > 1 else "*bf16"
    _compile_ptx(kernels._gap_channels_last_kernel,
                 {"x_ptr": "*bf16", "out_ptr": "*bf16", "partial_ptr": partial},
                 {"C": 256, "HW": 56 * 56, "HW_PER_SPLIT": 832 if split > 1 else 56 * 56,
                  "SPLIT": split, "ACC": tl.float32, "INT64": False, "BLOCK_C": 64,
                  "BLOCK_HW": 64})
    _compile_ptx(kernels._gap_finish_kernel,
                 {"partial_ptr": "*fp32", "out_ptr": "*bf16", "n_values": "i32"},
                 {"HW": 56 * 56, "SPLIT": 4, "BLOCK": 1024})
