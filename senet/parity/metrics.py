"""Top-1 / top-5 error with counts, 95 % Wilson intervals, and the parity gate against Table 1.

Unreadable images (files that cannot be decoded) are *excluded from the denominator*: the
errors are measured over the images the model actually saw, and the unreadable ones are counted
and listed beside them. A run with more than 0.1 % unreadable images fails the gate anyway (a
damaged copy of the validation set cannot prove parity) unless the caller allows it.

Everything here is plain NumPy over small integer arrays, so counts from several processes are
merged by adding their ``to_vector()`` forms (``torch.distributed.all_reduce``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TOP_K = 5
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
MAX_UNREADABLE_FRACTION = 0.001  # 0.1 %
TABLE1_DECIMALS = 2  # the paper prints errors with two decimals


def top_k(scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first; ties go to the lower index.

    Rows with fewer than ``k`` classes are padded with -1 (never a correct label).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"expected batch x classes scores, got shape {scores.shape}")
    take = min(k, scores.shape[1])
    # A stable sort of the negated scores keeps equal scores in index order.
    order = np.argsort(-scores.astype(np.float64, copy=False), axis=1, kind="stable")[:, :take]
    if take < k:
        order = np.concatenate([order, np.full((len(order), k - take), -1, order.dtype)], axis=1)
    return order.astype(np.int32)


@dataclass
class Counts:
    """Correct top-1 / top-5 predictions overall and per class, plus unreadable images."""

    num_classes: int
    images: int = 0
    top1: int = 0
    top5: int = 0
    unreadable: int = 0
    class_images: np.ndarray = field(default=None)  # type: ignore[assignment]
    class_top1: np.ndarray = field(default=None)  # type: ignore[assignment]
    class_top5: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        for name in ("class_images", "class_top1", "class_top5"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_classes, np.int64))

    def add(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        """Score images with ground truth ``labels`` (N) and top-k ``predictions`` (N x k)."""
        labels = np.asarray(labels, np.int64)
        predictions = np.asarray(predictions)
        if len(labels) == 0:
            return
        hit1 = predictions[:, 0] == labels
        hit5 = (predictions[:, :TOP_K] == labels[:, None]).any(axis=1)
        self.images += len(labels)
        self.top1 += int(hit1.sum())
        self.top5 += int(hit5.sum())
        self.class_images += np.bincount(labels, minlength=self.num_classes)
        self.class_top1 += np.bincount(labels[hit1], minlength=self.num_classes)
        self.class_top5 += np.bincount(labels[hit5], minlength=self.num_classes)

    def to_vector(self) -> np.ndarray:
        """int64 [images, top1, top5, unreadable, per-class images, top1, top5]: summable."""
        return np.concatenate([np.array([self.images, self.top1, self.top5, self.unreadable],
                                        np.int64),
                               self.class_images, self.class_top1, self.class_top5])

    @classmethod
    def from_vector(cls, vector: np.ndarray, num_classes: int) -> Counts:
        v = np.asarray(vector, np.int64)
        if v.shape != (4 + 3 * num_classes,):
            raise ValueError(f"a counts vector for {num_classes} classes has "
                             f"{4 + 3 * num_classes} entries, got {v.shape}")
        c = num_classes
        return cls(num_classes, int(v[0]), int(v[1]), int(v[2]), int(v[3]),
                   v[4:4 + c].copy(), v[4 + c:4 + 2 * c].copy(), v[4 + 2 * c:].copy())

    @property
    def seen(self) -> int:
        """Images attempted: scored plus unreadable."""
        return self.images + self.unreadable


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, as fractions in [0, 1]."""
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class ErrorRate:
    """An error rate in percent with its 95 % Wilson interval (percent) and its raw counts."""

    wrong: int
    images: int
    percent: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, correct: int, images: int) -> ErrorRate:
        wrong = images - correct
        if images <= 0:
            return cls(0, 0, math.nan, (math.nan, math.nan))
        low, high = wilson_interval(wrong, images)
        return cls(wrong, images, 100.0 * wrong / images, (100.0 * low, 100.0 * high))


@dataclass(frozen=True)
class Gate:
    """The parity verdict: measured errors against the published ones."""

    top1: ErrorRate
    top5: ErrorRate
    table1_top1: float
    table1_top5: float
    tolerance: float
    unreadable: int
    unreadable_fraction: float
    passed: bool
    reasons: tuple[str, ...]

    @property
    def top1_delta(self) -> float:
        return self.top1.percent - self.table1_top1

    @property
    def top5_delta(self) -> float:
        return self.top5.percent - self.table1_top5


def judge(counts: Counts, table1_top1: float, table1_top5: float, tolerance: float,
          allow_unreadable: bool = False,
          max_unreadable_fraction: float = MAX_UNREADABLE_FRACTION) -> Gate:
    """Pass when both errors, rounded to Table 1's two decimals, lie within ``tolerance``
    percentage points of Table 1, and no more than ``max_unreadable_fraction`` of the images
    were unreadable (unless allowed)."""
    top1 = ErrorRate.of(counts.top1, counts.images)
    top5 = ErrorRate.of(counts.top5, counts.images)
    fraction = counts.unreadable / counts.seen if counts.seen else 0.0
    reasons = []
    if counts.images == 0:
        reasons.append("no image could be scored")
    else:
        # Table 1 has two decimals: ours is compared at that precision (so tolerance 0 means
        # "equal as printed"); the epsilon keeps a delta of exactly the tolerance inside it.
        for label, rate, table in (("top-1", top1, table1_top1), ("top-5", top5, table1_top5)):
            delta = round(rate.percent, TABLE1_DECIMALS) - table
            if abs(delta) > tolerance + 1e-9:
                reasons.append(f"{label} error {rate.percent:.2f}% is {delta:+.2f} points from "
                               f"Table 1's {table:.2f}% (tolerance {tolerance:.2f})")
    if fraction > max_unreadable_fraction and not allow_unreadable:
        reasons.append(f"{counts.unreadable} of {counts.seen} images "
                       f"({100 * fraction:.2f}%) are unreadable (more than "
                       f"{100 * max_unreadable_fraction:.1f}%; --allow-unreadable accepts that)")
    return Gate(top1, top5, table1_top1, table1_top5, tolerance, counts.unreadable, fraction,
                not reasons, tuple(reasons))
