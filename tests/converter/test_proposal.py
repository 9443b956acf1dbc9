"""py-faster-rcnn's Python layer rpn.proposal_layer.ProposalLayer: senet's ONNX and torch
emitters against the float32 reference (tests/reference/forward_proposal.py, written from
proposal_layer.py with its own NMS) on seeded score maps, the traps (the +1 pixel sizes of
NMS, min_size scaled by im_info[2]), the param_str and --rpn parsers, the refusals, and the
RPN of the zoo's Faster R-CNN nets cut at 'rois'.

Seeded scores are peaky (NMS suppresses many boxes), deltas move some boxes out of the image
and shrink some below min_size; each case checks that this happened."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

import senet
from senet.converter.rpn import RpnSettings, base_anchors, parse_param_str, rpn_settings
from senet.converter.to_onnx import build_graph, write_model
from senet.errors import SenetError, ShapeError, UsageError
from tests.converter.harness import rel_error, run_onnx, write_net
from tests.reference import forward_proposal
from tests.reference.caffe_forward import run_net
from tests.reference.prototxt_text import parse_prototxt

torch = pytest.importorskip("torch")

COORDS = 1e-4  # absolute, in pixels: exp() of the three libraries may differ in the last bit
DEFAULT = "'feat_stride': 16"
PVANET = ("{'feat_stride': 16, 'ratios': [0.333, 0.5, 0.667, 1, 1.5, 2, 3], "
          "'scales': [2, 3, 5, 9, 16, 32]}")


def proposal_text(param_str: str, anchors: int, h: int, w: int, info: int = 3,
                  tops=("rois", "scores")) -> str:
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return f'''
input: "score" input_shape {{ dim: 1 dim: {2 * anchors} dim: {h} dim: {w} }}
input: "delta" input_shape {{ dim: 1 dim: {4 * anchors} dim: {h} dim: {w} }}
input: "im_info" input_shape {{ dim: 1 dim: {info} }}
layer {{ name: "proposal" type: "Python" bottom: "score" bottom: "delta" bottom: "im_info"
  {top_lines}
  python_param {{ module: "rpn.proposal_layer" layer: "ProposalLayer"
                 param_str: "{param_str}" }} }}
'''


def seeded_inputs(anchors: int, h: int, w: int, im_info, seed: int = 0, levels: int = 0):
    """Peaky scores (cubed uniforms; `levels` > 0 rounds them to so many values, for ties),
    deltas N(0, 0.6) (some boxes leave the image, some shrink below min_size)."""
    rng = np.random.default_rng(seed)
    score = rng.random((1, 2 * anchors, h, w)) ** 3
    if levels:
        score = np.round(score * levels) / levels
    return {"score": score.astype(np.float32),
            "delta": rng.normal(0.0, 0.6, (1, 4 * anchors, h, w)).astype(np.float32),
            "im_info": np.asarray([im_info], np.float32)}


def reference(text, inputs, **settings):
    with forward_proposal.configured(**settings):
        return run_net(parse_prototxt(text), inputs, None, np.float32)


def run_senet(tmp_path, text, inputs, rpn=None):
    """(onnx outputs, torch outputs) by top name; the ONNX model passes the full checker."""
    proto, model = write_net(tmp_path, text, {})
    net = senet.load_caffe(model, proto, rpn=rpn)
    graph, initializers = build_graph(net)
    path = tmp_path / "proposal.onnx"
    write_model(path, graph, initializers)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert all(o.domain in ("", "ai.onnx") for o in onnx.load(path).opset_import)
    onnx_out = run_onnx(path, inputs)
    module = senet.to_torch(net)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[name]) for name in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    names = [public for public, _ in net.output_pairs()]
    return onnx_out, {name: v.numpy() for name, v in zip(names, values)}


def assert_same_proposals(ours: dict, ref: dict, emitter: str) -> None:
    """Same boxes in the same order (coordinates within COORDS), scores within 1e-6."""
    rois, expected = ours["rois"], ref["rois"]
    assert rois.shape == expected.shape, (emitter, rois.shape, expected.shape)
    assert np.all(rois[:, 0] == 0), emitter
    assert np.abs(rois - expected).max(initial=0) <= COORDS, emitter
    if "scores" in ref:
        assert ours["scores"].shape == ref["scores"].shape, emitter
        assert np.abs(ours["scores"] - ref["scores"]).max(initial=0) <= 1e-6, emitter


CASES = {
    # name: (param_str, anchors, H, W, im_info, cfg.TEST changes, inputs' im_info width)
    "zf_defaults": (DEFAULT, 9, 6, 7, (100, 112, 1.6), {}, 3),
    "stride32_scales": ("{'feat_stride': 32, 'scales': [2, 4, 8]}", 9, 5, 6, (150, 180, 0.5),
                        {}, 3),
    "pvanet_ratios": (PVANET, 42, 4, 5, (64, 80, 0.4, 0.4, 0.4, 0.4), {}, 6),
    "small_settings": ("{'feat_stride': 16, 'scales': [1, 2]}", 6, 8, 9, (120, 140, 1.25),
                       {"pre_nms_top_n": 60, "post_nms_top_n": 12, "nms_thresh": 0.5,
                        "min_size": 8}, 3),
    "no_top_n": ("{'feat_stride': 8, 'scales': [2, 4]}", 6, 5, 5, (40, 40, 1.0),
                 {"pre_nms_top_n": 0, "post_nms_top_n": -1, "nms_thresh": 0.6,
                  "min_size": 4}, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_proposals_match_reference(tmp_path, case):
    param_str, a, h, w, info, settings, width = CASES[case]
    text = proposal_text(param_str, a, h, w, width)
    inputs = seeded_inputs(a, h, w, info, seed=len(case))
    ref = reference(text, inputs, **settings)
    onnx_out, torch_out = run_senet(tmp_path, text, inputs, rpn=settings or None)
    assert_same_proposals(onnx_out, ref, "onnx")
    assert_same_proposals(torch_out, ref, "torch")
    # the data exercise every step: boxes clipped, dropped as small, suppressed by NMS
    rois = ref["rois"]
    assert len(rois) >= 3
    assert (rois[:, 1] == 0).any() or (rois[:, 3] == info[1] - 1).any()
    unfiltered = reference(text, inputs, **{**settings, "min_size": 0})
    assert not np.array_equal(unfiltered["rois"], rois)
    post = settings.get("post_nms_top_n", 300)
    unsuppressed = reference(text, inputs, **{**settings, "nms_thresh": 1.0})
    assert len(unsuppressed["rois"]) > len(rois) or len(rois) == post


def test_equal_scores_keep_index_order(tmp_path):
    """Scores rounded to 8 levels: many ties, which both emitters take in index order (the
    original's argsort()[::-1] leaves them unspecified), as the reference does."""
    text = proposal_text(DEFAULT, 9, 6, 7)
    inputs = seeded_inputs(9, 6, 7, (100, 112, 1.0), seed=3, levels=8)
    ref = reference(text, inputs)
    assert len(np.unique(ref["scores"])) < len(ref["scores"])
    onnx_out, torch_out = run_senet(tmp_path, text, inputs)
    assert_same_proposals(onnx_out, ref, "onnx")
    assert_same_proposals(torch_out, ref, "torch")


def test_no_box_survives(tmp_path):
    """A min_size no box reaches: rois 0×5 and scores 0×1, as the original gives."""
    text = proposal_text(DEFAULT, 9, 4, 4)
    inputs = seeded_inputs(9, 4, 4, (64, 64, 1.0))
    ref = reference(text, inputs, min_size=1000)
    assert ref["rois"].shape == (0, 5)
    onnx_out, torch_out = run_senet(tmp_path, text, inputs, rpn={"min_size": 1000})
    for ours in (onnx_out, torch_out):
        assert ours["rois"].shape == (0, 5) and ours["scores"].shape == (0, 1)


def test_rois_only_and_exported_program(tmp_path):
    """One top; the torch.export program of senet's module gives the same proposals."""
    from senet.converter.torch_io import export_program
    text = proposal_text(DEFAULT, 9, 5, 6, tops=("rois",))
    inputs = seeded_inputs(9, 5, 6, (80, 96, 1.2), seed=5)
    ref = reference(text, inputs)
    onnx_out, torch_out = run_senet(tmp_path, text, inputs)
    assert_same_proposals(onnx_out, ref, "onnx")
    assert_same_proposals(torch_out, ref, "torch")
    proto, model = write_net(tmp_path, text, {})
    program = export_program(senet.load_caffe(model, proto))
    exported = program.module()(*[torch.from_numpy(inputs[n]) for n in inputs])
    assert_same_proposals({"rois": exported.numpy()}, ref, "export")


def test_settings_survive_safetensors(tmp_path):
    from senet.converter.torch_io import load_safetensors, save_safetensors
    text = proposal_text(DEFAULT, 9, 5, 6)
    inputs = seeded_inputs(9, 5, 6, (80, 96, 1.0), seed=6)
    ref = reference(text, inputs, post_nms_top_n=4)
    proto, model = write_net(tmp_path, text, {})
    save_safetensors(senet.load_caffe(model, proto, rpn="post_nms_top_n=4"),
                     tmp_path / "p.safetensors")
    module = load_safetensors(tmp_path / "p.safetensors")
    with torch.no_grad():
        rois, scores = module(*[torch.from_numpy(inputs[n]) for n in inputs])
    assert_same_proposals({"rois": rois.numpy(), "scores": scores.numpy()}, ref, "safetensors")
    assert len(rois) == 4


# ----------------------------------------------------------------------------- traps

def test_trap_nms_without_the_pixel_offset(tmp_path, monkeypatch):
    """Small boxes (16-pixel anchors) near the threshold: IoU without the +1 pixel sizes
    keeps another set; both emitters keep py-faster-rcnn's."""
    text = proposal_text("{'feat_stride': 8, 'scales': [1]}", 3, 8, 8)
    inputs = seeded_inputs(3, 8, 8, (64, 64, 1.0), seed=7)
    settings = {"min_size": 2, "nms_thresh": 0.5}
    right = reference(text, inputs, **settings)
    monkeypatch.setattr(forward_proposal, "nms",
                        functools.partial(forward_proposal.nms, offset=0))
    wrong = reference(text, inputs, **settings)
    monkeypatch.undo()
    assert right["rois"].shape != wrong["rois"].shape or \
        np.abs(right["rois"] - wrong["rois"]).max() > 1
    onnx_out, torch_out = run_senet(tmp_path, text, inputs, rpn=settings)
    assert_same_proposals(onnx_out, right, "onnx")
    assert_same_proposals(torch_out, right, "torch")


def test_trap_min_size_not_scaled(tmp_path):
    """min_size is in the input image's pixels: the filter multiplies it by im_info[2].
    Ignoring the scale (as if it were 1) keeps other boxes."""
    text = proposal_text(DEFAULT, 9, 6, 7)
    inputs = seeded_inputs(9, 6, 7, (100, 112, 2.5), seed=8)
    right = reference(text, inputs)
    unscaled = dict(inputs, im_info=np.asarray([[100, 112, 1.0]], np.float32))
    wrong = reference(text, unscaled)
    assert right["rois"].shape != wrong["rois"].shape or \
        np.abs(right["rois"] - wrong["rois"]).max() > 1
    onnx_out, torch_out = run_senet(tmp_path, text, inputs)
    assert_same_proposals(onnx_out, right, "onnx")
    assert_same_proposals(torch_out, right, "torch")


def test_anchors_are_py_faster_rcnns():
    """generate_anchors() of py-faster-rcnn for its defaults (its printed table, 0-based), and
    the reference's loops for PVANet's ratios (round half to even: 0.5·23 = 11.5 → 12)."""
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    assert np.array_equal(base_anchors((0.5, 1, 2), (8, 16, 32)), expected)
    ratios, scales = (0.333, 0.5, 0.667, 1, 1.5, 2, 3), (2, 3, 5, 9, 16, 32)
    assert np.array_equal(base_anchors(ratios, scales),
                          forward_proposal.generate_anchors(ratios, scales))


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, expected", [
    ("'feat_stride': 16", (16, (8, 16, 32), (0.5, 1, 2))),
    ("{'feat_stride': 32, 'scales': [16, 32, 64]}", (32, (16, 32, 64), (0.5, 1, 2))),
    (PVANET, (16, (2, 3, 5, 9, 16, 32), (0.333, 0.5, 0.667, 1, 1.5, 2, 3))),
    ("feat_stride: 8, scales: [4]", (8, (4,), (0.5, 1, 2))),  # YAML's bare keys
    ("{\"feat_stride\": 16, \"ratios\": (1,)}", (16, (8, 16, 32), (1,))),
])
def test_param_str_forms(text, expected):
    p = parse_param_str(text, "proposal")
    assert (p.feat_stride, p.scales, p.ratios) == expected


