"""Every public net of ../shared/fixtures/caffe_zoo, read as its authors committed it.

Per net, two tests (ids = the net's folder name):
- ``test_inspect``: `senet.inspect` on the prototxt alone prints the net; its inputs are those
  SOURCE.md lists, and every blob shape and the parameter count equal the reference's own
  deploy extraction and shape rules (tests/reference/shapes.py), at the declared size.
- ``test_converts_exactly``: seeded weights (BatchNorm statistics taken from real activations)
  written into a caffemodel by senet's writer; the ONNX model (onnxruntime) and the torch
  module give every default output within 1e-4 relative of the float64 reference, or within
  2.5x the float32 drift of the reference itself. Big nets run at a smaller input (SMALL),
  with their own structure.

Nets that use layers or fields senet does not have yet are strict xfails with senet's own
message (GAPS); remove an entry when its layers land.
"""

from __future__ import annotations

import numpy as np
import pytest

import senet
from senet.converter.load import load_net
from senet.errors import SenetError
from tests.conftest import require_shared
from tests.converter.harness import convert, rel_error, run_onnx, write_net
from tests.reference.caffe_forward import forward
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input, make_weights
from tests.reference.shapes import blob_shapes, deploy_net, input_shapes_of, parameter_count

BOUND = 1e-4

NETS = [
    "age_net_gillevi", "air101_soeaver", "attention92", "bayesian_segnet_camvid",
    "bvlc_googlenet", "bvlc_reference_caffenet", "caffenet_full_conv", "cifar10_full",
    "colorization_v2", "cpm_flic", "cpm_person_mpi", "dan_alignment_snps",
    "deeplab_v1_largefov", "deeplab_v2_vgg16_aspp", "densenet121_soeaver",
    "densenet161_shicai", "densenet201_shicai", "dpn92_soeaver", "enet_cityscapes_bn",
    "faceboxes", "fast_rcnn_vgg_cnn_m_1024_voc", "faster_rcnn_inception_v4_fpn_soeaver",
    "faster_rcnn_vgg16_voc", "faster_rcnn_zf_voc", "fcn16s_voc", "fcn32s_nyud_color_hha",
    "fcn32s_voc_deploy_snps", "fcn8s_atonce_deploy_snps", "fcn_alexnet_voc",
    "finetune_flickr_style", "hed_bsds", "icnet_cityscapes", "inception_v1_tf_soeaver",
    "inception_v2_soeaver", "inception_v4_soeaver", "lightcnn_A", "lightcnn_C",
    "lrcn_activity_lstm", "lstm_lm_coco", "mnist_lenet", "mobilenet_ssd",
    "mobilenet_ssd_voc_merged", "mobilenet_v1_shicai", "mobilenet_v2_shicai",
    "mobilenet_v3_large_snps", "mtcnn_det1", "mtcnn_det3", "mtcnn_det4",
    "opencv_face_res10_ssd", "openpose_body25", "openpose_face", "openpose_hand",
    "places365_alexnet", "places365_googlenet", "places365_resnet152_hybrid1365",
    "places365_vgg16", "pspnet101_voc2012", "pspnet50_ade20k", "pvanet_frcnn",
    "rednet_denoiser_snps", "resnet101_v2_soeaver", "resnet152_kaiminghe",
    "resnet50_kaiminghe", "resnext50_32x4d_soeaver", "segnet_basic_camvid", "segnet_camvid",
    "segnet_pascal", "shufflenet_v1_1x_g3", "sphereface20", "sphereface64", "squeezenet_v1.1",
    "squeezenext_1.0_23", "ssd300_vgg16_voc0712", "unet_phseg_v5", "vgg16_ilsvrc_v1format",
    "vgg16_tf_soeaver", "vgg19bn_pytorch_soeaver", "vnet_3d", "xception_dw_soeaver",
    "xception_soeaver", "yolov1_tiny", "yolov2_intel", "yolov3_spp", "yolov3_tiny",
]

# Inputs nothing in the file sizes (data layers reading a data set): the data sets' sizes.
UNDECLARED = {
    "bayesian_segnet_camvid": {"data": (1, 3, 360, 480)},
    "segnet_basic_camvid": {"data": (1, 3, 360, 480)},
    "segnet_camvid": {"data": (1, 3, 360, 480)},
    "fcn16s_voc": {"data": (1, 3, 500, 500)},
    "fcn_alexnet_voc": {"data": (1, 3, 500, 500)},
    "fcn32s_nyud_color_hha": {"color": (1, 3, 425, 560), "hha": (1, 3, 425, 560)},
}

