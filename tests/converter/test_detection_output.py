"""SSD's DetectionOutput: senet's ONNX (onnxruntime, one file run at two batch sizes) and torch
(fx and torch.export) against the float64 reference (tests/reference/forward_detection.py,
written from weiliu89/caffe's Forward_cpu and bbox_util.cpp), on seeded inputs fed as the
layer's three bottoms: loc, conf (softmax of peaky logits, so boxes survive the thresholds) and
priors on a grid. Labels and order exact, scores and coordinates within 1e-4.

Then the traps (each wrong variant computed and shown to differ on its input), the cases that
pin onnxruntime's NonMaxSuppression to Caffe's (strict thresholds, ties, inverted boxes), the
refusals, and OpenCV dnn as a second reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import senet
from senet.errors import SenetError
from tests.converter.harness import convert, reference, run_onnx, write_net
from tests.converter.test_layers import net_text

TOL = 1e-4
VARIANCE = (0.1, 0.1, 0.2, 0.2)


def grid_priors(side: int, sizes=(0.25, 0.3, 0.5), variance=VARIANCE) -> np.ndarray:
    """A 1×2×(P·4) prior blob: boxes of each size centred on a side×side grid, then variances."""
    centres = (np.arange(side) + 0.5) / side
    cx, cy = (a.reshape(-1, 1) for a in np.meshgrid(centres, centres))
    boxes = np.concatenate([np.concatenate([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], 1)
                            for s in sizes], 1).reshape(-1, 4)
    variances = np.tile(variance, (len(boxes), 1))
    return np.stack([boxes.reshape(-1), variances.reshape(-1)])[None].astype(np.float32)


def softmax_conf(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).reshape(len(logits), -1).astype(np.float32)


def seeded_inputs(batch: int, side: int, classes: int, loc_classes: int = 1, seed: int = 0,
                  loc_scale: float = 1.0, peak: float = 4.0, empty_images=()) -> dict:
    """loc, conf, prior for `batch` images; the images in `empty_images` are sure background."""
    rng = np.random.default_rng(seed)
    prior = grid_priors(side)
    num_priors = prior.shape[2] // 4
    loc = rng.normal(0, loc_scale, (batch, num_priors * loc_classes * 4)).astype(np.float32)
    logits = rng.normal(0, peak, (batch, num_priors, classes))
    for i in empty_images:
        logits[i, :, 0] += 50.0
    return {"loc": loc, "conf": softmax_conf(logits), "prior": np.repeat(prior, batch, 0)}


def detection_text(inputs: dict, params: str) -> str:
    shapes = {name: value.shape for name, value in inputs.items()}
    return net_text(shapes, 'layer { name: "det" type: "DetectionOutput" bottom: "loc" '
                            'bottom: "conf" bottom: "prior" top: "det" '
                            f'detection_output_param {{ {params} }} }}')


def params_text(num_classes, code_type="CENTER_SIZE", nms="nms_threshold: 0.45", **fields):
    extra = " ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in fields.items())
    return f"num_classes: {num_classes} code_type: {code_type} nms_param {{ {nms} }} {extra}"


def assert_same(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    rows, want = ours.reshape(-1, 7), ref.reshape(-1, 7)
    np.testing.assert_array_equal(rows[:, :2], want[:, :2], err_msg=f"{what}: image/label")
    np.testing.assert_allclose(rows[:, 2:], want[:, 2:], rtol=0, atol=TOL, err_msg=what)


def run_torch(model, proto, inputs: dict) -> np.ndarray:
    import torch
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=["det"])
    with torch.no_grad():
        return module(*[torch.from_numpy(v) for v in inputs.values()]).numpy()


def check(tmp_path, params: str, inputs: dict, min_rows: int = 1) -> np.ndarray:
    """ONNX at the net's batch and at batch 1 (one file), and torch, equal the reference;
    returns the reference's rows at the net's batch."""
    text = detection_text(inputs, params)
    proto, model = write_net(tmp_path, text, {})
    onnx_path = convert(tmp_path, model, proto, ["det"])
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    ref = reference(text, {}, inputs)["det"]
    assert_same(run_onnx(onnx_path, inputs)["det"], ref, "onnx")
    assert_same(run_torch(model, proto, inputs), ref, "torch")
    first = {name: value[:1] for name, value in inputs.items()}
    assert_same(run_onnx(onnx_path, first)["det"], reference(text, {}, first)["det"],
                "onnx batch 1")
    assert (ref[0, 0, :, 1] >= 0).sum() >= min_rows  # detections, not the empty rows
    return ref[0, 0]


CASES = {
    # name: (params, input settings)
    "center_size": (params_text(4, confidence_threshold=0.3, keep_top_k=12,
                                nms="nms_threshold: 0.45 top_k: 20"), {}),
    "center_size_encoded": (params_text(4, variance_encoded_in_target=True,
                                        confidence_threshold=0.3), {"loc_scale": 0.2}),
    "corner": (params_text(3, "CORNER", confidence_threshold=0.2), {}),
    "corner_encoded": (params_text(3, "CORNER", variance_encoded_in_target=True,
                                   confidence_threshold=0.2), {"loc_scale": 0.1}),
    "corner_size": (params_text(3, "CORNER_SIZE", confidence_threshold=0.2), {}),
    "corner_size_encoded": (params_text(3, "CORNER_SIZE", variance_encoded_in_target=True,
                                        confidence_threshold=0.2), {"loc_scale": 0.2}),
    "per_class_loc": (params_text(4, share_location=False, confidence_threshold=0.3,
                                  keep_top_k=10), {"loc_classes": 4}),
    "per_class_loc_no_background": (
        params_text(3, share_location=False, background_label_id=-1,
                    confidence_threshold=0.4), {"loc_classes": 3}),
    "no_background": (params_text(3, background_label_id=-1, confidence_threshold=0.4), {}),
    "background_last": (params_text(3, background_label_id=2, confidence_threshold=0.3), {}),
    "no_threshold_no_limits": (params_text(3, nms="nms_threshold: 0.3"), {"side": 3}),
    "keep_top_k_small": (params_text(4, confidence_threshold=0.1, keep_top_k=3), {}),
    "keep_top_k_zero": (params_text(4, confidence_threshold=0.1, keep_top_k=0), {}),
    "nms_top_k_small": (params_text(4, confidence_threshold=0.1,
                                    nms="nms_threshold: 0.5 top_k: 3"), {}),
    "batch_with_an_empty_image": (params_text(4, confidence_threshold=0.3),
                                  {"empty_images": (1,)}),
    # the zoo's parameter sets (deploy prototxts in ../shared/fixtures/caffe_zoo)
    "faceboxes": (params_text(2, nms="nms_threshold: 0.3 top_k: 5000", keep_top_k=750,
                              confidence_threshold=0.05), {"classes": 2, "side": 10}),
    "mobilenet_ssd": (params_text(21, nms="nms_threshold: 0.45 top_k: 100", keep_top_k=100,
                                  confidence_threshold=0.25), {"classes": 21, "side": 10}),
    "opencv_face_res10_ssd": (params_text(2, nms="nms_threshold: 0.3 top_k: 400",
                                          keep_top_k=200, confidence_threshold=0.01),
                              {"classes": 2, "side": 13}),
    "ssd300_vgg16_voc0712": (
        params_text(21, nms="nms_threshold: 0.45 top_k: 400", keep_top_k=200,
                    confidence_threshold=0.5)
        + ' save_output_param { label_map_file: "labelmap_voc.prototxt" }',
        {"classes": 21, "side": 13}),
}


def case_inputs(params: str, settings: dict, batch: int = 3) -> dict:
    num_classes = int(params.split()[1])
    settings = {"side": 5, "classes": num_classes, **settings}
    return seeded_inputs(batch, settings.pop("side"), settings.pop("classes"), **settings)


@pytest.mark.parametrize("case", sorted(CASES))
def test_detection_output_matches_reference(tmp_path, case):
    params, settings = CASES[case]
    inputs = case_inputs(params, settings)
    rows = check(tmp_path, params, inputs, min_rows=0 if case == "keep_top_k_zero" else 2)
    if case == "batch_with_an_empty_image":
        assert 1 not in rows[:, 0] and {0, 2} <= set(rows[:, 0])
    if case == "keep_top_k_small":
        assert all((rows[:, 0] == i).sum() == 3 for i in range(3))
    if case == "keep_top_k_zero":  # keep_top_k 0 drops everything: the empty rows
        np.testing.assert_array_equal(rows, [[i, -1, -1, -1, -1, -1, -1] for i in range(3)])


def test_whole_batch_empty_gives_one_row_per_image(tmp_path):
    """No image has a detection: (i, -1, -1, -1, -1, -1, -1) for each image, at every batch
    size the ONNX file runs."""
    inputs = seeded_inputs(3, 4, 3, empty_images=(0, 1, 2))
    params = params_text(3, confidence_threshold=0.5)
    text = detection_text(inputs, params)
    proto, model = write_net(tmp_path, text, {})
    onnx_path = convert(tmp_path, model, proto, ["det"])
    for batch in (3, 1, 2):
        part = {name: value[:batch] for name, value in inputs.items()}
        want = np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(batch)], np.float32)
        np.testing.assert_array_equal(reference(text, {}, part)["det"][0, 0], want)
        np.testing.assert_array_equal(run_onnx(onnx_path, part)["det"][0, 0], want)
        np.testing.assert_array_equal(run_torch(model, proto, part)[0, 0], want)


# ----------------------------------------------------------------------------- hand-made boxes
# CORNER decoding with the variance encoded in the target and zero priors gives loc itself: the
# boxes below are exact in float32 and float64, so ties and thresholds are met exactly.

def direct_inputs(boxes, scores) -> dict:
    """Bottoms whose decoded boxes are `boxes` (N×P×4) and whose confidences are `scores`
    (N×P×classes)."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    num_priors = boxes.shape[1]
    prior = np.zeros((len(boxes), 2, num_priors * 4), np.float32)
    prior[:, 1] = 1.0
    return {"loc": boxes.reshape(len(boxes), -1), "conf": scores.reshape(len(scores), -1),
            "prior": prior}


