"""Triton kernels for the SE-block element-wise ops, and the launchers that call them.

Importing this module imports Triton; ``senet.kernels.ops`` therefore imports it only on the
first call on a CUDA tensor. Without Triton the module still imports (``HAVE_TRITON`` is False)
and the launchers raise, so callers can fall back to ATen.

The launchers run on whatever device their tensors are on. With ``TRITON_INTERPRET=1`` in the
environment *when this module is imported* the kernels are built for Triton's interpreter,
which runs the very same kernel code on CPU tensors (that is how the tests check them).

Layout: an N×C×H×W tensor is processed in the order ``layout.memory_format_of`` gives (other
strides are copied to it first), and the output takes that layout.

Spatial size (H·W), and for channels_last the channel count, are compile-time constants of
the kernels: the index arithmetic (``offset // HW``, ``offset % C``) then compiles to a
multiply and shift instead of a run-time integer division (tens of instructions per element).
Each new shape compiles once (Triton caches the binaries on disk).
"""

from __future__ import annotations

import contextlib
import os

import torch

from senet.kernels.layout import memory_format_of

try:
    import triton
    import triton.language as tl
except ImportError:  # the package works without Triton: ops fall back to ATen
    triton = None
    tl = None

HAVE_TRITON = triton is not None


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # Triton ≥ 3.4; older ones read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Whether the kernels below were built for Triton's CPU interpreter (fixed at import).
INTERPRETED = HAVE_TRITON and _interpreting()

# Elements one axpy program handles, and its warps. 16 fp32 elements per thread: four 128-bit
# loads per input, enough in flight to saturate HBM without spilling.
AXPY_BLOCK = 4096
AXPY_WARPS = 8
# Elements in one global-average-pool tile (rows × spatial positions, or positions × channels).
GAP_TILE = 4096
GAP_WARPS = 4
GAP_MAX_BLOCK_HW = 1024
GAP_BLOCK_C = 64
# Channels_last pooling splits H·W over programs until about this many are in flight.
GAP_TARGET_PROGRAMS = 1024

_INT32_LIMIT = 2**31 - 1
# Stated, not left to Triton's default (which Triton 3.10 changes): axpy rounds s·x + y once,
# as an FMA, like nvcc-compiled ATen code; the pooling kernels only add.
FP_FUSION = True