# The exactness test's inputs: batch 1, the image sides scaled by the smallest of 1/4, 3/8,
# ... 7/8, 1 at which the net still shapes (fixed pooling kernels and fc sizes decide).
# The FCNs pad their first convolution by 100, so 32x32 inputs still cover every crop.
# OpenPose's placeholder sizes (1x1, 16x16) are replaced by a real one. A net not listed
# runs at batch 1 and its declared size.
SMALL: dict[str, dict[str, tuple[int, ...]]] = {
    "age_net_gillevi": {'data': (1, 3, 57, 57)},
    "bvlc_googlenet": {'data': (1, 3, 224, 224)},
    "bvlc_reference_caffenet": {'data': (1, 3, 57, 57)},
    "caffenet_full_conv": {'data': (1, 3, 226, 226)},
    "cifar10_full": {'data': (1, 3, 8, 8)},
    "colorization_v2": {"data_l": (1, 1, 56, 56)},
    "cpm_flic": {'data': (1, 4, 184, 184)},
    "cpm_person_mpi": {'image': (1, 3, 94, 164)},
    "fcn16s_voc": {"data": (1, 3, 32, 32)},
    "fcn32s_nyud_color_hha": {"color": (1, 3, 32, 40), "hha": (1, 3, 32, 40)},
    "fcn32s_voc_deploy_snps": {"data": (1, 3, 32, 32)},
    "fcn8s_atonce_deploy_snps": {"data": (1, 3, 32, 32)},
    "fcn_alexnet_voc": {"data": (1, 3, 32, 32)},
    "hed_bsds": {"data": (1, 3, 125, 125)},
    "rednet_denoiser_snps": {"data": (1, 3, 64, 64)},
    "unet_phseg_v5": {"data": (1, 1, 222, 446)},
    "finetune_flickr_style": {'data': (1, 3, 57, 57)},
    "inception_v1_tf_soeaver": {'data': (1, 3, 56, 56)},
    "inception_v2_soeaver": {'data': (1, 3, 173, 173)},
    "inception_v4_soeaver": {'data': (1, 3, 75, 75)},
    "lightcnn_A": {'data': (1, 1, 64, 64)},
    "lightcnn_C": {'data': (1, 1, 32, 32)},
    "mnist_lenet": {'data': (1, 1, 14, 14)},
    "mobilenet_v1_shicai": {'data': (1, 3, 56, 56)},
    "mobilenet_v2_shicai": {'data': (1, 3, 56, 56)},
    "mtcnn_det1": {'data': (1, 3, 12, 12)},
    "mtcnn_det3": {'data': (1, 3, 30, 30)},
    "mtcnn_det4": {'data': (1, 15, 15, 15)},
    "openpose_body25": {"image": (1, 3, 64, 64)},
    "openpose_face": {"image": (1, 3, 64, 64)},
    "openpose_hand": {"image": (1, 3, 64, 64)},
    "places365_alexnet": {'data': (1, 3, 57, 57)},
    "places365_googlenet": {'data': (1, 3, 224, 224)},
    "places365_resnet152_hybrid1365": {'data': (1, 3, 196, 196)},
    "places365_vgg16": {'data': (1, 3, 56, 56)},
    "resnet101_v2_soeaver": {'data': (1, 3, 56, 56)},
    "resnet152_kaiminghe": {'data': (1, 3, 196, 196)},
    "resnet50_kaiminghe": {'data': (1, 3, 196, 196)},
    "sphereface20": {'data': (1, 3, 28, 24)},
    "sphereface64": {'data': (1, 3, 28, 24)},
    "squeezenet_v1.1": {'data': (1, 3, 57, 57)},
    "vgg16_ilsvrc_v1format": {'data': (1, 3, 56, 56)},
    "vgg16_tf_soeaver": {'data': (1, 3, 196, 196)},
    "vgg19bn_pytorch_soeaver": {'data': (1, 3, 56, 56)},
    "xception_soeaver": {'data': (1, 3, 75, 75)},
    "yolov1_tiny": {'data': (1, 3, 112, 112)},
}

