"""senet-convert on a SENet-154-sized caffemodel: wall time against `cat`, peak memory against
the file size, and one onnxruntime batch of the result.

Writes a caffemodel with the structure of ../shared/fixtures/senet_prototxt/SENet-154.prototxt
and seeded random float32 weights of the right shapes (generated one layer at a time and streamed
by senet's writer, so this script never holds the whole model), then measures

- ``cat FILE > /dev/null`` (run twice, the second kept: page cache warm),
- ``senet-convert FILE --to onnx -q -o OUT`` as a child process: wall time and peak RSS,
- onnxruntime: session creation and one 1x3x224x224 batch of the converted model.

Targets: convert <= 6x cat, peak RSS <= 2.5x the file size.

    python bench/bench_convert.py [--workdir DIR] [--repeat 3] [--keep] [--prototxt P]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_PROTOTXT = SHARED / "fixtures" / "senet_prototxt" / "SENet-154.prototxt"
CAT_TARGET, RSS_TARGET = 6.0, 2.5


class RandomWeights(Mapping):
    """layer name -> list of float32 arrays, made when asked for (one layer in memory at a
    time): He-scaled convolution / inner-product weights, BatchNorm statistics with positive
    variance and factor 1, Scale near 1, small biases. Seeded per layer: reproducible."""

    def __init__(self, layers, seed: int = 154):
        self._layers = {layer.name: layer for layer in layers if layer.blobs}
        self._seed = seed

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, name: str) -> list[np.ndarray]:
        layer = self._layers[name]
        index = list(self._layers).index(name)
        rng = np.random.default_rng([self._seed, index])
        shapes = [tuple(int(d) for d in b.shape) for b in layer.blobs]
        if layer.type == "BatchNorm":
            (c,), _, _ = shapes
            return [rng.normal(0, 0.1, c).astype(np.float32),
                    rng.uniform(0.5, 1.5, c).astype(np.float32), np.ones(1, np.float32)]
        if layer.type == "Scale":
            return [(1 + rng.normal(0, 0.1, s)).astype(np.float32) if k == 0
                    else rng.normal(0, 0.01, s).astype(np.float32)
                    for k, s in enumerate(shapes)]
        out = []
        for s in shapes:
            fan_in = int(np.prod(s[1:])) if len(s) > 1 else 0
            scale = np.float32(np.sqrt(2.0 / fan_in)) if fan_in else np.float32(0.01)
            array = rng.standard_normal(s, dtype=np.float32)
            array *= scale  # in place: no float64 or second temporary of a 10 MB blob
            out.append(array)
        return out


def write_model(prototxt: Path, path: Path) -> tuple[int, int]:
    """Write the caffemodel; returns (layers, parameters)."""
    from senet.converter.caffe_writer import write_caffemodel
    from senet.converter.prototxt import read_prototxt
    from senet.converter.load import load_net

    shapes = load_net(prototxt=str(prototxt), weights_optional=True)  # zero blobs, no memory
    structure = read_prototxt(prototxt)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    write_caffemodel(path, net, RandomWeights(shapes.layers))
    return len(shapes.layers), shapes.parameter_count()


def timed_child(argv: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes, exit status, stderr) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix in every earlier child).
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux: KiB
    return wall, rss, proc.returncode, err.decode(errors="replace")


def convert_command(model: Path, out: Path) -> list[str]:
    exe = shutil.which("senet-convert")
    head = [exe] if exe else [sys.executable, "-m", "senet.cli"]
    return head + [str(model), "--to", "onnx", "-q", "-o", str(out)]


def run_onnx(path: Path) -> tuple[float, float, float, tuple[int, ...], bool]:
    """(session seconds, first batch seconds, second batch seconds, output shape, finite)."""
    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    created = time.perf_counter() - start
    name = session.get_inputs()[0].name
    batch = np.random.default_rng(0).uniform(-120, 130, (1, 3, 224, 224)).astype(np.float32)
    start = time.perf_counter()
    (out, *_) = session.run(None, {name: batch})
    first = time.perf_counter() - start
    start = time.perf_counter()
    session.run(None, {name: batch})
    second = time.perf_counter() - start
    return created, first, second, out.shape, bool(np.isfinite(out).all())


def mib(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the caffemodel and ONNX file go (default: a temp folder)")
    parser.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT)
    parser.add_argument("--repeat", type=int, default=3,
                        help="conversions timed (fastest wall time, largest RSS kept)")
    parser.add_argument("--keep", action="store_true", help="keep the files in --workdir")
    args = parser.parse_args()
    if not args.prototxt.exists():
        print(f"bench_convert: {args.prototxt} not found (needs ../shared beside this checkout "
              "or --prototxt)", file=sys.stderr)
        return 1

    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="senet-bench-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    model, out = workdir / "SENet-154-random.caffemodel", workdir / "SENet-154-random.onnx"
    try:
        start = time.perf_counter()
        layers, params = write_model(args.prototxt, model)
        written = time.perf_counter() - start
        size = model.stat().st_size
        os.sync()

        cat = [timed_child(["cat", str(model)])[0] for _ in range(2)][1]
        command = convert_command(model, out)
        runs = []
        for _ in range(max(1, args.repeat)):
            out.unlink(missing_ok=True)
            # Write back earlier runs' dirty pages first: otherwise a run may be throttled by
            # the kernel's writeback of the previous 440 MB, which measures the disk.
            os.sync()
            wall, rss, status, err = timed_child(command)
            if status != 0:
                print(f"bench_convert: conversion failed ({status}): {err.strip()}",
                      file=sys.stderr)
                return 1
            runs.append((wall, rss))
        convert = min(w for w, _ in runs)
        rss = max(r for _, r in runs)
        created, first, second, shape, finite = run_onnx(out)

        rows = [
            ("model", f"{args.prototxt.name}: {layers} layers, {params:,} parameters "
                      f"(written in {written:.1f} s)"),
            ("caffemodel size", mib(size)),
            ("ONNX size", mib(out.stat().st_size)),
            ("cat (warm, 2nd run)", f"{cat:.3f} s"),
            ("senet-convert", f"{convert:.3f} s (fastest of {len(runs)}: "
                              + ", ".join(f"{w:.2f}" for w, _ in runs) + ")"),
            ("  ratio to cat", f"{convert / cat:.1f}x  (target <= {CAT_TARGET:g}x: "
                               f"{'met' if convert / cat <= CAT_TARGET else 'MISSED'})"),
            ("  peak RSS", mib(rss)),
            ("  ratio to file size", f"{rss / size:.2f}x  (target <= {RSS_TARGET:g}x: "
                                     f"{'met' if rss / size <= RSS_TARGET else 'MISSED'})"),
            ("onnxruntime session", f"{created:.2f} s"),
            ("onnxruntime 1x3x224x224", f"{first:.3f} s first, {second:.3f} s second; "
                                        f"output {list(shape)}, "
                                        f"{'finite' if finite else 'NOT FINITE'}"),
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"python {platform.python_version()}, numpy {np.__version__}, "
              f"{os.cpu_count()} CPUs, {platform.machine()}, load average {load:.2f} "
              "(timings are noisy when other work shares the CPUs)")
        print("convert command: " + shlex.join(command))
        print("command: " + shlex.join([sys.executable.rsplit("/", 1)[-1]] + sys.argv))
        return 0
    finally:
        if own_tmp or not args.keep:
            model.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