def direct_params(classes, nms_threshold=0.5, nms_extra="", **fields) -> str:
    return params_text(classes, "CORNER", nms=f"nms_threshold: {nms_threshold} {nms_extra}",
                       variance_encoded_in_target=True, **fields)


def float_text(value) -> str:
    return f"{float(np.float32(value)):.9g}"


def detections(tmp_path, params, inputs) -> np.ndarray:
    """The checked rows (ONNX, torch and the reference agree on them)."""
    return check(tmp_path, params, inputs, min_rows=0)


def test_overlap_equal_to_the_threshold_keeps_the_box(tmp_path):
    """Intersection 1/16, union 1/8: overlap exactly 0.5. Caffe keeps a box unless its overlap
    is > nms_threshold (ApplyNMSFast: keep = overlap <= threshold), as onnxruntime does."""
    inputs = direct_inputs([[[0, 0, 0.5, 0.25], [0, 0, 0.25, 0.25]]], [[[0, 0.9], [0, 0.8]]])
    assert len(detections(tmp_path, direct_params(2, 0.5), inputs)) == 2
    lower = float_text(np.nextafter(np.float32(0.5), np.float32(0)))
    assert len(detections(tmp_path, direct_params(2, lower), inputs)) == 1  # >= would drop it


def test_trap_confidence_threshold_is_strict(tmp_path):
    """A score equal to confidence_threshold is dropped (GetMaxScoreIndex: score > threshold);
    the >= variant (a threshold one float below) keeps it."""
    boxes = [[[0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0.2, 0.2, 0.3, 0.3]]]
    inputs = direct_inputs(boxes, [[[0.75, 0.25], [0.7, 0.3], [0.5, 0.5]]])
    strict = detections(tmp_path, direct_params(2, confidence_threshold=0.25), inputs)
    assert strict[:, 2].tolist() == pytest.approx([0.5, 0.3])
    below = float_text(np.nextafter(np.float32(0.25), np.float32(0)))
    wrong = detections(tmp_path, direct_params(2, confidence_threshold=below), inputs)
    assert len(wrong) == 3 and len(strict) == 2