# Nets senet cannot read yet: senet's own message (shortened): fork layers of issue 10
# (SSD, R-CNN), Python layers, and files Caffe itself would refuse.
GAPS: dict[str, str] = {
    "bayesian_segnet_camvid":
        "layer 'encdrop3': sample_weights_test: true (Bayesian SegNet's Monte Carlo dropout) "
        "draws a new random mask on every test pass, which no fixed model reproduces "
        "(sample_weights_test: false gives the weight-averaged net)",
    "dan_alignment_snps":
        "unsupported Caffe layers: Stage1/S1_Fc1/batchnorm/mul_1 (Python eltwise.Eltwise), "
        "Stage1/S1_Fc1/batchnorm/add_1 (Python eltwise.Eltwise), "
        "Stage2/resize_images/ResizeNearestNeighbor (ResizeNearestNeighbor), "
        "Stage2/batch_normalization_9/batchnorm/mul_1 (Python eltwise.Eltwise), ...",
    "deeplab_v1_largefov":
        "line 400: '    num_output: ${NUM_LABELS}': Couldn't parse integer: $",
    "enet_cityscapes_bn":
        "unsupported Caffe layers: drop1_0_3 (Python spatial_dropout.SpatialDropoutLayer), "
        "drop1_1_3 (Python spatial_dropout.SpatialDropoutLayer), drop1_2_3 (Python "
        "spatial_dropout.SpatialDropoutLayer), drop1_3_3 (Python "
        "spatial_dropout.SpatialDropoutLayer), ...",
    "faceboxes":
        "unsupported Caffe layers: inception_a3_concat_mbox_priorbox (PriorBox), "
        "conv3_2_mbox_priorbox (PriorBox), conv4_2_mbox_priorbox (PriorBox)",
    "fast_rcnn_vgg_cnn_m_1024_voc":
        "unsupported Caffe layers: roi_pool5 (ROIPooling)",
    "faster_rcnn_inception_v4_fpn_soeaver":
        "unsupported Caffe layers: proposal_p5 (Python rpn.proposal_layer.ProposalLayer), "
        "proposal_p4 (Python rpn.proposal_layer.ProposalLayer), proposal_p3 (Python "
        "rpn.proposal_layer.ProposalLayer), proposal_p2 (Python "
        "rpn.proposal_layer.ProposalLayer), roi_pool4 (ROIPooling), roi_pool8 (ROIPooling), ...",
    "faster_rcnn_vgg16_voc":
        "unsupported Caffe layers: proposal (Python rpn.proposal_layer.ProposalLayer), "
        "roi_pool5 (ROIPooling)",
    "faster_rcnn_zf_voc":
        "unsupported Caffe layers: proposal (Python rpn.proposal_layer.ProposalLayer), "
        "roi_pool_conv5 (ROIPooling)",
    "mobilenet_ssd":
        "unsupported Caffe layers: conv11_mbox_priorbox (PriorBox), conv13_mbox_priorbox "
        "(PriorBox), conv14_2_mbox_priorbox (PriorBox), conv15_2_mbox_priorbox (PriorBox), "
        "conv16_2_mbox_priorbox (PriorBox), conv17_2_mbox_priorbox (PriorBox)",
    "mobilenet_ssd_voc_merged":
        "unsupported Caffe layers: conv11_mbox_priorbox (PriorBox), conv13_mbox_priorbox "
        "(PriorBox), conv14_2_mbox_priorbox (PriorBox), conv15_2_mbox_priorbox (PriorBox), "
        "conv16_2_mbox_priorbox (PriorBox), conv17_2_mbox_priorbox (PriorBox)",
    "opencv_face_res10_ssd":
        "unsupported Caffe layers: conv4_3_norm (Normalize), conv4_3_norm_mbox_priorbox "
        "(PriorBox), fc7_mbox_priorbox (PriorBox), conv6_2_mbox_priorbox (PriorBox), "
        "conv7_2_mbox_priorbox (PriorBox), conv8_2_mbox_priorbox (PriorBox), "
        "conv9_2_mbox_priorbox (PriorBox)",
    "pvanet_frcnn":
        "unsupported Caffe layers: proposal (Python rpn.proposal_layer.ProposalLayer), "
        "roi_pool_conv5 (ROIPooling)",
    "ssd300_vgg16_voc0712":
        "unsupported Caffe layers: conv4_3_norm (Normalize), conv4_3_norm_mbox_priorbox "
        "(PriorBox), fc7_mbox_priorbox (PriorBox), conv6_2_mbox_priorbox (PriorBox), "
        "conv7_2_mbox_priorbox (PriorBox), conv8_2_mbox_priorbox (PriorBox), "
        "conv9_2_mbox_priorbox (PriorBox)",
    "yolov3_tiny":
        "layer 'layer21-route': bottom[1] [1, 256, 26, 26] does not fit bottom[0] [1, 128, 24, "
        "24] outside axis 1",
}
# Nets whose Reshape layers fix the input size: the exactness test runs them smaller by
# rewriting those sizes, and only those, in the committed text (test_inspect reads it as is).
RESIZED: dict[str, list[tuple[str, str]]] = {
    # LRCN: 16 frames x 10 streams of 227x227 -> 2 x 2 (the LSTM still carries state)
    "lrcn_activity_lstm": [("input_dim: 160", "input_dim: 4"),
                           ("dim: 16\n      dim: 10", "dim: 2\n      dim: 2")],
    # V-Net: 128x128x64 -> 16x16x16 (four stride-2 stages still leave 1x1x1)
    "vnet_3d": [("dim: 128 dim: 128 dim: 64", "dim: 16 dim: 16 dim: 16"),
                ("dim: 1048576", "dim: 4096"),
                ("dim: 128\n        dim: 128\n        dim: 64",
                 "dim: 16\n        dim: 16\n        dim: 16")],
}
# Inputs that are no images: word indices (Embed) and sequence-continuation markers.
SEQUENCE_INPUTS = {
    "lstm_lm_coco": {"input_sentence": 8801, "cont_sentence": 2},
    "lrcn_activity_lstm": {"clip_markers": 2},
}


