"""senet's public API, exported from ``senet``: what README documents and both programs call.

    net = senet.load_caffe("SE-ResNet-50.caffemodel")            # the IR (CaffeNet)
    senet.convert("SE-ResNet-50.caffemodel", to="onnx")         # -> Path of the written file
    module = senet.to_torch(net)                                 # torch.fx GraphModule
    report = senet.verify(model="se_resnet50", val="val/")       # -> Report

Every failure is a ``senet.errors.SenetError`` whose ``exit_code`` the programs exit with.
Importing this module does not import torch; the torch targets import it when used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from senet.converter.describe import describe
from senet.converter.graph import CaffeNet
from senet.converter.load import load_net
from senet.converter.rpn import rpn_settings
from senet.converter.semantics import batchnorm_uses_batch_statistics
from senet.errors import UsageError
from senet.files import BackgroundSha256, sha256_file
from senet.progress import Progress

TARGETS = {"onnx": ".onnx", "torch": ".pt2", "safetensors": ".safetensors",
           "timm": ".timm.safetensors"}
"""Output formats of `convert` and the suffix of each one's default file name."""

PathLike = str | os.PathLike
Shape = Sequence[int]
InputShape = Shape | Mapping[str, Shape]
"""The shape of a net's only input, or shapes by input name ({"data": (1, 3, 368, 368)})."""
RpnOptions = Mapping[str, float] | str | None
"""Proposal-layer settings: {"post_nms_top_n": 200} or "post_nms_top_n=200,nms_thresh=0.6"."""


def load_caffe(model: PathLike | None = None, prototxt: PathLike | None = None, *,
               input_shape: InputShape | None = None, rpn: RpnOptions = None,
               allow_unknown_fields: bool = False,
               warn: Callable[[str], None] | None = None) -> CaffeNet:
    """A Caffe net as senet's IR: structure from `prototxt` (or, without one, the net stored
    in `model`), weights from the `model` .caffemodel, deploy layers only, every blob shaped.

    With only a prototxt, learned blobs are zeros of the right shapes (for inspecting).
    `input_shape` replaces the input's shape (the batch included), or, as a dict, the shapes
    of inputs by name; `warn` receives warnings (default: none are shown). `rpn`: the
    test-time settings of py-faster-rcnn proposal layers, which the Caffe files do not hold
    (a dict or "name=value,..." text of pre_nms_top_n, post_nms_top_n, nms_thresh, min_size;
    default py-faster-rcnn's cfg.TEST: 6000, 300, 0.7, 16)."""
    return load_net(_str(model), _str(prototxt), _shape(input_shape), allow_unknown_fields,
                    warn=warn, weights_optional=model is None, rpn=rpn)


def inspect(model: PathLike | None = None, prototxt: PathLike | None = None, *,
            input_shape: InputShape | None = None, rpn: RpnOptions = None,
            allow_unknown_fields: bool = False,
            warn: Callable[[str], None] | None = None) -> str:
    """The table ``senet-convert --inspect`` prints: layers, shapes, parameters and the
    published model the net is recognised as. A text prototxt given as `model` is read
    alone, as `prototxt` (its learned blobs are zeros of the right shapes)."""
    from senet.converter.prototxt import is_prototxt_file
    from senet.manifest import recognise
    if model is not None and prototxt is None and is_prototxt_file(model):
        model, prototxt = None, model
    net = load_caffe(model, prototxt, input_shape=input_shape, rpn=rpn,
                     allow_unknown_fields=allow_unknown_fields, warn=warn)
    entry = recognise(net)
    return describe(net, entry.name if entry else None)