@pytest.mark.parametrize("text, message", [
    ("'feat_stride': 16, 'x': __import__('os').system('touch pwned')", "literal"),
    ("__import__('os')", "literal"),
    ("'feat_stride': 16, 'num_classes': 21", r"unknown key\(s\) num_classes"),
    ("'scales': [8]", "lacks 'feat_stride'"),
    ("'feat_stride': 0", "positive"),
    ("'feat_stride': 16, 'scales': []", "empty"),
    ("'feat_stride': 16, 'ratios': ['a']", "positive"),
    ("'feat_stride': True", "positive"),
    ("[16]", "mapping"),
    ("'feat_stride': 16,, ", "literal"),
])
def test_bad_param_str_is_refused_in_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShapeError, match=message) as info:
        parse_param_str(text, "proposal")
    assert info.value.layer == "proposal"
    assert not (tmp_path / "pwned").exists()
    proto, _ = write_net(tmp_path, proposal_text(text.replace('"', "'"), 9, 4, 4), {})
    with pytest.raises(ShapeError) as loaded:
        senet.load_caffe(prototxt=proto)
    assert "proposal" in str(loaded.value) and "\n" not in str(loaded.value)


def test_rpn_settings_parser():
    assert rpn_settings(None) == RpnSettings(6000, 300, 0.7, 16)
    assert rpn_settings("pre_nms_top_n=12000, post_nms_top_n=200") == \
        RpnSettings(12000, 200, 0.7, 16)
    assert rpn_settings({"nms_thresh": "0.6", "min_size": 8}) == RpnSettings(nms_thresh=0.6,
                                                                            min_size=8.0)
    for bad, message in [("pre_nms=1", "unknown"), ("post_nms_top_n=2.5", "integer"),
                         ("nms_thresh=x", "number"), ("min_size=-1", "negative"),
                         ("nms_thresh", "NAME=VALUE"), ("min_size=inf", "finite"),
                         ("pre_nms_top_n=inf", "integer")]:
        with pytest.raises(UsageError, match=message):
            rpn_settings(bad)


