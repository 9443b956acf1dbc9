"""Every per-layer case computed by a real BVLC Caffe build (../shared/fixtures/real_caffe/
layer_cases) through senet.convert, then onnxruntime and torch.export.load: Caffe's own float32
outputs, within 1e-5 of the output's largest magnitude plus a few float32 ulps of each value.

Cases senet cannot match yet are listed in GAPS with the reason; they are strict xfails, so
one that starts passing fails until it is taken off the list.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import senet
from tests.conftest import FIXTURES, require_shared

CASES_DIR = FIXTURES / "real_caffe" / "layer_cases"
INDEX = CASES_DIR / "index.json"
CASES = ([f"{c['type']}/{c['case']}" for c in json.loads(INDEX.read_text())["cases"]]
         if INDEX.exists() else [])
RELATIVE = 1e-5
ULPS = 4

# case -> why it fails today (issue 8's work list); "onnx:" / "torch:" limit it to one emitter
GAPS: dict[str, str] = {
    "AbsVal/basic": "no AbsVal converter yet",
    "AbsVal/input_2d": "no AbsVal converter yet",
    "ArgMax/axis1_top1": "no ArgMax converter yet",
    "ArgMax/axis1_top2_out_max_val": "no ArgMax converter yet",
    "ArgMax/axis2_top3": "no ArgMax converter yet",
    "ArgMax/axis_neg1": "no ArgMax converter yet",
    "ArgMax/no_axis_2d_input": "no ArgMax converter yet",
    "ArgMax/no_axis_top1": "no ArgMax converter yet",
    "ArgMax/no_axis_top3_out_max_val": "no ArgMax converter yet",
    "ArgMax/ties_larger_index_wins": "no ArgMax converter yet",
    "ArgMax/ties_no_axis": "no ArgMax converter yet",
    "BNLL/basic": "no BNLL converter yet",
    "BNLL/large_magnitude": "no BNLL converter yet",
    "BatchReindex/permute_repeat": "no BatchReindex converter yet",
    "BatchReindex/subset": "no BatchReindex converter yet",
    "Clip/asymmetric": "no Clip converter yet",
    "Clip/minus1_1": "no Clip converter yet",
    "Clip/relu6": "no Clip converter yet",
    "Convolution/axis2_extra_batch_dim": "wrong or refused today (issue 8 lists it)",
    "Convolution/two_bottoms_shared_weights": "wrong or refused today (issue 8 lists it)",
    "Crop/axis0_all_dims": "no Crop converter yet",
    "Crop/axis1_offsets": "no Crop converter yet",
    "Crop/axis1_single_offset": "no Crop converter yet",
    "Crop/axis2_per_axis_offsets": "no Crop converter yet",
    "Crop/axis2_single_offset": "no Crop converter yet",
    "Crop/axis_neg1": "no Crop converter yet",
    "Crop/default_axis2_offset0": "no Crop converter yet",
    "Crop/fcn_score_crop": "no Crop converter yet",
    "Deconvolution/deconv3d_5d_input": "no Deconvolution converter yet",
    "Deconvolution/depthwise_group3_no_bias": "no Deconvolution converter yet",
    "Deconvolution/dilation2": "no Deconvolution converter yet",
    "Deconvolution/group2_bias": "no Deconvolution converter yet",
    "Deconvolution/k4_s2_p1_upsample": "no Deconvolution converter yet",
    "Deconvolution/kernel5_gt_stride2": "no Deconvolution converter yet",
    "Deconvolution/nonsquare_per_axis": "no Deconvolution converter yet",
    "Deconvolution/pad_crops_output": "no Deconvolution converter yet",
    "Deconvolution/stride1_pad1_same": "no Deconvolution converter yet",
    "Deconvolution/stride3_gt_kernel2": "no Deconvolution converter yet",
    "ELU/alpha_0_5": "no ELU converter yet",
    "ELU/alpha_2": "no ELU converter yet",
    "ELU/alpha_default": "no ELU converter yet",
    "Embed/bias_2d_indices": "no Embed converter yet (and its *_param is not in caffe.proto)",
    "Embed/bias_3d_indices": "no Embed converter yet (and its *_param is not in caffe.proto)",
    "Embed/boundary_indices": "no Embed converter yet (and its *_param is not in caffe.proto)",
    "Embed/fractional_indices_truncate": "no Embed converter yet (and its *_param is not in caffe.proto)",
    "Embed/no_bias_1d": "no Embed converter yet (and its *_param is not in caffe.proto)",
    "Exp/base10_scale": "no Exp converter yet",
    "Exp/base2": "no Exp converter yet",
    "Exp/base2_scale_shift": "no Exp converter yet",
    "Exp/base_e_scale_shift": "no Exp converter yet",
    "Exp/default_base_e": "no Exp converter yet",
    "Filter/nonbinary_selector": "no Filter converter yet",
    "Filter/none_selected": "no Filter converter yet",
    "Filter/one_blob": "no Filter converter yet",
    "Filter/two_blobs": "no Filter converter yet",
    "Im2col/k3_pad1_stride2": "no Im2col converter yet",
    "Im2col/nd_5d_input": "no Im2col converter yet",
    "Im2col/nonsquare_dilation": "no Im2col converter yet",
    "LSTM/t4_n2_basic": "no LSTM converter yet (and its *_param is not in caffe.proto)",
    "LSTM/t4_n2_expose_hidden": "no LSTM converter yet (and its *_param is not in caffe.proto)",
    "LSTM/t4_n2_input_4d": "no LSTM converter yet (and its *_param is not in caffe.proto)",
    "LSTM/t4_n2_restart_midsequence": "no LSTM converter yet (and its *_param is not in caffe.proto)",
    "LSTM/t4_n2_static_input": "no LSTM converter yet (and its *_param is not in caffe.proto)",
    "LSTMUnit/n3_h4": "no LSTMUnit converter yet",
    "Log/base10_scale_shift": "no Log converter yet",
    "Log/base2": "no Log converter yet",
    "Log/base_e_scale_shift": "no Log converter yet",
    "Log/default_ln": "no Log converter yet",
    "Log/shift_makes_positive": "no Log converter yet",
    "MVN/across_channels": "no MVN converter yet",
    "MVN/across_channels_mean_only": "no MVN converter yet",
    "MVN/default_per_channel": "no MVN converter yet",
    "MVN/eps_0_1": "no MVN converter yet",
    "MVN/input_2d_across_channels": "no MVN converter yet",
    "MVN/input_3d": "no MVN converter yet",
    "MVN/mean_only": "no MVN converter yet",
    "Parameter/added_to_input": "no Parameter converter yet",
    "Parameter/shape_1d": "no Parameter converter yet",
    "Parameter/shape_2x3x4": "no Parameter converter yet",
    "RNN/t4_n2_basic": "no RNN converter yet (and its *_param is not in caffe.proto)",
    "RNN/t4_n2_expose_hidden": "no RNN converter yet (and its *_param is not in caffe.proto)",
    "RNN/t4_n2_input_4d": "no RNN converter yet (and its *_param is not in caffe.proto)",
    "RNN/t4_n2_restart_midsequence": "no RNN converter yet (and its *_param is not in caffe.proto)",
    "RNN/t4_n2_static_input": "no RNN converter yet (and its *_param is not in caffe.proto)",
    "Reduction/asum_axis1": "no Reduction converter yet",
    "Reduction/asum_axis3_last": "no Reduction converter yet",
    "Reduction/mean_axis0_coeff_neg2": "no Reduction converter yet",
    "Reduction/mean_axis_neg1": "no Reduction converter yet",
    "Reduction/sum_axis0_scalar": "no Reduction converter yet",
    "Reduction/sum_axis1_coeff": "no Reduction converter yet",
    "Reduction/sumsq_axis2": "no Reduction converter yet",
    "Swish/beta_0": "no Swish converter yet",
    "Swish/beta_2_5": "no Swish converter yet",
    "Swish/beta_default": "no Swish converter yet",
    "Threshold/default_0": "no Threshold converter yet",
    "Threshold/threshold_0_5": "no Threshold converter yet",
    "Threshold/threshold_neg1": "no Threshold converter yet",
    "Tile/axis0_tiles2": "no Tile converter yet",
    "Tile/axis1_tiles3": "no Tile converter yet",
    "Tile/axis2_tiles2": "no Tile converter yet",
    "Tile/axis_neg1_tiles4": "no Tile converter yet",
}


def gap(case: str, emitter: str):
    reason = GAPS.get(case) or GAPS.get(f"{emitter}:{case}")
    return pytest.mark.xfail(reason=reason, strict=True) if reason else ()


def load_case(case: str):
    folder = require_shared("real_caffe", "layer_cases", case.split("/")[0])
    name = case.split("/")[1]
    data = np.load(folder / f"{name}.npz")
    inputs = {k[len("input__"):]: data[k] for k in data.files if k.startswith("input__")}
    outputs = {k[len("output__"):]: data[k] for k in data.files if k.startswith("output__")}
    return folder / f"{name}.caffemodel", folder / f"{name}.prototxt", inputs, outputs


def assert_caffe_equal(name: str, ours: np.ndarray, caffe: np.ndarray) -> None:
    assert ours.shape == caffe.shape, (name, ours.shape, caffe.shape)
    ours = np.asarray(ours, np.float32)
    special = ~np.isfinite(caffe) | (np.abs(caffe) == np.finfo(np.float32).max)
    np.testing.assert_array_equal(ours[special], caffe[special], err_msg=name)
    ours, caffe = ours[~special].astype(np.float64), caffe[~special].astype(np.float64)
    if not caffe.size:
        return
    bound = (RELATIVE * np.abs(caffe).max()
             + ULPS * np.spacing(np.abs(caffe).astype(np.float32)).astype(np.float64))
    worst = np.abs(ours - caffe) - bound
    k = int(np.argmax(worst))
    assert worst[k] <= 0, (f"{name}: element {k} is {ours[k]!r}, Caffe {caffe[k]!r} "
                           f"(max |ref| {np.abs(caffe).max():.3g})")


def params(emitter: str):
    return [pytest.param(case, marks=gap(case, emitter), id=case) for case in CASES] or \
        [pytest.param("(../shared absent)", id="shared-absent")]


@pytest.mark.parametrize("case", params("onnx"))
def test_onnx_equals_real_caffe(tmp_path, case):
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "onnx", tmp_path / "m.onnx", prototxt=prototxt,
                         outputs=list(outputs))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(names, feed)):
        assert_caffe_equal(name, value, outputs[name])
    assert sorted(names) == sorted(outputs)


@pytest.mark.parametrize("case", params("torch"))
def test_torch_equals_real_caffe(tmp_path, case):
    torch = pytest.importorskip("torch")
    import senet.kernels  # noqa: F401  (a bare .pt2 needs the senet ops)
    model, prototxt, inputs, outputs = load_case(case)
    path = senet.convert(model, "torch", tmp_path / "m.pt2", prototxt=prototxt,
                         outputs=list(outputs))
    module = torch.export.load(str(path)).module()
    net = senet.load_caffe(model, prototxt)
    with torch.no_grad():
        values = module(*[torch.from_numpy(inputs[name]) for name in net.inputs])
    values = values if isinstance(values, tuple) else (values,)
    assert len(values) == len(outputs)
    for name, value in zip(outputs, values):
        assert_caffe_equal(name, value.numpy(), outputs[name])
