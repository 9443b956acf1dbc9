"""ROIPooling (Fast/Faster R-CNN) and PSROIPooling (R-FCN): senet's ONNX and torch emitters
against the float64 reference (tests/reference/forward_roi.py, loops written from the forks'
C++) on rois chosen to hit the rounding edges, OpenCV dnn's own ROIPooling and PSROIPooling
as a second reference, the rounding traps, and the refusals.

The ONNX ROIPooling is onnxruntime's MaxRoiPool: `test_onnxruntime_max_roi_pool_is_caffes`
is what allows that (ties at .5 on both signs, rois partly and wholly outside the map,
malformed and one-cell rois, empty bins)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import senet
from senet.errors import SenetError
from tests.converter.harness import rel_error, reference, write_net
from tests.converter.test_fork_layers import run_both
from tests.converter.test_layers import net_text
from tests.reference import forward_roi

TOL = 2e-6  # max pooling is exact; a mean differs by summation order only


def make_rois(count: int, batch: int, map_hw: tuple[int, int], scale: float, seed: int,
              on_item: int | None = None) -> np.ndarray:
    """count×5 float32 rois (batch index, x1, y1, x2, y2) in image coordinates for a map of
    `map_hw` at `scale`: in turn an ordinary roi, one whose scaled corners are ties
    (k + 0.5, k of both signs), one with raw .5 corners (R-FCN's rounding), one partly
    outside the image, one wholly outside, a malformed one (x2 < x1, y2 < y1) and a one-point
    roi. Batch indices are random below `batch`, or all `on_item`."""
    rng = np.random.default_rng(seed)
    img_h, img_w = (size / scale for size in map_hw)
    rois = []
    for i in range(count):
        kind = i % 7
        x1, y1 = rng.uniform(0, img_w), rng.uniform(0, img_h)
        x2, y2 = x1 + rng.uniform(0, 0.8 * img_w), y1 + rng.uniform(0, 0.8 * img_h)
        if kind == 1:
            x1, y1 = ((rng.integers(-3, int(size)) + 0.5) / scale for size in map_hw[::-1])
            x2, y2 = ((rng.integers(0, int(size) + 3) + 0.5) / scale for size in map_hw[::-1])
        elif kind == 2:
            x1, y1, x2, y2 = (math.floor(v) + 0.5 for v in (x1, y1, x2, y2))
        elif kind == 3:
            x1, y1, x2, y2 = -0.3 * img_w, -0.2 * img_h, 1.3 * img_w, 1.1 * img_h
            x1, y1 = x1 * rng.uniform(0.5, 1), y1 * rng.uniform(0.5, 1)
        elif kind == 4:
            x1, y1 = img_w + rng.uniform(20, 60) / scale, rng.uniform(-2 * img_h, -img_h)
            x2, y2 = x1 + 40, y1 + 30
        elif kind == 5:
            x2, y2 = x1 - rng.uniform(1, 40), y1 - rng.uniform(1, 40)
        elif kind == 6:
            x2, y2 = x1, y1
        b = on_item if on_item is not None else rng.integers(0, batch)
        rois.append([b, x1, y1, x2, y2])
    return np.array(rois, np.float32)


def roi_body(kind: str, param: str) -> str:
    key = "roi_pooling_param" if kind == "ROIPooling" else "psroi_pooling_param"
    return (f'layer {{ name: "pool" type: "{kind}" bottom: "x" bottom: "rois" top: "y" '
            f'{key} {{ {param} }} }}')


def run_case(tmp_path, kind, param, x_shape, scale, count=28, seed=0, on_item=None):
    """(onnx, torch, reference, inputs) of one pooling layer on seeded maps and rois."""
    shapes = {"x": x_shape, "rois": (count, 5)}
    text = net_text(shapes, roi_body(kind, param))
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(0.0, 2.0, x_shape).astype(np.float32),
              "rois": make_rois(count, x_shape[0], x_shape[2:], scale, seed + 1, on_item)}
    onnx_out, torch_out = run_both(tmp_path, text, {}, inputs, ["y"])
    return onnx_out["y"], torch_out["y"], reference(text, {}, inputs)["y"], inputs


ROI_CASES = {
    "scale_1_16_pooled_6x6": ("pooled_h: 6 pooled_w: 6 spatial_scale: 0.0625",
                              (2, 4, 14, 19), 0.0625, None),
    "scale_1_8_pooled_7x7": ("pooled_h: 7 pooled_w: 7 spatial_scale: 0.125",
                             (2, 3, 9, 12), 0.125, None),
    "scale_1_4_pooled_7x7_item_1_of_2": ("pooled_h: 7 pooled_w: 7 spatial_scale: 0.25",
                                         (2, 3, 10, 8), 0.25, 1),
    "scale_1_pooled_2x5": ("pooled_h: 2 pooled_w: 5 spatial_scale: 1", (1, 2, 6, 7), 1.0,
                           None),
}
PSROI_CASES = {
    "scale_1_16_group_3": ("spatial_scale: 0.0625 output_dim: 2 group_size: 3",
                           (2, 18, 13, 17), 0.0625, None),
    "scale_1_8_group_7_item_1_of_2": ("spatial_scale: 0.125 output_dim: 2 group_size: 7",
                                      (2, 98, 9, 11), 0.125, 1),
    "scale_1_4_group_2": ("spatial_scale: 0.25 output_dim: 3 group_size: 2",
                          (1, 12, 7, 6), 0.25, None),
}


def _check(onnx_y, torch_y, ref):
    for emitter, ours in (("onnx", onnx_y), ("torch", torch_y)):
        assert ours.shape == ref.shape, (emitter, ours.shape, ref.shape)
        err = rel_error(ours, ref)
        assert err <= TOL, f"{emitter}: relative error {err:.3g} > {TOL}"


@pytest.mark.parametrize("case", list(ROI_CASES))
def test_roi_pooling(tmp_path, case):
    param, shape, scale, item = ROI_CASES[case]
    _check(*run_case(tmp_path, "ROIPooling", param, shape, scale, on_item=item)[:3])


@pytest.mark.parametrize("case", list(PSROI_CASES))
def test_psroi_pooling(tmp_path, case):
    param, shape, scale, item = PSROI_CASES[case]
    _check(*run_case(tmp_path, "PSROIPooling", param, shape, scale, on_item=item)[:3])


def _scaled_ties(rois: np.ndarray, scale: float) -> np.ndarray:
    scaled = rois[:, 1:].astype(np.float64) * scale
    return scaled[np.abs(scaled - np.floor(scaled)) == 0.5]


def test_onnxruntime_max_roi_pool_is_caffes(tmp_path):
    """MaxRoiPool (the ONNX emitter) equals the reference bit for bit on many edge rois, and
    the rois do reach the edges: ties of both signs, rois beyond the map, empty bins."""
    param = "pooled_h: 7 pooled_w: 6 spatial_scale: 0.0625"
    onnx_y, torch_y, ref, inputs = run_case(tmp_path, "ROIPooling", param, (2, 2, 11, 13),
                                            0.0625, count=140, seed=5)
    assert np.array_equal(onnx_y, ref.astype(np.float32))
    assert np.array_equal(torch_y, ref.astype(np.float32))
    ties = _scaled_ties(inputs["rois"], 0.0625)
    assert (ties > 0).any() and (ties < 0).any()
    corners = inputs["rois"][:, 1:] * 0.0625
    assert (corners < 0).any() and (corners[:, 0] > 13).any()
    assert (ref == 0).all(axis=1).any(), "no roi with empty bins"


def _variant(monkeypatch, text, inputs, rounding):
    monkeypatch.setattr(forward_roi, "_c_round", rounding)
    try:
        return reference(text, {}, inputs)["y"]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("kind, param, channels, scale", [
    ("ROIPooling", "pooled_h: 6 pooled_w: 6 spatial_scale: 0.0625", 3, 0.0625),
    # R-FCN rounds the image coordinates before scaling: at scale 1 a tie moves a cell
    ("PSROIPooling", "spatial_scale: 1 output_dim: 1 group_size: 3", 9, 1.0),
])
@pytest.mark.parametrize("wrong", ["floor", "half_to_even"])
def test_trap_coordinate_rounding(tmp_path, monkeypatch, kind, param, channels, scale, wrong):
    """Caffe rounds roi corners halfway away from zero (C's round). Truncating them (floor)
    or rounding ties to even (ONNX Round, torch.round, NumPy) moves whole bins: the wrong
    variant differs from the reference far beyond tolerance, senet's outputs do not."""
    rounding = {"floor": lambda v: math.floor(float(v)),
                "half_to_even": lambda v: int(np.round(float(v)))}[wrong]
    onnx_y, torch_y, ref, inputs = run_case(tmp_path, kind, param, (1, channels, 12, 12),
                                            scale, count=35, seed=11)
    text = net_text({"x": inputs["x"].shape, "rois": inputs["rois"].shape},
                    roi_body(kind, param))
    wrong_y = _variant(monkeypatch, text, inputs, rounding)
    assert rel_error(wrong_y, ref) > 1e-2, "the rois do not reach the rounding edge"
    _check(onnx_y, torch_y, ref)


@pytest.mark.parametrize("kind, param, channels", [
    ("ROIPooling", "pooled_h: 6 pooled_w: 7 spatial_scale: 0.0625", 3),
    ("PSROIPooling", "spatial_scale: 0.0625 output_dim: 2 group_size: 3", 18),
])
def test_opencv_dnn_agrees(tmp_path, kind, param, channels):
    """OpenCV dnn 4.x's own ROIPooling and PSROIPooling (its Caffe importer, its kernels) on
    the same edge rois as the reference: the same numbers (its PSROIPooling sums in another
    order)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")
    onnx_y, _, ref, inputs = run_case(tmp_path, kind, param, (2, channels, 11, 13), 0.0625,
                                      count=70, seed=3)
    text = net_text({"x": inputs["x"].shape, "rois": inputs["rois"].shape},
                    roi_body(kind, param))
    proto, model = write_net(tmp_path, text, {}, "cv")
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(inputs["x"], "x")
    net.setInput(inputs["rois"], "rois")
    theirs = net.forward()
    assert theirs.shape == ref.shape
    assert rel_error(theirs, ref) <= TOL
    assert rel_error(onnx_y, theirs) <= TOL


@pytest.mark.parametrize("kind, param, x_shape, rois_shape, message", [
    ("ROIPooling", "pooled_h: 6 pooled_w: 6", (1, 3, 8, 8), (4, 4), "R×5 rois"),
    ("ROIPooling", "pooled_h: 6", (1, 3, 8, 8), (4, 5), "pooled_h and pooled_w > 0"),
    ("ROIPooling", "pooled_h: 2 pooled_w: 2", (3, 8, 8), (4, 5), "N×C×H×W map"),
    ("PSROIPooling", "spatial_scale: 0.0625 output_dim: 2 group_size: 3", (1, 17, 8, 8),
     (4, 5), "17 channels are not output_dim · group_size² = 18"),
    ("PSROIPooling", "spatial_scale: 0.0625 output_dim: 2", (1, 18, 8, 8), (4, 5),
     "needs psroi_pooling_param group_size"),
])
def test_refusals(tmp_path, kind, param, x_shape, rois_shape, message):
    text = net_text({"x": x_shape, "rois": rois_shape}, roi_body(kind, param))
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    with pytest.raises(SenetError) as error:
        senet.load_caffe(prototxt=proto)
    assert message in str(error.value) and "pool" in str(error.value)


@pytest.mark.parametrize("kind, param, channels", [
    ("ROIPooling", "pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625", 3),
    ("PSROIPooling", "spatial_scale: 0.0625 output_dim: 2 group_size: 3", 18),
])
def test_roi_count_is_not_baked_in(tmp_path, kind, param, channels):
    """The rois may come from a data-dependent Proposal layer: the ONNX graph (checker-clean,
    its rois input made symbolic) and the torch module exported with a dynamic roi axis take
    another count than the static one and still give the reference's numbers."""
    import onnx
    import onnxruntime as ort
    import torch
    from tests.converter.harness import convert
    shapes = {"x": (2, channels, 11, 13), "rois": (12, 5)}
    text = net_text(shapes, roi_body(kind, param))
    proto, model = write_net(tmp_path, text, {})
    onnx_model = onnx.load(str(convert(tmp_path, model, proto, ["y"])))
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx_model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "rois"
    onnx_model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "rois"
    session = ort.InferenceSession(onnx_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    module = senet.to_torch(senet.load_caffe(model, proto), outputs=["y"])
    x = np.random.default_rng(0).normal(size=shapes["x"]).astype(np.float32)
    example = make_rois(12, 2, (11, 13), 0.0625, seed=1)
    program = torch.export.export(module, (torch.from_numpy(x), torch.from_numpy(example)),
                                  dynamic_shapes={"x": None,
                                                  "rois": {0: torch.export.Dim("rois")}})
    for count in (5, 31):
        rois = make_rois(count, 2, (11, 13), 0.0625, seed=count)
        ref = reference(text.replace("dim: 12", f"dim: {count}"), {}, {"x": x, "rois": rois})
        onnx_y = session.run(None, {"x": x, "rois": rois})[0]
        with torch.no_grad():
            torch_y = program.module()(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
        _check(onnx_y, torch_y, ref["y"])
