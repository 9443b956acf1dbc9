"""GPU check of the senet ops: correctness on CUDA, bandwidth beside eager ATen and torch.compile.

    python bench/gpu_check.py [--batch 64] [--iters 20] [--no-compile] [--no-sweep]

On one H100/H200 it finishes in a few minutes. For each SE-ResNet-50 stage shape (batch ×
256×56×56, 512×28×28, 1024×14×14, 2048×7×7) in fp32 and bf16, NCHW and channels_last, it

1. checks senet::axpy (with and without ReLU) and senet::global_avg_pool against a float64
   reference (error as a multiple of the rounding bound; ≤ 1 passes) and the output layout;
2. times each op beside eager ATen (``torch.addcmul`` + ``relu_``; ``x.mean((2, 3),
   keepdim=True)``) and torch.compile of the same expressions, and prints each as a share of
   the device's copy bandwidth, measured in the same run by cloning a 1 GiB tensor;
3. times axpy+relu at the largest shape for a few other block sizes (tuning aid).

Times are per call, taken by replaying a CUDA graph of ``--iters`` calls (so Python overhead does
not count; ``*`` marks a variant that could not be captured and was timed by a plain loop), with
inputs rotated through enough copies to exceed the L2 cache. Exit status 1 if a check fails;
0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
EPSILON = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}
IMPLEMENTATIONS = ("senet", "eager", "compile")
DEVICE = "cuda"  # tests of this script's plumbing may point it at the CPU
AXPY_SWEEP = [(1024, 4), (2048, 4), (4096, 4), (4096, 8), (8192, 8)]


# --- timing ----------------------------------------------------------------------------------

def _elapsed_ms(run, repeats=5):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_per_call(fn, input_sets, iters):
    """Median GPU milliseconds per ``fn(*inputs)``, and whether a CUDA graph measured it."""
    def loop():
        for i in range(iters):
            fn(*input_sets[i % len(input_sets)])

    for inputs in input_sets:  # compile (Triton, inductor) and warm up outside the capture
        fn(*inputs)
    torch.cuda.synchronize()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loop()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loop()
        graph.replay()
        torch.cuda.synchronize()
        return _elapsed_ms(graph.replay) / iters, True
    except Exception:  # noqa: BLE001 — any capture failure: time the plain loop instead
        torch.cuda.synchronize()
        loop()
        return _elapsed_ms(loop) / iters, False


def rotation(make, bytes_per_set, l2_bytes):
    """Enough input sets that one pass over them is well over the L2 cache."""
    count = max(1, math.ceil(3 * l2_bytes / bytes_per_set))
    return [make(seed) for seed in range(min(count, 16))]


def copy_bandwidth():
    """Device copy bandwidth in bytes/s: clone of a 1 GiB tensor (read + write)."""
    big = torch.empty(2**28, dtype=torch.float32, device="cuda").uniform_()
    ms, _ = time_per_call(lambda t: t.clone(), [(big,)], 10)
    return 2 * big.numel() * big.element_size() / (ms * 1e-3)


# --- inputs and references -------------------------------------------------------------------

def make_inputs(batch, c, h, w, dtype, layout, seed):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)

    def normal(*shape):
        return torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.float32).to(dtype)

    scale = torch.sigmoid(normal(batch, c, 1, 1).float()).to(dtype)
    x = normal(batch, c, h, w).contiguous(memory_format=layout)
    y = normal(batch, c, h, w).contiguous(memory_format=layout)
    return scale, x, y


def axpy_error(out, scale, x, y, relu):
    """Worst |out − exact| as a multiple of the bound for fp32 arithmetic + one final rounding."""
    s, x64, y64 = scale.double(), x.double(), y.double()
    product = s * x64
    exact = product + y64
    if relu:
        exact = exact.relu()
    bound = (EPSILON[x.dtype] + 2 * 2.0**-23) * (product.abs() + y64.abs()) + 1e-300
    return ((out.double() - exact).abs() / bound).max().item()


def gap_error(out, x):
    x64 = x.double()
    hw = x.shape[2] * x.shape[3]
    exact = x64.mean(dim=(2, 3), keepdim=True)
    bound = (EPSILON[x.dtype] + hw * 2.0**-23) * x64.abs().mean(dim=(2, 3), keepdim=True) + 1e-300
    return ((out.double() - exact).abs() / bound).max().item()


# --- the check -------------------------------------------------------------------------------

def check_correctness(kernels, batch):
    rows, failed = [], False
    for (c, h, w) in STAGES:
        for dtype_name, dtype in DTYPES.items():
            for layout_name, layout in LAYOUTS.items():
                scale, x, y = make_inputs(batch, c, h, w, dtype, layout, seed=0)
                errors, layout_ok = [], True
                for relu in (False, True):
                    out = kernels.axpy(scale, x, y, relu)
                    layout_ok &= out.stride() == x.stride()
                    errors.append(axpy_error(out, scale, x, y, relu))
                    del out
                pooled = kernels.global_avg_pool(x)
                expected_stride = torch.empty(pooled.shape, device=DEVICE,
                                              memory_format=kernels.memory_format_of(x)).stride()
                layout_ok &= pooled.stride() == expected_stride
                errors.append(gap_error(pooled, x))
                ok = layout_ok and max(errors) <= 1.0
                failed |= not ok
                rows.append([f"{batch}×{c}×{h}×{w}", dtype_name, layout_name,
                             f"{errors[0]:.3f}", f"{errors[1]:.3f}", f"{errors[2]:.3f}",
                             "yes" if layout_ok else "NO", "ok" if ok else "FAIL"])
                del scale, x, y, pooled
    print_table("Correctness (error / rounding bound; ≤ 1 passes)",
                ["shape", "dtype", "layout", "axpy", "axpy+relu", "gap", "layout kept", ""], rows)
    return not failed


def _compiled(fn, enabled):
    if not enabled:
        return None
    return torch.compile(fn, dynamic=False)


def eager_axpy_relu(scale, x, y):
    return torch.addcmul(y, scale, x).relu_()


def plain_axpy_relu(scale, x, y):
    return torch.relu(scale * x + y)


def eager_gap(x):
    return x.mean((2, 3), keepdim=True)


def _measure(fn, inputs, nbytes, iters, copy_bw):
    """(share of copy bandwidth or None, table cell) for one variant; errors go in the cell."""
    if fn is None:
        return None, "—"
    try:
        ms, graphed = time_per_call(fn, inputs, iters)
    except Exception as error:  # noqa: BLE001 — report it in the table and go on
        return None, f"error: {type(error).__name__}: {error}"[:60]
    share = nbytes / (ms * 1e-3) / copy_bw
    return share, f"{100 * share:.0f}%{'' if graphed else '*'} ({1e3 * ms:.0f} µs)"


def bench_case(kernels, batch, c, h, w, dtype, layout, iters, copy_bw, l2_bytes, use_compile):
    """{(op, impl): (share, cell)} for the three implementations of both ops at one shape."""
    torch._dynamo.reset()  # fresh compile caches: no recompile limit, no stale graphs
    element = torch.empty((), dtype=dtype).element_size()
    numel = batch * c * h * w
    axpy_bytes = (3 * numel + batch * c) * element
    gap_bytes = (numel + batch * c) * element
    sets = rotation(lambda seed: make_inputs(batch, c, h, w, dtype, layout, seed),
                    2 * numel * element, l2_bytes)
    x_sets = [(x,) for _, x, _ in sets]
    variants = {
        ("axpy+relu", "senet"): (lambda s, a, b: kernels.axpy(s, a, b, True), sets, axpy_bytes),
        ("axpy+relu", "eager"): (eager_axpy_relu, sets, axpy_bytes),
        ("axpy+relu", "compile"): (_compiled(plain_axpy_relu, use_compile), sets, axpy_bytes),
        ("gap", "senet"): (kernels.global_avg_pool, x_sets, gap_bytes),
        ("gap", "eager"): (eager_gap, x_sets, gap_bytes),
        ("gap", "compile"): (_compiled(eager_gap, use_compile), x_sets, gap_bytes),
    }
    return {key: _measure(fn, inputs, nbytes, iters, copy_bw)
            for key, (fn, inputs, nbytes) in variants.items()}


def bench_ops(kernels, batch, iters, copy_bw, l2_bytes, use_compile):
    """Print the bandwidth table; return {(C, dtype name, layout name): {(op, impl): share}}."""
    rows, summary = [], {}
    for (c, h, w) in STAGES:
        for dtype_name, dtype in DTYPES.items():
            for layout_name, layout in LAYOUTS.items():
                measured = bench_case(kernels, batch, c, h, w, dtype, layout, iters, copy_bw,
                                      l2_bytes, use_compile)
                for op in ("axpy+relu", "gap"):
                    rows.append([f"{batch}×{c}×{h}×{w}", dtype_name, layout_name, op]
                                + [measured[(op, impl)][1] for impl in IMPLEMENTATIONS])
                summary[(c, dtype_name, layout_name)] = {
                    key: share for key, (share, _) in measured.items()}
    print_table("Bandwidth as a share of copy bandwidth (time per call)",
                ["shape", "dtype", "layout", "op", "senet (Triton)", "eager ATen", "torch.compile"],
                rows)
    return summary


def sweep_axpy_blocks(triton_kernels, batch, iters, copy_bw, l2_bytes):
    """axpy+relu at the largest fp32 stage for other block sizes, to tune AXPY_BLOCK/WARPS."""
    c, h, w = STAGES[0]
    rows = []
    for layout_name, layout in LAYOUTS.items():
        sets = rotation(lambda seed: make_inputs(batch, c, h, w, torch.float32, layout, seed),
                        2 * batch * c * h * w * 4, l2_bytes)
        for block, warps in AXPY_SWEEP:
            fn = (lambda s, a, b, block=block, warps=warps:
                  triton_kernels.axpy_triton(s, a, b, True, block=block, num_warps=warps))
            try:
                ms, _ = time_per_call(fn, sets, iters)
                share = (3 * batch * c * h * w + batch * c) * 4 / (ms * 1e-3) / copy_bw
                cell = f"{100 * share:.0f}%"
            except Exception as error:  # noqa: BLE001
                cell = f"error: {type(error).__name__}"
            default = (block, warps) == (triton_kernels.AXPY_BLOCK, triton_kernels.AXPY_WARPS)
            warps_cell = f"{warps} (default)" if default else str(warps)
            rows.append([layout_name, str(block), warps_cell, cell])
    print_table(f"axpy+relu block sweep at {batch}×{c}×{h}×{w} fp32",
                ["layout", "BLOCK", "warps", "share of copy"], rows)


def print_targets(summary):
    """The targets from the project issue, read off the bandwidth table."""
    lines = []
    for layout in LAYOUTS:
        axpy = summary.get((256, "fp32", layout), {}).get(("axpy+relu", "senet"))
        if axpy is not None:
            lines.append(f"axpy+relu 64×256×56×56 fp32 {layout}: {100 * axpy:.0f}% of copy "
                         f"(target ≥ 85%): {'met' if axpy >= 0.85 else 'NOT met'}")
        ours = summary.get((2048, "fp32", layout), {}).get(("gap", "senet"))
        aten = summary.get((2048, "fp32", layout), {}).get(("gap", "eager"))
        if ours is not None and aten:
            lines.append(f"gap 64×2048×7×7 fp32 {layout}: {ours / aten:.2f}× ATen's mean "
                         f"(target ≥ 2×): {'met' if ours >= 2 * aten else 'NOT met'}")
    print("\nTargets (batch 64 shapes only):")
    for line in lines or ["(not measured at batch 64)"]:
        print("  " + line)


def print_table(title, header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |")
    sys.stdout.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20, help="calls per timed CUDA graph")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    parser.add_argument("--no-sweep", action="store_true", help="skip the axpy block-size sweep")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a machine with a GPU)")
        return 0
    import senet.kernels as kernels
    from senet.kernels import triton_kernels

    if not triton_kernels.HAVE_TRITON:
        print("gpu_check: Triton is not installed (pip install triton); the ops would run as ATen")
        return 1
    if triton_kernels.INTERPRETED:
        print("gpu_check: TRITON_INTERPRET is set; unset it to time the compiled kernels")
        return 1

    started = time.perf_counter()
    properties = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(properties, "L2_cache_size", 50 * 2**20) or 50 * 2**20
    import triton

    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"device: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
          f"L2 {l2_bytes / 2**20:.0f} MiB; torch {torch.__version__}, triton {triton.__version__}")
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth (clone of 1 GiB fp32): {copy_bw / 1e9:,.0f} GB/s")

    passed = check_correctness(kernels, args.batch)
    summary = bench_ops(kernels, args.batch, args.iters, copy_bw, l2_bytes, not args.no_compile)
    if not args.no_sweep:
        sweep_axpy_blocks(triton_kernels, args.batch, args.iters, copy_bw, l2_bytes)
    if args.batch == 64:
        print_targets(summary)
    print(f"\n{'all checks passed' if passed else 'CORRECTNESS CHECK FAILED'}; "
          f"{time.perf_counter() - started:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