def convert(model: PathLike, to: str = "onnx", output: PathLike | None = None, *,
            prototxt: PathLike | None = None, outputs: Sequence[str] | None = None,
            opset: int | None = None, fold: bool = True, input_shape: InputShape | None = None,
            rpn: RpnOptions = None, timm_exact: bool = False, expect_model: str | None = None,
            allow_unknown_fields: bool = False, progress: Progress | None = None,
            warn: Callable[[str], None] | None = None) -> Path:
    """Convert a .caffemodel to `to` ("onnx", "torch" (.pt2), "safetensors" or "timm") and
    return the written file's path (default: the model's name with the format's suffix, in
    the current folder). The file appears complete or not at all.

    `outputs`: Caffe blob names to expose (default: the blobs nothing consumes). `opset`:
    ONNX only (default 17). `fold`: torch/safetensors fold BatchNorm+Scale into convolutions.
    `timm_exact`: timm only, see README. `expect_model`: refuse a file that is not this
    published model (name or alias), naming the first layer that differs. `input_shape`,
    `rpn`: as for `load_caffe`."""
    if to not in TARGETS:
        raise UsageError(f"unknown output format '{to}'", hint="one of " + ", ".join(TARGETS))
    _check_options(to, opset, outputs, fold, timm_exact)
    rpn = rpn_settings(rpn)  # a usage error before anything is read
    progress = progress or Progress(quiet=True)
    source_sha256 = BackgroundSha256(model) if to == "onnx" else None  # before the slow part
    from senet.manifest import check_architecture, lookup, recognise
    expected = lookup(expect_model) if expect_model else None
    progress.step(f"reading {model}" + (f" with {prototxt}" if prototxt else ""))
    net = load_net(str(model), _str(prototxt), _shape(input_shape), allow_unknown_fields,
                   warn=warn, rpn=rpn)
    if expected is not None:
        check_architecture(net, expected)
    fixed_by = net.batch_fixed_by() if to in ("onnx", "torch") else None
    if fixed_by and warn:
        shapes = ", ".join(f"{n} {list(s)}" for n, s in net.inputs.items())
        warn(f"static batch: the {to} model takes only the input shapes {shapes} "
             f"({fixed_by})")
    for layer in net.layers if warn else []:
        if layer.type == "BatchNorm" and batchnorm_uses_batch_statistics(layer.param):
            warn(f"layer '{layer.name}' normalises with the batch's own statistics "
                 "(use_global_stats: false), as Caffe does: each output depends on the batch")
    recognised = recognise(net)
    destination = Path(output) if output is not None else Path(Path(model).stem + TARGETS[to])
    outputs = list(outputs) if outputs else None
    if to == "onnx":
        from senet.converter.to_onnx import DEFAULT_OPSET, build_graph, write_model
        progress.step(f"building ONNX graph ({len(net.layers)} layers)")
        onnx_model, initializers = build_graph(net, outputs, opset or DEFAULT_OPSET)
        progress.step(f"writing {destination}")
        write_model(destination, onnx_model, initializers, progress.bar("weights"),
                    source=net.weight_file, metadata=lambda: _onnx_metadata(
                        model, prototxt, recognised, source_sha256.result()))
    else:
        _require_torch(to)
        progress.step(f"writing {destination}")
        if to == "timm":
            from senet.converter.to_timm import export_timm
            export_timm(net, destination, recognised, exact=timm_exact)
        else:
            from senet.converter.torch_io import export_pt2, save_safetensors
            write = export_pt2 if to == "torch" else save_safetensors
            write(net, destination, outputs, fold=fold)
    progress.step("done")
    return destination


def to_torch(net_or_path: CaffeNet | PathLike, *, prototxt: PathLike | None = None,
             outputs: Sequence[str] | None = None, fold: bool = True, fuse: bool = True,
             dtype=None, input_shape: InputShape | None = None, rpn: RpnOptions = None):
    """A net (or the .caffemodel at a path) as a torch.fx GraphModule in eval mode: one
    tensor out for one output, else a tuple in the order of `outputs` (default: the blobs
    nothing consumes). `fold` folds BatchNorm+Scale into convolutions, `fuse` fuses
    Axpy+ReLU; `dtype` is torch.float32 by default (torch.float64 for reference work)."""
    _require_torch("torch")
    import torch
    from senet.converter.to_torch import to_torch as build
    net = net_or_path if isinstance(net_or_path, CaffeNet) else load_caffe(
        net_or_path, prototxt, input_shape=input_shape, rpn=rpn)
    return build(net, list(outputs) if outputs else None, fold=fold, fuse=fuse,
                 dtype=dtype or torch.float32)


