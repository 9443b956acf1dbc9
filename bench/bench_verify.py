"""senet-verify throughput: decoding alone, the model alone, and the whole pipeline.

* decode + preprocess: senet.parity.images on the fixture sample images, repeated — in this
  process (one core) and through the verify loader with its default decode workers;
* model alone: onnxruntime on SE-ResNet-50's structure (../shared prototxt) with random weights,
  batch 16, default threads;
* end to end: ``senet.parity.verify.evaluate`` (what senet-verify runs) on a temporary WNID-layout
  folder of the sample images repeated to about 200 images, batch 16, checked as se_resnet50
  (the random weights have its architecture fingerprint). Conversion and model loading are not
  timed; everything from the first decoded batch to the last prediction is.

The target: end to end at least 90 % of the slower of decoding and the model, i.e. decoding
overlaps inference.

    python bench/bench_verify.py [--images 200] [--batch 16] [--workers N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "fixtures"
SAMPLES = SHARED / "imagenet_sample"
PROTOTXT = SHARED / "senet_prototxt" / "SE-ResNet-50.prototxt"


def sample_images() -> list[Path]:
    return sorted(p for folder in ("rgb_by_synset", "grayscale_by_synset")
                  for p in (SAMPLES / folder).glob("*.JPEG"))


def random_caffemodel(path: Path, seed: int = 0) -> Path:
    """SE-ResNet-50's prototxt with seeded random weights (BatchNorm: positive variances)."""
    from senet.converter.caffe_writer import write_caffemodel
    from senet.converter.prototxt import read_prototxt
    from senet.converter.load import load_net
    rng = np.random.default_rng(seed)
    net = load_net(prototxt=str(PROTOTXT), weights_optional=True)
    weights = {}
    for layer in net.layers:
        if not layer.blobs:
            continue
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            blobs = [rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c), np.ones(1)]
        elif layer.type == "Scale":
            c = layer.blobs[0].shape
            blobs = [rng.uniform(0.8, 1.2, c)] + [rng.normal(0, 0.05, c)] * (len(layer.blobs) - 1)
        else:
            blobs = []
            for b in layer.blobs:
                fan_in = int(np.prod(b.shape[1:])) if b.ndim > 1 else 1
                blobs.append(rng.normal(0, np.sqrt(2.0 / fan_in) if b.ndim > 1 else 0.01,
                                        b.shape))
        weights[layer.name] = [np.asarray(b, np.float32) for b in blobs]
    structure = read_prototxt(PROTOTXT)
    proto = structure.net
    proto.layer.extend(raw.param for raw in structure.layers)
    write_caffemodel(path, proto, weights)
    return path


def wnid_folder(root: Path, count: int) -> Path:
    """``count`` copies of the sample images as root/<wnid>/<k>.JPEG (the file name's prefix)."""
    images = sample_images()
    for k in range(count):
        source = images[k % len(images)]
        target = root / source.name.split("_", 1)[0] / f"{k:05d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def bench_decode_single(count: int) -> float:
    from senet.parity.images import preprocess
    images = sample_images()
    for p in images:
        preprocess(p)
    start = time.perf_counter()
    for k in range(count):
        preprocess(images[k % len(images)])
    return count / (time.perf_counter() - start)


def bench_decode_loader(folder: Path, batch: int, workers: int) -> float:
    from senet.parity.loader import Preprocessing, iterate_batches
    paths = sorted(str(p) for p in folder.rglob("*.JPEG"))
    items = list(enumerate(paths))
    batches = iterate_batches(items, Preprocessing(), batch, workers)  # imports torch
    start = time.perf_counter()
    done = sum(len(b.indices) for b in batches)
    return done / (time.perf_counter() - start)


def bench_model(onnx_path: Path, batch: int, runs: int) -> float:
    from senet.parity.runners import OnnxRunner
    runner = OnnxRunner(onnx_path, "cpu", 1000)
    x = np.random.default_rng(1).uniform(-120, 130, (batch, 3, 224, 224)).astype(np.float32)
    runner(x)  # warm-up
    start = time.perf_counter()
    for _ in range(runs):
        runner(x)
    return batch * runs / (time.perf_counter() - start)


def _end_to_end(result) -> float:
    """Images per second from the first decoded batch to the last prediction."""
    return result.computed / result.extra["loop_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="end-to-end folder size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="decode workers (default: senet-verify's default)")
    parser.add_argument("--model-runs", type=int, default=10, help="timed model batches")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each stage (best kept)")
    args = parser.parse_args()
    if not PROTOTXT.exists() or not SAMPLES.exists():
        print(f"needs ../shared fixtures: {PROTOTXT}, {SAMPLES}", file=sys.stderr)
        return 1
    from senet.parity.runners import prepare_model
    from senet.parity.verify import VerifyOptions, default_workers, evaluate
    from senet.manifest import lookup
    workers = args.workers if args.workers is not None else default_workers(1)
    with tempfile.TemporaryDirectory(prefix="senet-bench-verify-") as tmp:
        tmp = Path(tmp)
        val = wnid_folder(tmp / "val", args.images)
        model = random_caffemodel(tmp / "SE-ResNet-50.caffemodel")
        prepared = prepare_model(model, lookup("se_resnet50"), "onnxruntime", tmp / "cache")
        options = VerifyOptions(model="se_resnet50", weights=str(model), val=str(val),
                                cache_dir=tmp / "cache", batch_size=args.batch,
                                workers=workers, resume=False)
        best = {}
        # Interleaved repeats, best of each: other processes on the machine add noise.
        for _ in range(args.repeat):
            for key, measure in (
                    ("single", lambda: bench_decode_single(100)),
                    ("loader", lambda: bench_decode_loader(val, args.batch, workers)),
                    ("model", lambda: bench_model(prepared.path, args.batch, args.model_runs)),
                    ("e2e", lambda: _end_to_end(evaluate(options)))):
                best[key] = max(best.get(key, 0.0), measure())
    rows = [("decode + preprocess, this process (1 core)", best["single"]),
            (f"decode + preprocess, loader ({workers} workers)", best["loader"]),
            (f"model alone (onnxruntime, SE-ResNet-50, batch {args.batch})", best["model"]),
            (f"end to end (senet-verify pipeline, {args.images} images)", best["e2e"])]
    end_to_end = best["e2e"]
    slower = min(best["loader"], best["model"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {load:.1f} at the end")
    width = max(len(name) for name, _ in rows)
    print(f"{'stage':{width}s}  {'images/s':>9s}")
    print("-" * (width + 11))
    for name, rate in rows:
        print(f"{name:{width}s}  {rate:9.1f}")
    print("-" * (width + 11))
    print(f"{'end to end / slower of loader and model':{width}s}  {100 * end_to_end / slower:8.1f}%"
          f"  (target >= 90%)")
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