def test_trap_equal_scores_in_prior_order(tmp_path):
    """Equal scores: NMS visits them in prior order (std::stable_sort), so of two equal boxes
    the first prior survives and the rows of equal scores come in prior order. The reversed
    order would give other rows."""
    boxes = [[[0, 0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.5, 0.5, 0.7, 0.71], [0, 0, 0.2, 0.21],
              [0.8, 0.8, 0.9, 0.9]]]
    inputs = direct_inputs(boxes, [[[0.4, 0.6]] * 5])
    rows = detections(tmp_path, direct_params(2), inputs)
    kept = [np.flatnonzero((np.float32(boxes[0]) == r[3:]).all(1))[0] for r in rows]
    assert kept == [0, 1, 4]
    reversed_order = detections(tmp_path, direct_params(2), direct_inputs(
        [boxes[0][::-1]], [[[0.4, 0.6]] * 5]))
    assert not np.array_equal(reversed_order[:, 3:], rows[:, 3:])


def test_keep_top_k_among_equal_scores(tmp_path):
    """keep_top_k cutting through equal scores keeps the (score, (label, prior)) pairs made
    first: label ascending, then NMS order (a stable sort; libstdc++'s std::sort is one below
    17 pairs). The rows stay grouped by label. Here 1.0 (label 2, prior 2) and then the 0.8s of
    label 1 (priors 0, 1, 3) take the four places; label 2's 0.8s lose the tie."""
    boxes = [[[0.1 * i, 0, 0.1 * i + 0.05, 0.05] for i in range(6)]]
    scores = [[[0, 0.4, 0.4], [0, 0.4, 0.4], [0, 0.3, 0.5], [0, 0.4, 0.1], [0, 0.2, 0.4],
               [0, 0.1, 0.1]]]
    inputs = direct_inputs(boxes, np.asarray(scores) * 2)  # 0.8 etc.: exact, over 0.5 or not
    rows = detections(tmp_path, direct_params(3, keep_top_k=4), inputs)
    assert rows[:, 1].tolist() == [1, 1, 1, 2] and rows[:, 2].tolist() == pytest.approx(
        [0.8, 0.8, 0.8, 1.0])
    np.testing.assert_array_equal(rows[:, 3], np.float32([0, 0.1, 0.3, 0.2]))