def test_cli_rpn_option(tmp_path):
    """senet-convert --rpn reaches the ONNX graph (NonMaxSuppression's box limit), and a bad
    value is a usage error."""
    from tests.test_cli import assert_cli_error, run_cli
    text = proposal_text(DEFAULT, 9, 4, 4)
    proto, model = write_net(tmp_path, text, {})
    out = tmp_path / "p.onnx"
    result = run_cli(model, "--prototxt", proto, "--to", "onnx", "-o", out, "-q",
                     "--rpn", "post_nms_top_n=7,nms_thresh=0.6")
    assert result.exit_code == 0, result.output
    graph = onnx.load(out).graph
    limits = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    nms = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    assert limits[nms.input[2]].tolist() == [7]
    assert np.float32(limits[nms.input[3]][0]) == np.float32(0.6)
    assert_cli_error(run_cli(model, "--prototxt", proto, "--to", "onnx", "-o", out,
                             "--rpn", "top=3"), 2, "unknown setting")


# ----------------------------------------------------------------------------- refusals

def test_other_python_layers_are_still_refused(tmp_path):
    text = proposal_text(DEFAULT, 9, 4, 4).replace('layer: "ProposalLayer"',
                                                    'layer: "ProposalLayer2"')
    text += ('layer { name: "drop" type: "Python" bottom: "rois" top: "d" python_param { '
             'module: "spatial_dropout" layer: "SpatialDropoutLayer" } }\n')
    proto, _ = write_net(tmp_path, text, {})
    with pytest.raises(SenetError, match=r"unsupported Caffe layers: proposal \(Python "
                       r"rpn\.proposal_layer\.ProposalLayer2\), drop \(Python "
                       r"spatial_dropout\.SpatialDropoutLayer\)"):
        senet.load_caffe(prototxt=proto)


