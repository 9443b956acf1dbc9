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
    "BatchNorm/use_global_stats_false_batch_stats": "wrong or refused today (issue 8 lists it)",
    "Bias/num_axes0_scalar": "wrong or refused today (issue 8 lists it)",
    "Bias/two_bottoms_scalar": "wrong or refused today (issue 8 lists it)",
    "Dropout/inplace": "wrong or refused today (issue 8 lists it)",
    "Eltwise/max_inplace_top_is_bottom0": "wrong or refused today (issue 8 lists it)",
    "Eltwise/prod_inplace_top_is_bottom0": "wrong or refused today (issue 8 lists it)",
    "Eltwise/sum_inplace_top_is_bottom0": "wrong or refused today (issue 8 lists it)",
    "PReLU/channel_shared": "wrong or refused today (issue 8 lists it)",
    "Pooling/ave_k1_s2_empty_window": "wrong or refused today (issue 8 lists it)",
    "Pooling/max_k1_s2_empty_window": "wrong or refused today (issue 8 lists it)",
    "Pooling/max_with_mask_top": "wrong or refused today (issue 8 lists it)",
    "SPP/ave_pyramid2": "no SPP converter yet",
    "SPP/ave_pyramid3_odd": "no SPP converter yet",
    "SPP/max_pyramid1_stays_4d": "no SPP converter yet",
    "SPP/max_pyramid2_wide": "no SPP converter yet",
    "SPP/max_pyramid3": "no SPP converter yet",
    "Scale/num_axes0_scalar_bias": "wrong or refused today (issue 8 lists it)",
    "Scale/two_bottoms_scalar": "wrong or refused today (issue 8 lists it)",
    "torch:BatchReindex/permute_repeat": "torch_io gives all inputs one batch Dim; x has 3 rows, idx 4 (static/per-input batch: fixes branch)",
    "torch:BatchReindex/subset": "torch_io gives all inputs one batch Dim; x has 4 rows, idx 2 (static/per-input batch: fixes branch)",
    "torch:Bias/two_bottoms_axis1_c": "wrong or refused today (issue 8 lists it)",
    "torch:Bias/two_bottoms_axis2_hw": "wrong or refused today (issue 8 lists it)",
    "torch:Concat/axis0": "wrong or refused today (issue 8 lists it)",
    "torch:Crop/axis0_all_dims": "batch cropped: inputs' batches differ, .pt2 has one dynamic batch (fixes branch)",
    "torch:Crop/axis1_single_offset": "inputs' batches differ; the .pt2 has one dynamic batch (fixes branch)",
    "torch:Crop/axis_neg1": "inputs' batches differ; the .pt2 has one dynamic batch (fixes branch)",
    "torch:InnerProduct/axis0_all": "wrong or refused today (issue 8 lists it)",
    "torch:Input/two_tops_two_shapes": "wrong or refused today (issue 8 lists it)",
    "torch:LSTM/t4_n2_basic": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:LSTM/t4_n2_expose_hidden": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:LSTM/t4_n2_input_4d": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:LSTM/t4_n2_restart_midsequence": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:LSTM/t4_n2_static_input": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:Parameter/added_to_input": "the learned (2,3,4) blob fixes the batch at 2; torch_io exports it dynamic (static batch: fixes branch)",
    "torch:RNN/t4_n2_basic": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:RNN/t4_n2_expose_hidden": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:RNN/t4_n2_input_4d": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:RNN/t4_n2_restart_midsequence": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:RNN/t4_n2_static_input": "export makes axis 0 (T here) a dynamic batch: needs static batch (fixes)",
    "torch:Reshape/explicit_4d": "wrong or refused today (issue 8 lists it)",
    "torch:Scale/axis0_num_axes1": "wrong or refused today (issue 8 lists it)",
    "torch:Scale/two_bottoms_axis1_c": "wrong or refused today (issue 8 lists it)",
    "torch:Scale/two_bottoms_axis1_chw": "wrong or refused today (issue 8 lists it)",
    "torch:Scale/two_bottoms_axis2_hw": "wrong or refused today (issue 8 lists it)",
    "torch:Scale/two_bottoms_bias_term": "wrong or refused today (issue 8 lists it)",
    "torch:Slice/axis0_points": "wrong or refused today (issue 8 lists it)",
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