def test_inverted_boxes_overlap_nothing(tmp_path):
    """A decoded box with xmax < xmin has size 0 in SSD (BBoxSize) and overlaps nothing: it is
    kept and suppresses nothing. onnxruntime would normalise its corners (then the two boxes
    below are one); senet hands NMS a point instead. The normalised variant loses a row."""
    boxes = [[[0.6, 0.1, 0.2, 0.5], [0.2, 0.1, 0.6, 0.5], [0.2, 0.5, 0.6, 0.1]]]
    inputs = direct_inputs(boxes, [[[0, 0.9], [0, 0.8], [0, 0.7]]])
    rows = detections(tmp_path, direct_params(2, 0.3), inputs)
    assert len(rows) == 3
    normalised = np.sort(np.asarray(boxes, np.float32).reshape(1, 3, 2, 2), axis=2)
    wrong = detections(tmp_path, direct_params(2, 0.3), direct_inputs(
        normalised.reshape(1, 3, 4), [[[0, 0.9], [0, 0.8], [0, 0.7]]]))
    assert len(wrong) == 1


def test_trap_nms_per_class_not_across_classes(tmp_path):
    """One box scored high for two classes gives a row for each: NMS runs per class. NMS across
    classes (each prior once, with its best class) gives one."""
    boxes = [[[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.52]]]
    scores = [[[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]]
    rows = detections(tmp_path, direct_params(3, 0.45, confidence_threshold=0.1),
                      direct_inputs(boxes, scores))
    assert rows[:, 1].tolist() == [1, 2]
    across = detections(tmp_path, direct_params(2, 0.45, confidence_threshold=0.1),
                        direct_inputs(boxes, [[[0.0, 0.5], [0.0, 0.5]]]))
    assert len(across) == 1


def test_trap_nms_top_k_cuts_before_nms(tmp_path):
    """nms top_k picks the candidates NMS sees (ApplyNMSFast: GetMaxScoreIndex, then NMS), not
    how many NMS keeps (onnxruntime's max_output_boxes_per_class): with top_k 2 the third box
    never enters, though the second is suppressed."""
    boxes = [[[0, 0, 0.4, 0.4], [0, 0, 0.4, 0.42], [0.6, 0.6, 0.9, 0.9]]]
    inputs = direct_inputs(boxes, [[[0, 0.9], [0, 0.8], [0, 0.7]]])
    rows = detections(tmp_path, direct_params(2, 0.45, "top_k: 2"), inputs)
    assert rows[:, 2].tolist() == pytest.approx([0.9])
    after = detections(tmp_path, direct_params(2, 0.45), inputs)[:2]  # NMS, then the first 2
    assert len(after) == 2


@pytest.mark.parametrize("wrong", ["not_at_all", "twice"])
def test_trap_variance(tmp_path, wrong):
    """The prior variances scale the offsets once (variance_encoded_in_target false). Not
    applying them (the flag's other meaning) or applying them twice (variances squared) moves
    the boxes, or changes which survive."""
    params = params_text(4, confidence_threshold=0.3, keep_top_k=20)
    inputs = seeded_inputs(2, 5, 4)
    rows = check(tmp_path, params, inputs)
    if wrong == "not_at_all":
        wrong_params, wrong_inputs = params + " variance_encoded_in_target: true", inputs
    else:
        prior = inputs["prior"].copy()
        prior[:, 1] **= 2
        wrong_params, wrong_inputs = params, {**inputs, "prior": prior}
    other = reference(detection_text(wrong_inputs, wrong_params), {}, wrong_inputs)["det"][0, 0]
    assert other.shape != rows.shape or np.abs(other - rows).max() > 100 * TOL


# ----------------------------------------------------------------------------- refusals

REFUSED = {
    "no_num_classes": ("code_type: CENTER_SIZE", (2, 16, 12, 16), "num_classes"),
    "loc_of_other_size": ("num_classes: 3", (2, 12, 12, 16), "location"),
    "conf_of_other_size": ("num_classes: 4", (2, 16, 12, 16), "confidence"),
    "loc_per_class": ("num_classes: 3 share_location: false", (2, 16, 12, 16), "location"),
    "prior_of_other_size": ("num_classes: 3", (2, 16, 12, 15), "prior"),
    "adaptive_nms": ("num_classes: 3 nms_param { eta: 0.9 }", (2, 16, 12, 16), "eta"),
    "negative_nms_threshold": ("num_classes: 3 nms_param { nms_threshold: -0.1 }",
                               (2, 16, 12, 16), "nms_threshold"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_layer_named(tmp_path, case):
    params, (batch, loc, conf, prior), words = REFUSED[case]
    shapes = {"loc": (batch, loc), "conf": (batch, conf), "prior": (batch, 2, prior)}
    text = net_text(shapes, 'layer { name: "bad" type: "DetectionOutput" bottom: "loc" '
                            'bottom: "conf" bottom: "prior" top: "det" '
                            f'detection_output_param {{ {params} }} }}')
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    with pytest.raises(SenetError) as error:
        senet.load_caffe(None, proto)
    assert "bad" in str(error.value) and words in str(error.value)


def test_saving_and_drawing_are_ignored_with_a_warning(tmp_path):
    """save_output_param with an output_directory makes Caffe write result files, visualize
    draw them: neither changes the top, so the conversion warns and gives the detections."""
    inputs = seeded_inputs(2, 4, 3)
    params = params_text(3, confidence_threshold=0.3) + (
        ' visualize: true save_output_param { output_directory: "/tmp/out" '
        'output_format: "VOC" label_map_file: "labels.prototxt" }')
    with pytest.warns(UserWarning) as caught:
        check(tmp_path, params, inputs)
    text = " ".join(str(w.message) for w in caught)
    assert "save_output_param" in text and "visualize" in text and "'det'" in text


# ----------------------------------------------------------------------------- torch.export

def test_exported_program_runs_any_batch(tmp_path):
    """senet.convert to .pt2 (torch.export, dynamic batch) and to ONNX at opsets 13 and 22:
    the rows have a size known at run time; batches 1 and 3 give the reference's rows."""
    import torch
    inputs = seeded_inputs(3, 5, 4, empty_images=(1,))
    params = params_text(4, confidence_threshold=0.3, keep_top_k=15,
                         nms="nms_threshold: 0.45 top_k: 30")
    text = detection_text(inputs, params)
    proto, model = write_net(tmp_path, text, {})
    path = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=proto, outputs=["det"])
    module = torch.export.load(str(path)).module()
    for batch in (1, 3):
        part = {name: value[:batch] for name, value in inputs.items()}
        with torch.no_grad():
            ours = module(*[torch.from_numpy(v) for v in part.values()]).numpy()
        assert_same(ours, reference(text, {}, part)["det"], f"pt2 batch {batch}")
    for opset in (13, 22):
        onnx_path = senet.convert(model, "onnx", tmp_path / f"m{opset}.onnx", prototxt=proto,
                                  outputs=["det"], opset=opset)
        onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
        for batch in (1, 3):
            part = {name: value[:batch] for name, value in inputs.items()}
            assert_same(run_onnx(onnx_path, part)["det"], reference(text, {}, part)["det"],
                        f"opset {opset} batch {batch}")


# ----------------------------------------------------------------------------- OpenCV

@pytest.mark.parametrize("keep_top_k", [200, 12])
def test_reference_agrees_with_opencv_dnn(tmp_path, keep_top_k):
    """OpenCV dnn 4.x's DetectionOutput, from the same SSD sources, finds the same rows, with
    two differences in layout: it pads its top with zero rows to keep_top_k per image, and it
    orders an image's rows by descending score, where Caffe groups them by label (the
    std::map of Forward_cpu). So its non-zero rows are compared as a set, both with keep_top_k
    cutting (12) and not (200). Not compared: keep_top_k -1, which OpenCV 4.14 answers with a
    1×1×7 blob and a corrupted heap (it sizes its top by keep_top_k)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")
    inputs = seeded_inputs(2, 5, 4)
    # OpenCV wants share_location and background_label_id written out
    params = params_text(4, share_location=True, background_label_id=0,
                         confidence_threshold=0.3, keep_top_k=keep_top_k,
                         nms="nms_threshold: 0.45 top_k: 40")
    text = detection_text(inputs, params)
    proto, model = write_net(tmp_path, text, {})
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name, value in inputs.items():
        net.setInput(value, name)
    theirs = net.forward()[0, 0]
    assert theirs.shape == (2 * keep_top_k, 7)
    theirs = theirs[theirs[:, 2] > 0]  # a detection's score is over the threshold, 0.3
    ref = reference(text, {}, inputs)["det"][0, 0]
    assert len(ref) == min(2 * keep_top_k, 116)  # 116 rows without the cut

    def as_set(rows):
        return rows[np.lexsort(rows.T[::-1])]

    assert_same(as_set(theirs), as_set(ref), "opencv")
    for i in range(2):
        assert (np.diff(theirs[theirs[:, 0] == i, 2]) <= 0).all()  # by score, not by label
