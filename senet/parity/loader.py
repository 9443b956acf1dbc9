"""Batches of preprocessed images, decoded by workers ahead of the model.

``iterate_batches`` hands out batches in sample order. Decoding and preprocessing run in
``torch.utils.data.DataLoader`` worker processes when torch is importable (the batch tensor
reaches this process through shared memory), else in a thread pool; either way up to a few
batches are prepared while the model runs on the current one.

An image that cannot be decoded does not stop the run: its batch carries it in ``failed`` with
the reason, and the readable images of the batch are scored as usual.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from senet.errors import SenetError, UsageError
from senet.parity import images

COLOR_ORDERS = ("BGR", "RGB")


@dataclass(frozen=True)
class Preprocessing:
    """A model's input pipeline as a picklable callable: path -> float32 C x crop x crop.

    Caffe's pipeline (senet.parity.images): shorter side to ``resize_shorter`` (bilinear,
    OpenCV arithmetic), centre crop ``crop``, channels in ``color`` order, minus ``mean``
    (given in ``color`` order), times ``scale``.
    """

    resize_shorter: int = images.RESIZE_SHORTER
    crop: int = images.CROP_SIZE
    mean: tuple[float, float, float] = images.CAFFE_BGR_MEAN
    scale: float = 1.0
    color: str = "BGR"

    def __post_init__(self):
        if self.color.upper() not in COLOR_ORDERS:
            raise UsageError(f"unsupported colour order '{self.color}'",
                             hint=f"use one of: {', '.join(COLOR_ORDERS)}")

    @classmethod
    def of(cls, entry) -> Preprocessing:
        """The pipeline a manifest entry (senet.manifest.ModelEntry) asks for."""
        pre = entry.preprocessing
        return cls(int(pre.resize_shorter), int(pre.crop), tuple(float(m) for m in pre.mean),
                   float(pre.scale), str(pre.color).upper())

    def describe(self) -> dict:
        return {"resize_shorter": self.resize_shorter, "crop": self.crop,
                "mean": list(self.mean), "scale": self.scale, "color": self.color}

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        if self.color.upper() == "RGB":
            # images.preprocess subtracts its mean in BGR order and returns BGR planes.
            blob = images.preprocess(path, self.resize_shorter, self.crop, self.mean[::-1])
            blob = np.ascontiguousarray(blob[::-1])
        else:
            blob = images.preprocess(path, self.resize_shorter, self.crop, self.mean)
        if self.scale != 1.0:
            blob *= np.float32(self.scale)
        return blob


@dataclass
class Batch:
    """Readable images of one batch (indices into the listing, N x C x H x W float32) and the
    unreadable ones with their reasons."""

    indices: np.ndarray
    images: np.ndarray
    failed: list[tuple[int, str]]


class ImageSet:
    """Map-style dataset over (sample index, path) pairs: item i is (index, blob, None), or
    (index, None, reason) for an image that cannot be read."""

    def __init__(self, items: Sequence[tuple[int, str]], preprocessing: Preprocessing):
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, path = self.items[i]
        try:
            return index, self.preprocessing(path), None
        except SenetError as error:
            reason = error.what if error.hint is None else f"{error.what} ({error.hint})"
            return index, None, " ".join(reason.split())
        except (OSError, ValueError) as error:  # e.g. a 0-pixel image
            return index, None, f"{type(error).__name__}: {error}"


def _collate(items, as_tensor: bool = False):
    good = [(index, blob) for index, blob, _ in items if blob is not None]
    failed = [(index, reason) for index, blob, reason in items if blob is None]
    indices = np.array([index for index, _ in good], np.int64)
    # An all-unreadable batch has no images: the caller skips the model for it.
    stacked = np.stack([blob for _, blob in good]) if good else np.zeros((0,), np.float32)
    if as_tensor:
        import torch
        stacked = torch.from_numpy(stacked)
    return indices, stacked, failed


def _collate_tensor(items):
    return _collate(items, as_tensor=True)


def _torch_available() -> bool:
    try:
        import torch.utils.data  # noqa: F401
    except ImportError:
        return False
    return True


def iterate_batches(items: Sequence[tuple[int, str]], preprocessing: Preprocessing,
                    batch_size: int, workers: int) -> Iterator[Batch]:
    """Batches of ``items`` in order; ``workers`` processes (torch) or threads decode ahead.

    Arguments are checked and torch imported now; decoding starts at the first ``next``.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be 0 or more, got {workers}")
    dataset = ImageSet(items, preprocessing)
    if _torch_available():
        return _torch_batches(dataset, batch_size, workers)
    return _thread_batches(dataset, batch_size, workers)


def _torch_batches(dataset: ImageSet, batch_size: int, workers: int) -> Iterator[Batch]:
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_tensor, prefetch_factor=2 if workers else None)
    for indices, stacked, failed in loader:
        yield Batch(indices, stacked.numpy(), failed)


def _thread_batches(dataset: ImageSet, batch_size: int, workers: int) -> Iterator[Batch]:
    starts = range(0, len(dataset), batch_size)

    def load(start: int):
        return _collate([dataset[i] for i in range(start, min(start + batch_size,
                                                              len(dataset)))])

    if workers == 0:
        for start in starts:
            yield Batch(*load(start))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        queue = iter(starts)
        for start in queue:  # keep 2 batches per worker in flight, hand them out in order
            pending.append(pool.submit(load, start))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(load, following))
            yield Batch(*result)
