"""Decode + Caffe preprocessing speed (senet.parity.images.preprocess), one core.

Times ``preprocess(path)`` (Pillow decode, NumPy bilinear resize of the crop window, centre crop,
float32 BGR minus mean) on each image of the fixture sample, repeated, and prints the median per
image, the decode share, images/s over the set and over the typical 500 x 375 ImageNet images,
and, when OpenCV is installed, the OpenCV reference pipeline for comparison.

    python bench/bench_data.py [--repeat 30] [--images DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402

from senet.parity import images  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_IMAGES = SHARED / "fixtures" / "imagenet_sample"


def median_seconds(function, path, repeat: int) -> float:
    function(path)  # warm the file cache and the code paths
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opencv_pipeline(cv2):
    mean = np.array(images.CAFFE_BGR_MEAN, dtype=np.float32)[:, None, None]

    def run(path):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = images.resized_size(*bgr.shape[:2])
        resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        top, left = images.center_crop_offsets(h, w)
        return resized[top:top + 224, left:left + 224].transpose(2, 0, 1).astype(np.float32) - mean

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per image (median kept)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder searched recursively for .JPEG/.jpg/.png files")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.rglob("*")
                   if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not paths:
        print(f"no images under {args.images}", file=sys.stderr)
        return 1
    try:
        import cv2
        cv2.setNumThreads(1)
        reference = opencv_pipeline(cv2)
    except ImportError:
        cv2 = reference = None

    header = f"{'image':44s} {'H x W':>11s} {'decode ms':>10s} {'total ms':>9s} {'img/s':>7s}"
    header += f" {'cv2 ms':>7s}" if reference else ""
    print(header)
    print("-" * len(header))
    totals, typical, cv2_totals = [], [], []
    for path in paths:
        decoded = images.load_image(path)
        decode = median_seconds(images.load_image, path, args.repeat)
        total = median_seconds(images.preprocess, path, args.repeat)
        totals.append(total)
        if decoded.shape[:2] in ((375, 500), (500, 375)):
            typical.append(total)
        row = (f"{path.parent.name[:12] + '/' + path.name:44.44s} "
               f"{decoded.shape[0]:5d}x{decoded.shape[1]:<5d} {decode * 1e3:10.2f} "
               f"{total * 1e3:9.2f} {1 / total:7.0f}")
        if reference:
            cv2_totals.append(median_seconds(reference, path, args.repeat))
            row += f" {cv2_totals[-1] * 1e3:7.2f}"
        print(row)
    print("-" * len(header))
    print(f"all {len(paths)} images: {len(totals) / sum(totals):.0f} images/s "
          f"(mean {statistics.mean(totals) * 1e3:.2f} ms/image)")
    if typical:
        print(f"500x375 images ({len(typical)}): {len(typical) / sum(typical):.0f} images/s")
    if cv2_totals:
        rate = len(cv2_totals) / sum(cv2_totals)
        print(f"OpenCV reference pipeline, all images: {rate:.0f} images/s")
    versions = (f"python {platform.python_version()}, numpy {np.__version__}, "
                f"Pillow {PIL.__version__}")
    if cv2:
        versions += f", opencv {cv2.__version__}"
    print(f"{versions}, {platform.processor() or platform.machine()}")
    print("command: " + shlex.join([sys.executable.rsplit("/", 1)[-1]] + sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