def _require_triton() -> None:
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed: pip install triton")


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _on_device(device: torch.device):
    """Make a CUDA tensor's device current for the launch (nothing to do for CPU tensors)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


if HAVE_TRITON:

    @triton.jit
    def _axpy_kernel(scale_ptr, x_ptr, y_ptr, out_ptr, numel,
                     HW: tl.constexpr, C: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     RELU: tl.constexpr, ACC: tl.constexpr, INT64: tl.constexpr,
                     BLOCK: tl.constexpr):
        # One pass over a contiguous block of the flat tensor, in memory order.
        pid = tl.program_id(0)
        if INT64:
            start = pid.to(tl.int64) * BLOCK
        else:
            start = pid * BLOCK
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < numel
        if CHANNELS_LAST:
            # memory order N, H, W, C: scale index is n*C + c
            scale_index = (offsets // (HW * C)) * C + offsets % C
        else:
            # memory order N, C, H, W: scale index is n*C + c = offset // (H*W)
            scale_index = offsets // HW
        x = tl.load(x_ptr + offsets, mask=mask)
        y = tl.load(y_ptr + offsets, mask=mask)
        s = tl.load(scale_ptr + scale_index, mask=mask)
        acc = s.to(ACC) * x.to(ACC) + y.to(ACC)
        if RELU:
            # `acc < 0` keeps NaN, as torch.relu does
            acc = tl.where(acc < 0, 0.0, acc)
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gap_rows_kernel(x_ptr, out_ptr, n_rows,
                         HW: tl.constexpr, ACC: tl.constexpr, INT64: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK_HW: tl.constexpr):
        # NCHW: each (n, c) is a contiguous run of HW values; ROWS runs per program.
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        if INT64:
            row_start = rows.to(tl.int64) * HW
        else:
            row_start = rows * HW
        acc = tl.zeros([ROWS, BLOCK_HW], dtype=ACC)
        for hw_start in range(0, HW, BLOCK_HW):
            cols = hw_start + tl.arange(0, BLOCK_HW)
            mask = row_mask[:, None] & (cols < HW)[None, :]
            values = tl.load(x_ptr + row_start[:, None] + cols[None, :], mask=mask, other=0.0)
            acc += values.to(ACC)
        total = tl.sum(acc, axis=1)
        tl.store(out_ptr + rows, (total / HW).to(out_ptr.dtype.element_ty), mask=row_mask)

    @triton.jit
    def _gap_channels_last_kernel(x_ptr, out_ptr, partial_ptr,
                                  C: tl.constexpr, HW: tl.constexpr, HW_PER_SPLIT: tl.constexpr,
                                  SPLIT: tl.constexpr, ACC: tl.constexpr, INT64: tl.constexpr,
                                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        # channels_last: for each n the tensor is an HW × C matrix with C contiguous; a program
        # sums a BLOCK_C-wide column strip over its share of the HW rows.
        pid_c = tl.program_id(0)
        n = tl.program_id(1)
        split = tl.program_id(2)
        channels = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        channel_mask = channels < C
        if INT64:
            image_start = n.to(tl.int64) * (HW * C)
        else:
            image_start = n * (HW * C)
        hw_begin = split * HW_PER_SPLIT  # a multiple of BLOCK_HW
        acc = tl.zeros([BLOCK_HW, BLOCK_C], dtype=ACC)
        for hw_offset in range(0, HW_PER_SPLIT, BLOCK_HW):
            hw = hw_begin + hw_offset + tl.arange(0, BLOCK_HW)
            if INT64:
                hw = hw.to(tl.int64)
            mask = (hw < HW)[:, None] & channel_mask[None, :]
            pointers = x_ptr + image_start + hw[:, None] * C + channels[None, :]
            acc += tl.load(pointers, mask=mask, other=0.0).to(ACC)
        total = tl.sum(acc, axis=0)
        if SPLIT == 1:
            tl.store(out_ptr + n * C + channels, (total / HW).to(out_ptr.dtype.element_ty),
                     mask=channel_mask)
        else:
            tl.store(partial_ptr + (split * tl.num_programs(1) + n) * C + channels, total,
                     mask=channel_mask)

    @triton.jit
    def _gap_finish_kernel(partial_ptr, out_ptr, n_values,
                           HW: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        # Sum the SPLIT partial sums of each (n, c) in a fixed order: deterministic.
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_values
        total = tl.load(partial_ptr + offsets, mask=mask, other=0.0)
        for split in range(1, SPLIT):
            total += tl.load(partial_ptr + split * n_values + offsets, mask=mask, other=0.0)
        tl.store(out_ptr + offsets, (total / HW).to(out_ptr.dtype.element_ty), mask=mask)


def axpy_triton(scale: torch.Tensor, x: torch.Tensor, y: torch.Tensor, relu: bool = False, *,
                block: int = AXPY_BLOCK, num_warps: int = AXPY_WARPS) -> torch.Tensor:
    """relu?(scale·x + y) by one Triton kernel; scale N×C×1×1, x and y N×C×H×W, same dtype.

    Computes in fp32 (fp64 for fp64), rounds once to the output dtype. The output has x's
    layout; y is copied to it first if its layout differs.
    """
    _require_triton()
    fmt = memory_format_of(x)
    n, c, h, w = x.shape
    x = x.contiguous(memory_format=fmt)
    y = y.contiguous(memory_format=fmt)
    scale = scale.reshape(n * c).contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    numel = x.numel()
    if numel == 0:
        return out
    grid = (triton.cdiv(numel, block),)
    with _on_device(x.device):
        _axpy_kernel[grid](
            scale, x, y, out, numel,
            HW=h * w, C=c, CHANNELS_LAST=fmt == torch.channels_last, RELU=bool(relu),
            ACC=_accumulator(x.dtype), INT64=numel + block > _INT32_LIMIT, BLOCK=block,
            num_warps=num_warps, enable_fp_fusion=FP_FUSION,
        )
    return out


def global_avg_pool_triton(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W of an N×C×H×W tensor → N×C×1×1, in x's layout, fp32 accumulation."""
    _require_triton()
    fmt = memory_format_of(x)
    n, c, h, w = x.shape
    hw = h * w
    x = x.contiguous(memory_format=fmt)
    out = torch.empty((n, c, 1, 1), dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    if hw == 0:  # mean of nothing, as ATen gives it
        return out.fill_(float("nan"))
    int64 = x.numel() + GAP_TILE > _INT32_LIMIT
    with _on_device(x.device):
        if fmt == torch.channels_last:
            _launch_gap_channels_last(x, out, n, c, hw, int64)
        else:
            block_hw = min(_next_power_of_2(hw), GAP_MAX_BLOCK_HW)
            rows = max(1, GAP_TILE // block_hw)
            grid = (triton.cdiv(n * c, rows),)
            _gap_rows_kernel[grid](x, out, n * c, HW=hw, ACC=_accumulator(x.dtype), INT64=int64,
                                   ROWS=rows, BLOCK_HW=block_hw, num_warps=GAP_WARPS,
                                   enable_fp_fusion=FP_FUSION)
    return out


def _launch_gap_channels_last(x, out, n, c, hw, int64):
    block_c = min(_next_power_of_2(c), GAP_BLOCK_C)
    block_hw = min(_next_power_of_2(hw), max(1, GAP_TILE // block_c))
    channel_blocks = triton.cdiv(c, block_c)
    # Too few (image, channel strip) programs to fill the device: split H·W as well.
    hw_blocks = triton.cdiv(hw, block_hw)
    split = max(1, min(hw_blocks, GAP_TARGET_PROGRAMS // max(1, n * channel_blocks)))
    hw_per_split = triton.cdiv(hw_blocks, split) * block_hw
    split = triton.cdiv(hw, hw_per_split)
    accumulator = _accumulator(x.dtype)
    partial = out
    if split > 1:
        partial_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        partial = torch.empty((split, n, c), dtype=partial_dtype, device=x.device)
    _gap_channels_last_kernel[(channel_blocks, n, split)](
        x, out, partial, C=c, HW=hw, HW_PER_SPLIT=hw_per_split, SPLIT=split,
        ACC=accumulator, INT64=int64, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=GAP_WARPS,
        enable_fp_fusion=FP_FUSION,
    )
    if split > 1:
        block = 1024
        _gap_finish_kernel[(triton.cdiv(n * c, block),)](
            partial, out, n * c, HW=hw, SPLIT=split, BLOCK=block, num_warps=4,
            enable_fp_fusion=FP_FUSION,
        )
