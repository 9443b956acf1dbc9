"""CPU inference throughput of a converted net: images/s at batch 8, 224×224.

The net is ../shared/fixtures/senet_prototxt/SE-ResNet-50.prototxt (or any single-input
classification prototxt given with --prototxt, e.g. a zoo net) with seeded random weights
(tests/reference/random_weights.py: He-scaled convolutions, BatchNorm statistics measured on
random images, so the last column, each backend's deviation from the unfolded module, is
meaningful), run by

- senet torch, folded: ``to_torch(net)`` — BatchNorm+Scale folded into the convolutions,
  Axpy+ReLU fused, SE ops through torch.ops.senet (eager), NCHW and channels_last;
- onnxruntime: the ONNX writer's model (``build_graph``), CPUExecutionProvider;
- eager torch with unfolded BatchNorm: ``to_torch(net, fold=False)`` — our own module with
  BatchNorm and Scale kept as separate ops, standing in for a timm-style eager model
  (timm's legacy_seresnet50 keeps BatchNorm2d unfolded the same way; timm itself is not used).

Each backend gets `--warmup` untimed batches, then `--iters` timed ones; the median batch time
gives images/s. torch runs under inference_mode; both runtimes use `--threads` threads.

    python bench/bench_cpu.py [--batch 8] [--iters 10] [--warmup 3] [--threads N] [--prototxt P]
    python bench/bench_cpu.py --prototxt ../shared/fixtures/caffe_zoo/bvlc_googlenet/deploy.prototxt
    python bench/bench_cpu.py --prototxt ../shared/fixtures/caffe_zoo/resnet50_kaiminghe/deploy.prototxt
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_PROTOTXT = REPO.parent / "shared" / "fixtures" / "senet_prototxt" / "SE-ResNet-50.prototxt"


def random_weights(net, prototxt: Path, seed: int = 50) -> None:
    """Seeded random float32 blobs in place of the placeholders, from tests/reference's
    generator: BatchNorm statistics measured on random images, so activations stay well scaled
    through all SE blocks and the backends' outputs can be compared."""
    from tests.reference.prototxt_text import parse_prototxt
    from tests.reference.random_weights import make_weights

    (name, full), = net.inputs.items()
    weights = make_weights(parse_prototxt(prototxt.read_text()), {name: (1,) + full[1:]}, seed)
    for layer in net.layers:
        if layer.blobs:
            layer.blobs = [np.asarray(w, np.float32).reshape(b.shape)
                           for w, b in zip(weights[layer.name], layer.blobs)]


def time_batches(run, warmup: int, iters: int) -> float:
    """Median seconds per call of `run` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=None,
                        help="blob to time up to (default: the blob nothing consumes)")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from senet.converter.load import load_net
    from senet.converter.to_onnx import build_graph, write_model
    from senet.converter.to_torch import to_torch
    from tests.reference.random_weights import make_input

    torch.set_num_threads(args.threads)
    shape = (args.batch, 3, args.size, args.size)
    net = load_net(prototxt=str(args.prototxt), input_shape=shape, weights_optional=True)
    random_weights(net, args.prototxt)
    x = make_input(shape, seed=1)  # image-like, as the BatchNorm statistics were measured on
    xt = torch.from_numpy(x)

    rows = []
    outputs = [args.output] if args.output else None
    folded, unfolded = to_torch(net, outputs), to_torch(net, outputs, fold=False)
    channels_last = to_torch(net, outputs).to(memory_format=torch.channels_last)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = unfolded(xt)
        for label, module, data in (
                ("senet torch, folded (eager)", folded, xt),
                ("senet torch, folded, channels_last (eager)", channels_last, xt_cl),
                ("eager torch, BatchNorm unfolded (timm-style stand-in)", unfolded, xt)):
            seconds = time_batches(lambda: module(data), args.warmup, args.iters)
            deviation = float((module(data) - reference).abs().max() / reference.abs().max())
            rows.append((label, seconds, deviation))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        model, initializers = build_graph(net, outputs)
        write_model(path, model, initializers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        seconds = time_batches(lambda: session.run(None, feed), args.warmup, args.iters)
        (out,) = session.run(None, feed)
        deviation = float(np.abs(out - reference.numpy()).max() / np.abs(reference.numpy()).max())
        rows.insert(2, ("onnxruntime (senet's ONNX model)", seconds, deviation))

    name = args.prototxt.stem if args.prototxt.stem != "deploy" else args.prototxt.parent.name
    print(f"# {name}, random weights, batch {args.batch}, "
          f"{args.size}x{args.size}, float32, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; median of {args.iters} batches after {args.warmup}")
    print(f"| {'backend':<54} | {'images/s':>8} | {'ms/batch':>8} | {'max|Δ|/max|ref|':>15} |")
    print(f"| {'-' * 54} | {'-' * 8}:| {'-' * 8}:| {'-' * 15}:|")
    for label, seconds, deviation in rows:
        print(f"| {label:<54} | {args.batch / seconds:8.1f} | {seconds * 1e3:8.1f} | "
              f"{deviation:15.2e} |")
    print("\n" + shlex.join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
