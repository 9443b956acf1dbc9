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
