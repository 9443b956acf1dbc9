"""SSD's Normalize and PriorBox (weiliu89/caffe, branch ssd): senet's ONNX and torch emitters
against the reference (tests/reference/forward_ssd.py, loops written from Forward_cpu), the
traps (prior order, size truncation, variance layout), refusals, OpenCV dnn as a second
reference, a dynamic batch, and the raw heads of the SSD zoo nets."""

from __future__ import annotations

import re

import numpy as np
import pytest

import senet
from senet.errors import ShapeError
from tests.conftest import require_shared
from tests.converter.harness import convert, reference, rel_error, run_onnx, write_net
from tests.converter.test_fork_layers import check_case, make_inputs, run_both, seeded_weights
from tests.converter.test_layers import net_text

TOL = 2e-5
X = {"x": (2, 6, 5, 7)}
MAP = {"x": (2, 4, 3, 5), "img": (2, 3, 31, 47)}  # a non-square map of a non-square image
VAR4 = "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2"


def _norm(param: str) -> str:
    return f'layer {{ name: "n" type: "Normalize" bottom: "x" top: "y" norm_param {{ {param} }} }}'


def _prior(param: str) -> str:
    return ('layer { name: "pb" type: "PriorBox" bottom: "x" bottom: "img" top: "y" '
            f'prior_box_param {{ {param} }} }}')


NORMALIZE = {
    "per_position_per_channel": "across_spatial: false channel_shared: false",
    "per_position_shared": "across_spatial: false",
    "across_spatial_shared": "",
    "across_spatial_per_channel": "channel_shared: false",
    "large_eps": "across_spatial: false channel_shared: false eps: 0.5",
}
PRIOR = {
    "ssd_layer": f"min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 flip: true "
                 f"clip: false {VAR4} step: 8 offset: 0.5",
    "several_sizes_no_flip_clip": "min_size: 10 min_size: 25 max_size: 20 max_size: 40 "
                                  "aspect_ratio: 2 flip: false clip: true variance: 0.2",
    "fractional_sizes": "min_size: 30.7 max_size: 60.9 aspect_ratio: 3 variance: 0.1",
    "derived_step": f"min_size: 12 aspect_ratio: 2 {VAR4}",
    "step_h_w_offset": "min_size: 12 step_h: 7 step_w: 9.5 offset: 0.25 variance: 0.1",
    "img_h_w": "min_size: 12 max_size: 18 img_h: 50 img_w: 61 variance: 0.1",
    "img_size": "min_size: 12 img_size: 40 clip: true",
    "default_variance_repeated_ratios": "min_size: 12 aspect_ratio: 2 aspect_ratio: 0.5 "
                                        "aspect_ratio: 2 aspect_ratio: 1",
}


@pytest.mark.parametrize("case", NORMALIZE)
def test_normalize_matches_reference(tmp_path, case):
    check_case(tmp_path, X, _norm(NORMALIZE[case]), ["y"])


def test_normalize_two_axes(tmp_path):
    check_case(tmp_path, {"x": (3, 8)}, _norm("across_spatial: false channel_shared: false"),
               ["y"])


@pytest.mark.parametrize("case", PRIOR)
def test_prior_box_equals_reference_bit_for_bit(tmp_path, case):
    """The boxes are the fork's float32 values exactly (computed at conversion time in its
    float / double arithmetic), in both emitters."""
    text = net_text(MAP, _prior(PRIOR[case]))
    onnx_out, torch_out = run_both(tmp_path, text, {}, make_inputs(MAP), ["y"])
    ref = reference(text, {}, make_inputs(MAP))["y"].astype(np.float32)
    assert np.array_equal(onnx_out["y"], ref) and np.array_equal(torch_out["y"], ref)


def _boxes(tmp_path, param: str, shapes=MAP) -> tuple[np.ndarray, np.ndarray]:
    """(senet's ONNX PriorBox top, the reference's)."""
    text = net_text(shapes, _prior(param))
    proto, model = write_net(tmp_path, text, {})
    inputs = make_inputs(shapes)
    return (run_onnx(convert(tmp_path, model, proto, ["y"]), inputs)["y"],
            reference(text, {}, inputs)["y"])


