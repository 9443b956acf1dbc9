"""Top-k, counts, Wilson intervals and the gate, against worked examples.

Wilson 95 % intervals: 0 of 10 -> [0, 0.2775] (upper = z²/(n+z²)); 5 of 10 -> [0.2366, 0.7634];
1 of 1 -> [0.2065, 1]: the values statsmodels' proportion_confint(method="wilson") prints.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from senet.parity.metrics import Counts, ErrorRate, judge, top_k, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.27753), (5, 10, 0.23659, 0.76341),
                                             (1, 1, 0.20654, 1.0), (10, 10, 0.72247, 1.0)])
def test_wilson_interval_worked_examples(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_on_a_full_validation_set():
    # 11,185 wrong of 50,000 (22.37 %): half-width about 1.96·sqrt(p(1-p)/n) = 0.365 points
    low, high = ErrorRate.of(50_000 - 11_185, 50_000).ci95
    assert (low, high) == pytest.approx((22.005, 22.739), abs=2e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_top_k_orders_by_score_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.3, 0.9, 0.0, 0.5, 0.2],
                       [5, 4, 3, 2, 1, 0, -1]], np.float32)
    np.testing.assert_array_equal(top_k(scores), [[1, 3, 5, 2, 6], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(top_k(np.array([[1.0, 3.0, 2.0]])), [[1, 2, 0, -1, -1]])


def test_counts_per_class_and_merging():
    predictions = np.array([[2, 0, 1, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 2, 3, 4, 5]])
    labels = np.array([2, 1, 5, 1])  # hit, top-5 only, miss, hit
    counts = Counts(6)
    counts.add(labels, predictions)
    assert (counts.images, counts.top1, counts.top5) == (4, 2, 3)
    np.testing.assert_array_equal(counts.class_images, [0, 2, 1, 0, 0, 1])
    np.testing.assert_array_equal(counts.class_top1, [0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(counts.class_top5, [0, 2, 1, 0, 0, 0])
    first, second = Counts(6), Counts(6)
    first.add(labels[:1], predictions[:1])
    second.add(labels[1:], predictions[1:])
    second.unreadable = 2
    merged = Counts.from_vector(first.to_vector() + second.to_vector(), 6)
    assert (merged.images, merged.top1, merged.top5, merged.unreadable) == (4, 2, 3, 2)
    np.testing.assert_array_equal(merged.class_top5, counts.class_top5)
    with pytest.raises(ValueError):
        Counts.from_vector(np.zeros(5, np.int64), 6)


def counts_of(images: int, top1: int, top5: int, unreadable: int = 0) -> Counts:
    c = Counts(1000, images, top1, top5, unreadable)
    return c


def test_gate_within_and_outside_tolerance():
    # 50,000 images, 11,185 top-1 wrong (22.37 %), 3,180 top-5 wrong (6.36 %): Table 1 exactly
    exact = judge(counts_of(50_000, 38_815, 46_820), 22.37, 6.36, 0.2)
    assert exact.passed and exact.reasons == ()
    assert exact.top1.percent == pytest.approx(22.37) and exact.top5.wrong == 3_180
    # +0.20 points is inside, +0.22 is outside
    edge = judge(counts_of(50_000, 38_815 - 100, 46_820), 22.37, 6.36, 0.2)
    assert edge.passed and edge.top1_delta == pytest.approx(0.2)
    out = judge(counts_of(50_000, 38_815 - 110, 46_820), 22.37, 6.36, 0.2)
    assert not out.passed and "top-1" in out.reasons[0] and "+0.22" in out.reasons[0]
    low5 = judge(counts_of(50_000, 38_815, 46_820 + 150), 22.37, 6.36, 0.2)
    assert not low5.passed and "top-5" in low5.reasons[0]


def test_gate_compares_at_table_one_precision():
    # 9 of 539 wrong = 1.6698 %: printed 1.67, so it equals a Table value of 1.67 at tolerance 0
    assert judge(counts_of(539, 530, 538), 1.67, 0.19, 0.0).passed
    assert not judge(counts_of(539, 529, 538), 1.67, 0.19, 0.0).passed


def test_gate_unreadable_images():
    # 1 of 1,000 seen (0.1 %) is allowed; 2 of 1,000 is not, unless allowed
    assert judge(counts_of(999, 999, 999, unreadable=1), 0.0, 0.0, 0.0).passed
    many = judge(counts_of(998, 998, 998, unreadable=2), 0.0, 0.0, 0.0)
    assert not many.passed and "unreadable" in many.reasons[0]
    assert judge(counts_of(998, 998, 998, unreadable=2), 0.0, 0.0, 0.0,
                 allow_unreadable=True).passed
    nothing = judge(counts_of(0, 0, 0, unreadable=3), 0.0, 0.0, 1.0, allow_unreadable=True)
    assert not nothing.passed and "no image" in nothing.reasons[0]