@pytest.mark.parametrize("change, message", [
    (('dim: 18', 'dim: 16'), "must be 1×18×H×W"),
    (('dim: 36', 'dim: 40'), "bbox deltas"),
    (('dim: 1 dim: 3 }', 'dim: 1 dim: 2 }'), "im_info"),
    (('input: "score" input_shape { dim: 1', 'input: "score" input_shape { dim: 2'),
     "one image"),
])
def test_bad_bottoms_are_refused(tmp_path, change, message):
    text = proposal_text(DEFAULT, 9, 4, 4).replace(*change)
    proto, _ = write_net(tmp_path, text, {})
    with pytest.raises(ShapeError, match=message) as info:
        senet.load_caffe(prototxt=proto)
    assert info.value.layer == "proposal"


def test_errors_do_not_leave_outputs(tmp_path):
    proto, model = write_net(tmp_path, proposal_text("'feat_stride': x", 9, 4, 4), {})
    with pytest.raises(ShapeError):
        senet.convert(model, "onnx", tmp_path / "never.onnx", prototxt=proto)
    assert not (tmp_path / "never.onnx").exists()


# ----------------------------------------------------------------------------- zoo RPNs

def _rpn_part(net: str) -> str:
    """The zoo net's prototxt up to its proposal layer (the RCNN head needs ROIPooling)."""
    from tests.converter.test_zoo import prototxt_of
    text = prototxt_of(net).read_text()
    marker = "#========= RCNN ============"
    assert marker in text, net  # the committed file changed
    return text[:text.index(marker)]