def test_trap_prior_order(tmp_path):
    """Per position and min_size the fork writes the min_size square, the
    sqrt(min·max) square, then the ratios in LayerSetUp's order r, 1/r, r', 1/r'. The order
    of TF / Paddle's default (ratios first, the max square last) or all ratios before their
    flips gives boxes the trained box regressors do not belong to."""
    ours, ref = _boxes(tmp_path, f"min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 "
                                 f"{VAR4} step: 8")
    boxes = ref[0, 0].reshape(-1, 6, 4)  # positions × priors × corners
    max_last = boxes[:, [0, 2, 3, 4, 5, 1]]
    ratios_then_flips = boxes[:, [0, 1, 2, 4, 3, 5]]
    for wrong in (max_last, ratios_then_flips):
        assert rel_error(wrong.reshape(-1), ref[0, 0]) > 0.05
    assert np.array_equal(ours, ref.astype(np.float32))


def test_trap_sizes_truncated_to_int(tmp_path):
    """`int min_size_ = min_sizes_[s]`: the fork truncates min_size and max_size (SSD512's
    35.84 is 35), so 30.7 / 60.9 give the boxes of 30 / 60; the float sizes differ."""
    ours, _ = _boxes(tmp_path, "min_size: 30.7 max_size: 60.9 aspect_ratio: 2")
    _, as_ints = _boxes(tmp_path, "min_size: 30 max_size: 60 aspect_ratio: 2")
    assert np.array_equal(ours, as_ints.astype(np.float32))
    # the untruncated first box: (centre ∓ 30.7 / 2) / image at position 0
    cx, cy = (0.5 * 47 / 5), (0.5 * 31 / 3)
    floats = np.array([(cx - 15.35) / 47, (cy - 15.35) / 31, (cx + 15.35) / 47,
                       (cy + 15.35) / 31])
    assert rel_error(floats, ours[0, 0, :4]) > 1e-2