def verify(model: str | None = None, weights: PathLike | None = None, val: PathLike | None = None,
           *, step: Callable[[str], None] | None = None, progress=None, **options):
    """Score a model on a validation folder and judge it against the published Table 1
    errors; returns a `senet.parity.report.Report` (``report.passed``, the errors, counts).

    `model`: published model name or alias; `weights`: .caffemodel, .onnx or .pt2 (default:
    the model's file in `weights_dir`); `val`: the validation folder. Further keyword
    options are the fields of `senet.parity.verify.VerifyOptions` (prototxt, labels,
    label_order, weights_dir, cache_dir, backend, device, batch_size, workers, threads,
    limit, allow_unreadable, resume; manifest: the models to know, a YAML file or a loaded
    mapping, default the shipped ones). `step(message)` receives status lines,
    `progress(done, total, seconds)` is called after each batch."""
    from senet.manifest import load_manifest
    from senet.parity.report import Report, build_report
    from senet.parity.verify import VerifyOptions, evaluate
    if isinstance(options.get("manifest"), (str, os.PathLike)):
        options["manifest"] = load_manifest(options["manifest"])
    try:
        run = VerifyOptions(model=model, weights=_str(weights), val=_str(val), **options)
    except TypeError as error:
        raise UsageError(f"verify(): {error}") from None
    return Report.from_json(build_report(evaluate(run, step=step, progress=progress)))


# ------------------------------------------------------------------------------------ helpers

def _str(path: PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def _shape(shape: Shape | Mapping[str, Shape] | None):
    """A checked shape, or a dict of checked shapes by input name."""
    if shape is None:
        return None
    if isinstance(shape, Mapping):
        return {str(name): _dims(dims, f"{name}=") for name, dims in shape.items()}
    return _dims(shape, "")


def _dims(shape: Shape, prefix: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {prefix}{','.join(map(str, shape))} needs positive "
                         "dimensions")
    return dims


def _check_options(to: str, opset, outputs, fold: bool, timm_exact: bool) -> None:
    if timm_exact and to != "timm":
        raise UsageError("--timm-exact applies to --to timm")
    if opset is not None and to != "onnx":
        raise UsageError("--opset applies to --to onnx")
    if to == "timm" and (outputs or not fold):
        raise UsageError("--outputs and --no-fold do not apply to --to timm")


def _require_torch(target: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(f"--to {target} needs PyTorch: pip install 'senet[torch]'") from None


def _onnx_metadata(model: PathLike, prototxt: PathLike | None, recognised,
                   source_sha256: str) -> dict[str, str]:
    """What an ONNX file records of its source: file and hashes, and for a recognised
    published model its name, preprocessing and class order."""
    meta = {"source_file": Path(model).name, "source_sha256": source_sha256,
            "converter": "senet"}
    if prototxt:
        meta["prototxt_sha256"] = sha256_file(prototxt)
    if recognised is None:
        meta["recognised_model"] = "none"
        return meta
    pre = recognised.preprocessing
    scaled = "no std" if pre.scale == 1 else f"then multiplied by {pre.scale}"
    meta.update({
        "recognised_model": recognised.name,
        "preprocessing": (f"{pre.color}, 0-255, mean {list(pre.mean)} subtracted, {scaled}, "
                          f"shorter side {pre.resize_shorter} ({pre.interpolation}), "
                          f"centre crop {pre.crop}"),
        "input_size": f"{recognised.input_shape[2]}x{recognised.input_shape[3]}",
        "channel_order": pre.color,
        "mean": ",".join(str(m) for m in pre.mean),
        "class_order": _class_order_text(recognised),
    })
    return meta


def _class_order_text(entry) -> str:
    if entry.class_order == "devkit":
        return ("ILSVRC2012 devkit order (output k = devkit ILSVRC2012_ID k+1), "
                "not sorted-WNID order")
    if entry.classes:
        return "explicit: " + ",".join(entry.classes)
    return entry.class_order
