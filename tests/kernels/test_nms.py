"""senet::nms against a plain float64 greedy NMS written here, and on hand-made edge cases:
the strict `>` (an overlap equal to the threshold keeps the box), ties by index, the pixel
offset of py-faster-rcnn, inverted boxes, and a torch.export trace of its dynamic size."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import senet.kernels  # noqa: E402,F401  (registers senet::nms)


def greedy(boxes: np.ndarray, scores: np.ndarray, threshold: float, offset: float) -> list[int]:
    def size(b):
        w, h = b[2] - b[0], b[3] - b[1]
        return 0.0 if w < 0 or h < 0 else (w + offset) * (h + offset)

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            iw = min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]) + offset
            ih = min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]) + offset
            if iw > 0 and ih > 0:
                inter = iw * ih
                if inter / (size(boxes[i]) + size(boxes[j]) - inter) > threshold:
                    ok = False
                    break
        if ok:
            kept.append(i)
    return kept


def run(boxes, scores, threshold, offset=0.0) -> list[int]:
    out = torch.ops.senet.nms(torch.tensor(boxes, dtype=torch.float32),
                              torch.tensor(scores, dtype=torch.float32), threshold, offset)
    return out.tolist()


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_a_plain_greedy(seed, offset):
    rng = np.random.default_rng(seed)
    scale = 1.0 if offset == 0 else 100.0
    xy = rng.uniform(0, 0.8, (300, 2)) * scale
    wh = rng.uniform(0.02, 0.3, (300, 2)) * scale
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    ours = run(boxes, scores, 0.45, offset)
    assert ours == greedy(boxes.astype(np.float64), scores, 0.45, offset)
    assert 20 < len(ours) < 300  # both suppression and survival happen


def test_overlap_equal_to_the_threshold_keeps_the_box():
    boxes = [[0, 0, 4, 1], [0, 0, 2, 1]]  # intersection 2, union 4: exactly 0.5
    assert run(boxes, [0.9, 0.8], 0.5) == [0, 1]
    assert run(boxes, [0.9, 0.8], 0.4999) == [0]


def test_pixel_offset_counts_the_last_pixel():
    boxes = [[0, 0, 1, 0], [0, 0, 3, 0]]  # with +1: sizes 2 and 4, intersection 2 -> 0.5
    assert run(boxes, [0.5, 0.9], 0.5, 1.0) == [1, 0]
    assert run(boxes, [0.5, 0.9], 0.49, 1.0) == [1]
    assert run(boxes, [0.5, 0.9], 0.49, 0.0) == [1, 0]  # without it: zero-height boxes


def test_equal_scores_are_visited_in_index_order():
    boxes = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6]]
    assert run(boxes, [0.7, 0.7, 0.7, 0.7], 0.5) == [0, 3]


def test_an_inverted_box_has_no_size():
    # SSD's BBoxSize: x2 < x1 gives size 0, so its union with a box is that box's size
    boxes = [[0, 0, 2, 2], [1, 1, 0.5, 3]]
    assert run(boxes, [0.9, 0.8], 0.0) == [0, 1]  # disjoint by the inverted x range


def test_exports_with_a_size_known_at_run_time():
    class Keep(torch.nn.Module):
        def forward(self, boxes, scores):
            return torch.ops.senet.nms(boxes, scores, 0.5, 0.0)

    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1.1], [2, 2, 3, 3]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    n = torch.export.Dim("n", min=1)
    program = torch.export.export(Keep(), (boxes, scores),
                                  dynamic_shapes={"boxes": {0: n}, "scores": {0: n}})
    assert program.module()(boxes, scores).tolist() == [0, 2]
    assert program.module()(boxes[:2], scores[:2]).tolist() == [0]