def test_trap_variance_layout(tmp_path):
    """Four variances repeat per box corner (v0 v1 v2 v3 v0 …); one repeats everywhere."""
    ours, ref = _boxes(tmp_path, f"min_size: 12 aspect_ratio: 2 {VAR4}")
    n = ref.shape[2]
    per_corner = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), n // 4)
    per_prior = np.repeat(np.float32([0.1, 0.1, 0.2, 0.2]), n // 4)
    assert np.array_equal(ours[0, 1], per_corner) and np.array_equal(ref[0, 1], per_corner)
    assert rel_error(per_prior, ours[0, 1]) > 0.3
    single, _ = _boxes(tmp_path, "min_size: 12 aspect_ratio: 2 variance: 0.3")
    assert np.all(single[0, 1] == np.float32(0.3))


REFUSED = {
    "no_min_size": (_prior("aspect_ratio: 2"), "min_size"),
    "two_variances": (_prior("min_size: 12 variance: 0.1 variance: 0.2"), "1 or 4 variance"),
    "three_variances": (_prior("min_size: 12 variance: 0.1 variance: 0.2 variance: 0.3"),
                        "1 or 4 variance"),
    "max_not_above_min": (_prior("min_size: 12 max_size: 12"), "greater than min_size"),
    "max_count": (_prior("min_size: 12 min_size: 20 max_size: 30"), "as many max_size"),
    "step_and_step_h": (_prior("min_size: 12 step: 8 step_h: 8 step_w: 8"), "not both"),
    "img_size_and_img_h": (_prior("min_size: 12 img_size: 8 img_h: 8 img_w: 8"), "not both"),
    "normalize_5d": (_norm(""), "N×C(×H×W)"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_with_the_layer_named(tmp_path, case):
    body, words = REFUSED[case]
    shapes = {"x": (1, 2, 3, 4, 5)} if case == "normalize_5d" else MAP
    path = tmp_path / "net.prototxt"
    path.write_text(net_text(shapes, body))
    with pytest.raises(ShapeError) as info:
        senet.load_caffe(prototxt=path)
    assert words in str(info.value) and ("'pb'" in str(info.value) or "'n'" in str(info.value))


# ----------------------------------------------------------------------------- OpenCV

def _opencv(tmp_path, text, weights, inputs):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")
    proto, model = write_net(tmp_path, text, weights)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name, value in inputs.items():
        net.setInput(value, name)
    return net.forward()


@pytest.mark.parametrize("case", ["ssd_layer", "several_sizes_no_flip_clip", "derived_step",
                                  "step_h_w_offset"])
def test_prior_box_agrees_with_opencv_dnn(tmp_path, case):
    """OpenCV's PriorBox (computed in float only) is within float rounding of the fork's
    (clip stated: OpenCV's default differs, see below)."""
    param = PRIOR[case] if "clip" in PRIOR[case] else PRIOR[case] + " clip: false"
    text = net_text(MAP, _prior(param))
    inputs = make_inputs(MAP)
    assert rel_error(_opencv(tmp_path, text, {}, inputs), reference(text, {}, inputs)["y"]) <= 1e-6


def test_opencv_departs_from_the_fork_where_the_fork_is_right(tmp_path):
    """Where OpenCV 4.x differs, the fork's source decides (the zoo nets were trained with
    it): OpenCV clips by default (PriorBoxParameter.clip defaults to false), keeps
    fractional sizes (the fork truncates them to int), and ignores img_h / img_w (the fork
    divides by them instead of the image bottom's size)."""
    inputs = make_inputs(MAP)
    for param in ("min_size: 30 max_size: 60 aspect_ratio: 2 variance: 0.1",
                  "min_size: 30.7 max_size: 60.9 aspect_ratio: 2 variance: 0.1 clip: false",
                  "min_size: 12 img_h: 50 img_w: 61 variance: 0.1 clip: false"):
        text = net_text(MAP, _prior(param))
        theirs = _opencv(tmp_path, text, {}, inputs)
        assert rel_error(theirs, reference(text, {}, inputs)["y"]) > 1e-3, param


@pytest.mark.parametrize("case", ["per_position_per_channel", "per_position_shared",
                                  "across_spatial_shared", "large_eps"])
def test_normalize_agrees_with_opencv_dnn(tmp_path, case):
    """OpenCV's NormalizeBBox; it refuses across_spatial with a per-channel scale (its
    assertion scale.total() == numPlanes), which the fork runs, so that case is not
    compared."""
    text = net_text(X, _norm(NORMALIZE[case]))
    weights = seeded_weights(text, X)
    inputs = make_inputs(X)
    assert rel_error(_opencv(tmp_path, text, weights, inputs),
                     reference(text, weights, inputs)["y"]) <= 1e-6


# ----------------------------------------------------------------------------- batch

def test_dynamic_batch_keeps_the_boxes(tmp_path):
    """PriorBox keeps a net's batch dynamic: at batch 3 the ONNX model and the exported
    program give the same 1 × 2 × K boxes (ONNX declares their axis 0 as 1, not 'batch')
    and the batch of the other outputs."""
    import onnx
    import torch
    body = (_norm("across_spatial: false channel_shared: false") + "\n" + _prior(PRIOR["ssd_layer"]).replace('top: "y"', 'top: "pb"')
            + '\nlayer { name: "c" type: "Concat" bottom: "pb" bottom: "pb" top: "c" '
              'concat_param { axis: 2 } }')
    shapes = {"x": (1, 4, 3, 5), "img": (1, 3, 31, 47)}
    text = net_text(shapes, body)
    weights = seeded_weights(text, shapes)
    proto, model = write_net(tmp_path, text, weights)
    inputs = make_inputs({"x": (3, 4, 3, 5), "img": (3, 3, 31, 47)})
    ref = reference(text, weights, inputs)
    path = convert(tmp_path, model, proto, ["y", "c"])
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in onnx.load(str(path)).graph.output}
    assert dims["c"][0] == 1 and dims["y"][0] == "batch"
    ours = run_onnx(path, inputs)
    exported = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=proto,
                             outputs=["y", "c"])
    module = torch.export.load(str(exported)).module()
    with torch.no_grad():
        y, c = module(*[torch.from_numpy(v) for v in inputs.values()])
    for name, value in (("y", ours["y"]), ("c", ours["c"]), ("y", y.numpy()), ("c", c.numpy())):
        assert value.shape == ref[name].shape and rel_error(value, ref[name]) <= TOL


# ----------------------------------------------------------------------------- zoo heads

SSD_NETS = ["faceboxes", "mobilenet_ssd", "mobilenet_ssd_voc_merged", "opencv_face_res10_ssd",
            "ssd300_vgg16_voc0712"]
# FaceBoxes was trained with sfzhang15/FaceBoxes' own PriorBox (dense anchors for min_size
# 32 and 64, (size - 1) / 2 half-sides, 21 priors for three min_sizes), which the prototxt
# cannot tell from SSD's: its mbox_priorbox is not compared, only its conv heads.
HEADS = {"faceboxes": ["mbox_loc", "mbox_conf", "mbox_conf_flatten"]}


def without_detection_output(text: str) -> str:
    """The prototxt without its DetectionOutput layer (converted by another family): senet
    checks every deploy layer is supported before outputs are chosen, and converts them
    all, so requesting the heads alone does not skip it."""
    start = re.search(r'layer\s*\{[^{}]*type:\s*"DetectionOutput"', text).start()
    depth, end = 0, start
    for end in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    return text[:start] + text[end + 1:]


@pytest.mark.parametrize("net", SSD_NETS)
def test_zoo_raw_heads(tmp_path, net):
    """Seeded weights; the blobs DetectionOutput reads match the reference in both
    emitters within 1e-4 relative (or 2.5x the reference's float32 drift, test_zoo's bound);
    the reference's shape rules and parameter count agree with senet's."""
    from tests.reference.caffe_forward import forward
    from tests.reference.prototxt_text import parse_prototxt
    from tests.reference.random_weights import make_input, make_weights
    from tests.reference.shapes import blob_shapes, deploy_net, input_shapes_of, parameter_count
    text = without_detection_output(
        require_shared("caffe_zoo", net, "deploy.prototxt").read_text())
    path = tmp_path / "heads.prototxt"
    path.write_text(text)
    deploy = deploy_net(parse_prototxt(text), {})
    shapes = input_shapes_of(deploy)
    ours = senet.load_caffe(prototxt=path)
    expected = blob_shapes(deploy)
    assert {blob: ours.shapes[ssa] for blob, ssa in ours.final_names.items()} == {
        blob: expected[blob] for blob in ours.final_names}
    assert ours.parameter_count() == parameter_count(deploy)
    seed = sum(map(ord, net))
    weights = make_weights(deploy, shapes, seed)
    x = {name: make_input(shape, seed) for name, shape in shapes.items()}
    ref = forward(deploy, weights, x)
    # mbox_conf: the logits (Concat) whose softmax is mbox_conf_flatten
    outputs = HEADS.get(net, ["mbox_loc", "mbox_conf", "mbox_conf_flatten", "mbox_priorbox"])
    onnx_out, torch_out = run_both(tmp_path, text, weights, x, outputs)
    ref32 = {}  # as in test_zoo: the bound widens to 2.5x the reference's own float32 drift
    for name in outputs:
        assert np.ptp(ref[name]) > 0, name
        for emitter, ours in (("onnx", onnx_out[name]), ("torch", torch_out[name])):
            assert ours.shape == ref[name].shape, (emitter, name)
            err = rel_error(ours, ref[name])
            if err > 1e-4 and not ref32:
                ref32.update(forward(deploy, weights, x, np.float32))
            bound = max(1e-4, 2.5 * rel_error(ref32[name], ref[name])) if ref32 else 1e-4
            if name == "mbox_conf_flatten":
                # a softmax moves each probability by at most half the largest change of
                # its logits (its Jacobian's rows sum to 2 p (1 - p) <= 1/2 in absolute
                # value); seeded logits reach ~40, so the logits' own error decides
                logits = onnx_out if emitter == "onnx" else torch_out
                shift = float(np.abs(logits["mbox_conf"] - ref["mbox_conf"]).max())
                bound = max(bound, 0.5 * shift + 1e-6)
            assert err <= bound, f"{emitter} {name}: {err:.3g} > {bound:.3g}"
