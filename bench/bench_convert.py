"""senet-convert on a big caffemodel (SENet-154 by default, VGG-16 with --prototxt): wall time
and peak memory against copying and hashing the file, and one onnxruntime batch of the result.

Writes a caffemodel with the structure of the prototxt and seeded random float32 weights of the
right shapes (generated one layer at a time and streamed by senet's writer, in a child process so
that this script stays small: a child's peak RSS on Linux starts at its parent's RSS at fork),
then measures

- the floor: ``cp FILE COPY`` plus ``sha256sum FILE`` (each run twice, the second kept: page
  cache warm) — what any converter that copies the weights and records the file's digest pays
  (senet-convert does both: the ONNX metadata carries the source's SHA-256);
- ``senet-convert FILE --to onnx -q -o OUT`` as a child process: wall time and peak RSS;
- onnxruntime: session creation and one 1x3x224x224 batch of the converted model.

Targets (issue 8): convert <= 1.5x the floor, peak RSS <= 0.5x the file size.
(``cat FILE > /dev/null`` is no floor: coreutils 9 copies to /dev/null with copy_file_range,
which returns at once.)

    python bench/bench_convert.py [--workdir DIR] [--repeat 3] [--keep] [--prototxt P]
    python bench/bench_convert.py --prototxt ../shared/fixtures/caffe_zoo/vgg16_ilsvrc_v1format/deploy.prototxt
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
FLOOR_TARGET, RSS_TARGET = 1.5, 0.5


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


def write_model_in_child(prototxt: Path, path: Path) -> tuple[int, int]:
    """`write_model` in a child process, so this process's RSS stays what it was."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_convert as b; "
            "from pathlib import Path; print(*b.write_model(Path(sys.argv[2]), Path(sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(prototxt),
                          str(path)], check=True, capture_output=True, text=True).stdout
    layers, params = out.split()
    return int(layers), int(params)


def floor_seconds(model: Path, copy: Path) -> tuple[float, float]:
    """(cp seconds, sha256sum seconds), each the second of two runs (warm page cache)."""
    cp = []
    for _ in range(2):
        copy.unlink(missing_ok=True)
        os.sync()
        cp.append(timed_child(["cp", str(model), str(copy)])[0])
    copy.unlink(missing_ok=True)
    sha = [timed_child(["sha256sum", str(model)])[0] for _ in range(2)]
    return cp[1], sha[1]


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
    stem = args.prototxt.stem if args.prototxt.stem != "deploy" else args.prototxt.parent.name
    model, out = workdir / f"{stem}-random.caffemodel", workdir / f"{stem}-random.onnx"
    try:
        start = time.perf_counter()
        layers, params = write_model_in_child(args.prototxt, model)
        written = time.perf_counter() - start
        size = model.stat().st_size
        os.sync()

        cp, sha = floor_seconds(model, workdir / "copy.caffemodel")
        floor = cp + sha
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
            ("floor: cp + sha256sum", f"{floor:.3f} s (cp {cp:.3f} s, sha256sum {sha:.3f} s; "
                                      "warm, 2nd runs)"),
            ("senet-convert", f"{convert:.3f} s (fastest of {len(runs)}: "
                              + ", ".join(f"{w:.2f}" for w, _ in runs) + ")"),
            ("  ratio to the floor", f"{convert / floor:.2f}x  (target <= {FLOOR_TARGET:g}x: "
                                     f"{'met' if convert / floor <= FLOOR_TARGET else 'MISSED'})"),
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