def exactness_text(net: str) -> str:
    text = prototxt_of(net).read_text()
    for old, new in RESIZED.get(net, []):
        assert old in text, (net, old)  # the committed file changed: update RESIZED
        text = text.replace(old, new)
    return text


def make_inputs(net: str, shapes: dict[str, tuple[int, ...]], seed: int):
    """Image-like inputs, except integer indices below n for SEQUENCE_INPUTS (markers 0/1,
    the first step 0 as Caffe's sequence start)."""
    out = {}
    for k, (name, shape) in enumerate(shapes.items()):
        limit = SEQUENCE_INPUTS.get(net, {}).get(name)
        if limit is None:
            out[name] = make_input(shape, seed + k)
            continue
        values = np.random.default_rng(seed + k).integers(0, limit, shape)
        if limit == 2:
            values.reshape(shape[0], -1)[0] = 0
        out[name] = values.astype(np.float32)
    return out


def prototxt_of(net: str):
    return require_shared("caffe_zoo", net, "deploy.prototxt")


def source_inputs(net: str) -> dict[str, tuple[tuple[int, ...] | None, str]]:
    """SOURCE.md's input column for a net: name -> (shape or None, the type of the data
    layer giving it, "" for a declared input)."""
    table = require_shared("caffe_zoo", "SOURCE.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| {net} |"))
    column = row.split("|")[4].strip()
    out = {}
    for entry in column.split(";"):
        name, _, dims = entry.strip().partition(" ")
        kind, _, name = name.rpartition(":")
        out[name] = (None if dims.startswith("?") else
                     tuple(int(d) for d in dims.split("x")), kind)
    return out


def declared_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Input shapes as SOURCE.md (or UNDECLARED) gives them, for the reference's deploy net:
    a data layer's at batch 1 (the data set's batch is no property of the net) unless the
    layer declares the blob (DummyData, MemoryData)."""
    shapes = dict(UNDECLARED.get(net, {}))
    for name, (shape, kind) in source_inputs(net).items():
        if shape is not None and kind and kind not in ("DummyData", "MemoryData"):
            shapes[name] = (1,) + shape[1:]
    return shapes


def reference_deploy(net: str, shapes: dict[str, tuple[int, ...]] | None = None,
                     text: str | None = None):
    """The reference's deploy net of a zoo file (or of `text`), inputs of `shapes` (default:
    declared)."""
    text = prototxt_of(net).read_text() if text is None else text
    return text, deploy_net(parse_prototxt(text), shapes or declared_shapes(net))


def small_shapes(net: str, full: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The exactness test's inputs: SMALL's, else the declared ones at batch 1 (inputs that
    are not images keep their shape)."""
    if net in SMALL:
        return SMALL[net]
    return {name: (1,) + shape[1:] if len(shape) >= 4 else shape
            for name, shape in full.items()}


