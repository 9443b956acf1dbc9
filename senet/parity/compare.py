"""Blob-by-blob parity between two forms of one model (.caffemodel, .onnx, .pt2).

Both forms run on the same input (seeded random values of the model's input shape, or an image
preprocessed like the model's training data), and every blob both expose is compared:

* a ``.caffemodel`` is converted to ONNX with *every* Caffe blob as an output (in-place blobs:
  their value after the last layer that writes them) and run with onnxruntime;
* an ``.onnx`` file gets all its intermediate node outputs added as graph outputs (senet names
  them after the Caffe blobs);
* a ``.pt2`` program exposes only its outputs, named after their Caffe blobs when senet wrote
  it (its ``senet.json`` extra file), else matched by position with the other form's outputs.

The measure is the relative difference ``max|a - b| / max|a|`` (``a`` the first form), with the
absolute ``max|a - b|`` beside it. The first shared blob in layer order whose relative
difference exceeds the tolerance is named.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from senet.errors import UsageError
from senet.manifest import Manifest, recognise
from senet.parity.runners import WeightsMismatchError, weights_format

DEFAULT_TOLERANCE = 1e-4


@dataclass
class Form:
    """One converted form: its blobs in layer order on one input."""

    path: Path
    kind: str
    input_shape: tuple[int, ...] | None
    outputs: list[str]  # the model's own outputs (for matching a .pt2 by position)
    run: object = field(repr=False)  # input array -> {name: array}, in layer order
    net: object = field(default=None, repr=False)


@dataclass(frozen=True)
class BlobDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    exceeds: bool
    note: str = ""


@dataclass
class Comparison:
    rows: list[BlobDiff]
    only_a: list[str]
    only_b: list[str]
    tolerance: float
    input_desc: str

    @property
    def first_exceeding(self) -> BlobDiff | None:
        return next((row for row in self.rows if row.exceeds), None)


def _ort_session(model_bytes_or_path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def _session_runner(session, names: list[str]):
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {input_name: x})))
    return run


def caffemodel_form(path: Path, prototxt: str | None = None) -> Form:
    from senet.converter.load import load_net
    from senet.converter.to_onnx import build_graph, write_model
    net = load_net(str(path), prototxt)
    blobs = net.final_blobs()
    model, initializers = build_graph(net, blobs)
    with tempfile.TemporaryDirectory(prefix="senet-compare-") as folder:
        onnx_path = Path(folder) / "all_blobs.onnx"
        write_model(onnx_path, model, initializers, source=net.weight_file)
        session = _ort_session(str(onnx_path))
    outputs = [net.caffe_name(o) for o in net.default_outputs()]
    shape = next(iter(net.inputs.values()))
    return Form(path, "caffemodel", tuple(shape), outputs, _session_runner(session, blobs), net)


def onnx_form(path: Path) -> Form:
    import onnx
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UsageError(f"not a readable ONNX file ({type(exc).__name__})",
                         where=str(path)) from None
    outputs = [o.name for o in model.graph.output]
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims) or None
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    declared = set(outputs)
    names = []
    for node in model.graph.node:
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT:
                names.append(out)
                if out not in declared:
                    model.graph.output.append(
                        onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="senet-compare-") as folder:
        exposed = Path(folder) / "all_blobs.onnx"
        onnx.save(model, str(exposed))
        session = _ort_session(str(exposed))
    return Form(path, "onnx", shape, outputs, _session_runner(session, names))


def pt2_form(path: Path) -> Form:
    try:
        import torch
    except ImportError:
        raise UsageError("comparing a .pt2 program needs torch") from None
    try:
        import senet.kernels  # noqa: F401  (the senet:: ops a program may call)
    except ImportError:
        pass
    extra = {"senet.json": ""}
    try:
        module = torch.export.load(str(path), extra_files=extra).module()
    except Exception as exc:
        raise UsageError(f"torch cannot load the program: {' '.join(str(exc).split())}",
                         where=str(path)) from None
    names = _pt2_output_names(extra["senet.json"])

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        if isinstance(out, dict):
            return {k: v.float().numpy() for k, v in out.items()}
        tensors = list(out) if isinstance(out, (tuple, list)) else [out]
        keys = names if names and len(names) == len(tensors) else \
            [f"output:{k}" for k in range(len(tensors))]
        return {key: t.float().numpy() for key, t in zip(keys, tensors)}
    return Form(path, "pt2", None, names or [], run)


def _pt2_output_names(text) -> list[str] | None:
    """The Caffe blob names senet's .pt2 writer records in the extra file senet.json."""
    import json
    try:
        names = json.loads(text or "null")
    except (ValueError, TypeError):
        return None
    outputs = names.get("outputs") if isinstance(names, dict) else None
    return [str(o) for o in outputs] if isinstance(outputs, list) else None


def load_form(path: str | os.PathLike, prototxt: str | None = None) -> Form:
    path = Path(path)
    if not path.is_file():
        raise UsageError("file to compare does not exist", where=str(path))
    kind = weights_format(path)
    if kind == "caffemodel":
        return caffemodel_form(path, prototxt)
    return onnx_form(path) if kind == "onnx" else pt2_form(path)