def _tame_rpn_heads(weights, ref) -> None:
    """Seeded He-normal heads give deltas of std ~100 (exp overflows) and saturated scores:
    rescale rpn_bbox_pred (by a power of two, exact) to deltas of std ~0.5 with dw, dh shifted
    by −1 (boxes a third of their anchors, so that they fit the small image), and
    rpn_cls_score to logits of std ~2 (peaky scores, not all 0 or 1)."""
    for layer, blob, target in (("rpn_bbox_pred", "rpn_bbox_pred", 0.5),
                                ("rpn_cls_score", "rpn_cls_score", 2.0)):
        factor = np.float32(2.0 ** np.round(np.log2(target / ref[blob].std())))
        weight, bias = weights[layer]
        weights[layer] = [weight * factor, bias * factor]
    bias = weights["rpn_bbox_pred"][1].reshape(-1, 4)
    bias[:, 2:] -= np.float32(1)


@pytest.mark.parametrize("net, size", [("faster_rcnn_zf_voc", (1, 3, 128, 160)),
                                       ("faster_rcnn_vgg16_voc", (1, 3, 96, 128))])
def test_zoo_rpn_cut_at_rois(tmp_path, net, size):
    """The RPN of a zoo Faster R-CNN with seeded weights (heads tamed, see above) at a small
    input: the heads within 1e-4 of the float64 reference, and the rois equal to the
    reference layer's on the heads each backend computed, and to the float64 reference's
    own, box for box."""
    from tests.converter.harness import convert
    from tests.reference.caffe_forward import forward
    from tests.reference.random_weights import make_input, make_weights
    from tests.reference.shapes import deploy_net
    text = _rpn_part(net)
    shapes = {"data": size, "im_info": (1, 3)}
    deploy = deploy_net(parse_prototxt(text), shapes)
    x = {"data": make_input(size, 11),
         "im_info": np.asarray([[size[2], size[3], 1.5]], np.float32)}
    weights = make_weights(deploy, shapes, 11, inputs=x)
    _tame_rpn_heads(weights, forward(deploy, weights, x))
    ref = forward(deploy, weights, x)
    heads = ["rpn_cls_prob_reshape", "rpn_bbox_pred"]
    proto, caffemodel = write_net(tmp_path, text, weights, "rpn")
    ours = {"onnx": run_onnx(convert(tmp_path, caffemodel, proto, heads + ["rois"], shapes),
                             x)}
    module = senet.to_torch(senet.load_caffe(caffemodel, proto, input_shape=shapes),
                            outputs=heads + ["rois"])
    with torch.no_grad():
        values = module(*[torch.from_numpy(x[n]) for n in ("data", "im_info")])
    ours["torch"] = dict(zip(heads + ["rois"], (v.numpy() for v in values)))
    layer = proposal_text(DEFAULT, 9, *ref["rpn_bbox_pred"].shape[2:], tops=("rois",))
    assert len(ref["rois"]) >= 10
    unsuppressed = reference(layer, {"score": ref[heads[0]].astype(np.float32),
                                     "delta": ref[heads[1]].astype(np.float32),
                                     "im_info": x["im_info"]}, nms_thresh=1.0)
    assert len(unsuppressed["rois"]) > len(ref["rois"])  # NMS did suppress boxes
    for emitter, out in ours.items():
        for head in heads:
            assert rel_error(out[head], ref[head]) <= 1e-4, (emitter, head)
        on_heads = reference(layer, {"score": out[heads[0]], "delta": out[heads[1]],
                                     "im_info": x["im_info"]})
        assert_same_proposals(out, on_heads, emitter)
        assert out["rois"].shape == ref["rois"].shape, emitter
        assert np.abs(out["rois"] - ref["rois"]).max() <= 1e-3, emitter