def check_inspect(net: str) -> None:
    given = UNDECLARED.get(net)
    printed = senet.inspect(prototxt_of(net), input_shape=given)
    ours = senet.load_caffe(prototxt=prototxt_of(net), input_shape=given)
    assert printed.startswith("net: ") and "parameters: " in printed
    deploy = reference_deploy(net)[1]
    assert dict(ours.inputs) == input_shapes_of(deploy)
    for name in source_inputs(net):
        if "label" not in name:  # only losses read labels: no input of inference
            assert name in ours.inputs, (name, list(ours.inputs))
    expected = blob_shapes(deploy)
    wrong = {blob: (ours.shapes[ssa], expected.get(blob))
             for blob, ssa in ours.final_names.items() if ours.shapes[ssa] != expected.get(blob)}
    assert not wrong, f"blob shapes (senet, reference): {dict(list(wrong.items())[:5])}"
    assert ours.parameter_count() == parameter_count(deploy)
    assert f"parameters: {parameter_count(deploy):,} " in printed


def check_exact(tmp_path, net: str) -> dict[str, float]:
    """Convert with seeded weights at the test's size; the relative error of each default
    output per emitter, each checked against its bound."""
    senet.load_caffe(prototxt=prototxt_of(net), input_shape=UNDECLARED.get(net))  # readable?
    text = exactness_text(net)
    declared = input_shapes_of(reference_deploy(net, text=text)[1])
    shapes = declared if net in RESIZED else small_shapes(net, declared)
    text, deploy = reference_deploy(net, shapes, text)
    seed = sum(map(ord, net))
    x = make_inputs(net, shapes, seed)
    # calibrated on images of the net's batch, except where the batch is fixed or the
    # inputs are no images: there on the inputs themselves
    special = net in RESIZED or net in SEQUENCE_INPUTS
    weights = make_weights(deploy, shapes, seed, inputs=x if special else None)
    ref64 = forward(deploy, weights, x)
    ref32 = {}  # the float32 run measures rounding drift; made only when an error needs it
    proto, caffemodel = write_net(tmp_path, text, weights, "zoo")
    loaded = load_net(str(caffemodel), str(proto), shapes)
    outputs = compared_blobs(loaded)
    results = {"onnx": run_onnx(convert(tmp_path, caffemodel, proto, outputs, shapes), x),
               "torch": _run_torch(loaded, outputs, x)}
    for name in outputs:  # a constant output (dead activations) would prove nothing
        assert np.ptp(ref64[name]) > 0, f"{name}: the reference output is constant"
    errors = {}
    for emitter, ours in results.items():
        for name in outputs:
            assert ours[name].shape == ref64[name].shape, (emitter, name, ours[name].shape)
            err = rel_error(ours[name], ref64[name])
            if err > BOUND and not ref32:
                ref32.update(forward(deploy, weights, x, np.float32))
            bound = max(BOUND, 2.5 * rel_error(ref32[name], ref64[name])) if ref32 else BOUND
            assert err <= bound, f"{emitter} {name}: {err:.3g} > bound {bound:.3g}"
            errors[f"{emitter}:{name}"] = err
    return errors


def compared_blobs(net) -> list[str]:
    """The net's default outputs, and the logits under each Softmax output: seeded logits
    are often large, so the probabilities alone would hide errors in a saturated Softmax."""
    producers = net.producers()
    outputs = [public for public, _ in net.output_pairs()]
    logits = [net.caffe_name(producers[ssa].bottoms[0]) for _, ssa in net.output_pairs()
              if producers.get(ssa) is not None and producers[ssa].type == "Softmax"]
    return outputs + [name for name in logits if name not in outputs]


def _run_torch(net, outputs, x) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    module = senet.to_torch(net, outputs=outputs)
    with torch.no_grad():
        values = module(*[torch.from_numpy(x[name]) for name in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    return {name: value.numpy() for name, value in zip(outputs, values)}


def _params():
    """One param per net; a GAPS one is a strict xfail failing with senet's error."""
    return [pytest.param(net, id=net, marks=pytest.mark.xfail(
                reason=GAPS[net], strict=True, raises=SenetError) if net in GAPS else ())
            for net in NETS]


@pytest.mark.parametrize("net", _params())
def test_inspect(net):
    check_inspect(net)


@pytest.mark.parametrize("net", _params())
def test_converts_exactly(tmp_path, net):
    check_exact(tmp_path, net)


def test_every_zoo_net_has_a_test():
    folders = sorted(p.name for p in require_shared("caffe_zoo").iterdir() if p.is_dir())
    assert folders == sorted(NETS)