def make_input(a: Form, b: Form, entry=None, image: str | None = None,
               seed: int = 0) -> tuple[np.ndarray, str]:
    """The shared input: an image preprocessed for the model, or seeded random values in the
    range of Caffe-preprocessed pixels."""
    shape = a.input_shape or b.input_shape or (tuple(entry.input_shape) if entry else None)
    if shape is None:
        raise UsageError("cannot tell the input shape of two .pt2 programs", hint="pass --model")
    shape = (1, *shape[1:])
    if image is None:
        rng = np.random.default_rng(seed)
        return rng.uniform(-128.0, 128.0, shape).astype(np.float32), f"random (seed {seed})"
    from senet.parity.loader import Preprocessing
    if entry is not None:
        pre = Preprocessing.of(entry)
    else:
        crop = shape[-1]
        pre = Preprocessing(resize_shorter=max(crop, round(crop * 256 / 224)), crop=crop)
    if pre.crop != shape[-1] or pre.crop != shape[-2]:
        raise UsageError(f"the model's input is {shape[-2]}x{shape[-1]} but its preprocessing "
                         f"crops {pre.crop}x{pre.crop}")
    return pre(image)[None], f"image {Path(image).name}"


def diff(name: str, a: np.ndarray, b: np.ndarray, tolerance: float) -> BlobDiff:
    if a.shape != b.shape:
        if a.size == b.size:  # e.g. N x C against N x C x 1 x 1
            b = b.reshape(a.shape)
        else:
            return BlobDiff(name, tuple(a.shape), float("inf"), float("inf"), True,
                            f"shape {list(a.shape)} vs {list(b.shape)}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    delta = np.abs(a64 - b64)
    max_abs = float(delta.max()) if delta.size else 0.0
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not np.isfinite(a64).all() or not np.isfinite(b64).all():
        return BlobDiff(name, tuple(a.shape), max_abs, max_rel, True, "non-finite values")
    return BlobDiff(name, tuple(a.shape), max_abs, max_rel, max_rel > tolerance)


def compare(path_a: str, path_b: str, tolerance: float = DEFAULT_TOLERANCE, entry=None,
            image: str | None = None, seed: int = 0, prototxt: str | None = None,
            manifest: Manifest | None = None) -> Comparison:
    """Run both forms on one input and diff every blob they share, in A's layer order.
    Without `entry`, a caffemodel is recognised among `manifest`'s models (None: shipped)."""
    if not tolerance >= 0:
        raise UsageError(f"--tolerance must be 0 or more, got {tolerance}")
    a, b = load_form(path_a, prototxt), load_form(path_b, prototxt)
    if a.input_shape and b.input_shape and a.input_shape[1:] != b.input_shape[1:]:
        raise WeightsMismatchError(
            f"{Path(path_a).name} takes {'x'.join(map(str, a.input_shape[1:]))} inputs, "
            f"{Path(path_b).name} takes {'x'.join(map(str, b.input_shape[1:]))}",
            hint="are they forms of the same model?")
    if entry is None:
        entry = next((recognise(f.net, manifest) for f in (a, b) if f.net is not None), None)
    x, desc = make_input(a, b, entry, image, seed)
    blobs_a, blobs_b = a.run(x), b.run(x)
    blobs_a, blobs_b = _match_positional(a, blobs_a, b, blobs_b)
    order = list(blobs_a) if a.kind != "pt2" else list(blobs_b)
    shared = [n for n in order if n in blobs_a and n in blobs_b]
    if not shared:
        raise WeightsMismatchError(f"{Path(path_a).name} and {Path(path_b).name} share no blob "
                                   "name", hint="are they forms of the same model?")
    rows = [diff(n, blobs_a[n], blobs_b[n], tolerance) for n in shared]
    return Comparison(rows, [n for n in blobs_a if n not in blobs_b],
                      [n for n in blobs_b if n not in blobs_a], tolerance, desc)


def _match_positional(a: Form, blobs_a: dict, b: Form, blobs_b: dict):
    """Name a .pt2 program's positional outputs after the other form's outputs."""
    def rename(blobs: dict, other: Form) -> dict:
        keys = list(blobs)
        if all(k.startswith("output:") for k in keys) and len(keys) == len(other.outputs):
            return {name: blobs[k] for k, name in zip(keys, other.outputs)}
        return blobs
    if a.kind == "pt2" and b.kind != "pt2":
        blobs_a = rename(blobs_a, b)
    if b.kind == "pt2" and a.kind != "pt2":
        blobs_b = rename(blobs_b, a)
    return blobs_a, blobs_b


def format_comparison(result: Comparison, label_a: str, label_b: str) -> list[str]:
    width = max([len(r.name) for r in result.rows] + [4])
    lines = [f"comparing {label_a} (A) with {label_b} (B) on {result.input_desc}; "
             f"relative difference = max|A-B| / max|A|",
             f"{'blob':{width}s}  {'shape':18s} {'max abs':>10s} {'max rel':>10s}"]
    for r in result.rows:
        shape = "x".join(map(str, r.shape))
        flag = "  EXCEEDS" if r.exceeds else ""
        lines.append(f"{r.name:{width}s}  {shape:18s} {r.max_abs:10.3g} {r.max_rel:10.3g}{flag}"
                     + (f"  ({r.note})" if r.note else ""))
    first = result.first_exceeding
    bad = sum(r.exceeds for r in result.rows)
    if first is None:
        lines.append(f"all {len(result.rows)} shared blobs within {result.tolerance:g}")
    else:
        lines.append(f"{bad} of {len(result.rows)} shared blobs exceed {result.tolerance:g}; "
                     f"first in layer order: {first.name} (max rel {first.max_rel:.3g})")
    return lines
