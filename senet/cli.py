"""Command-line entry points. Thin: parse, call the library, print, exit code.

Exit status: 0 success, 1 conversion or input error, 2 usage error. User errors are one line on
stderr (``senet-convert: error: ...``); --debug shows the traceback instead.
"""

from __future__ import annotations

from dataclasses import dataclass
import sys
import threading
from pathlib import Path

import click

from senet.errors import SenetError, UsageError
from senet.files import sha256_file


def _internal_error(prog: str, error: Exception, debug: bool):
    """A bug in senet, not the user's input: still one line and no traceback (--debug shows
    it)."""
    if debug:
        raise error
    click.echo(f"{prog}: error: internal error ({type(error).__name__}: "
               f"{_one_line(str(error))}); rerun with --debug and report it", err=True)
    sys.exit(1)


def _fail(prog: str, error: SenetError, debug: bool):
    if debug:
        raise error
    click.echo(f"{prog}: error: {_one_line(str(error))}", err=True)
    sys.exit(error.exit_code)


def _one_line(text: str) -> str:
    # Layer names and parser messages can hold newlines; the contract is one line.
    return " ".join(text.split("\n"))


class _OneLineUsageErrors(click.Command):
    """click's own usage errors (bad option value, missing MODEL) as one line, exit status 2,
    like senet's, instead of click's three-line usage banner."""

    prog = "senet-convert"

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            click.echo(f"{self.prog}: error: {_one_line(error.format_message())}", err=True)
            sys.exit(2)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape '{text}' is not N,C,H,W integers") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape '{text}' needs positive dimensions")
    return dims


class _BackgroundSha256:
    """SHA-256 of a file computed on another core while the model is read and converted
    (hashlib releases the GIL): hashing a 440 MB model takes about as long as converting it,
    and the digest is needed only when the ONNX header is written."""

    def __init__(self, path: str):
        self._path = path
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = sha256_file(self._path)
        except Exception:  # unreadable: result() retries in the caller, which reports it
            pass

    def result(self) -> str:
        self._thread.join()
        return self._digest if self._digest is not None else sha256_file(self._path)


@click.command(cls=_OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--prototxt", type=click.Path(dir_okay=False),
              help="Deploy or TEST prototxt; without it the net stored in MODEL is used.")
@click.option("--to", "target", type=click.Choice(["onnx", "torch", "safetensors", "timm"]),
              default=None, help="Output format: ONNX; a torch.export program (.pt2); weights "
              "and graph for senet.load (.safetensors); a timm legacy-SENet checkpoint.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default: MODEL's name with the format's suffix, here).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17).")
@click.option("--outputs", default=None,
              help="Comma-separated Caffe blob names to expose (default: blobs nothing consumes).")
@click.option("--input-shape", default=None, help="N,C,H,W of the input (default: the net's, "
              "or 1,3,224,224 for a net stored with a data layer).")
@click.option("--allow-unknown-fields", is_flag=True,
              help="Skip prototxt fields senet's schema lacks (with a warning).")
@click.option("--no-fold", is_flag=True,
              help="torch/safetensors: keep BatchNorm and Scale layers (default: folded into "
                   "the preceding convolution).")
@click.option("--timm-exact", is_flag=True,
              help="timm: flip to RGB only and record Caffe's own mean/std in the "
                   "pretrained_cfg, so timm reproduces Caffe's input exactly.")
@click.option("--model", "model_name", default=None,
              help="Require the file to be this published model (name or alias); a mismatch "
                   "names the first layer that differs.")
@click.option("--inspect", is_flag=True, help="Print layers, blob shapes and parameter count.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert_main(model, prototxt, target, output, opset, outputs, input_shape,
                 allow_unknown_fields, no_fold, timm_exact, model_name, inspect, quiet, debug):
    """Convert a Caffe MODEL (.caffemodel) exactly, without Caffe."""
    try:
        options = ConvertOptions(target, output, opset, outputs, not no_fold, timm_exact,
                                 model_name)
        _convert(model, prototxt, options, input_shape, allow_unknown_fields, inspect, quiet)
    except SenetError as error:
        _fail("senet-convert", error, debug)
    except Exception as error:
        _internal_error("senet-convert", error, debug)
    except KeyboardInterrupt:
        click.echo("senet-convert: interrupted", err=True)
        sys.exit(130)


@dataclass(frozen=True)
class ConvertOptions:
    target: str | None
    output: str | None
    opset: int | None
    outputs: str | None
    fold: bool
    timm_exact: bool
    model_name: str | None

    def requested_outputs(self) -> list[str] | None:
        if not self.outputs:
            return None
        return [o.strip() for o in self.outputs.split(",") if o.strip()]


_SUFFIXES = {"onnx": ".onnx", "torch": ".pt2", "safetensors": ".safetensors",
             "timm": ".timm.safetensors"}


def _convert(model, prototxt, options: ConvertOptions, input_shape, allow_unknown_fields,
             inspect, quiet):
    if not inspect and options.target is None:
        raise UsageError("say what to do: --to onnx|torch|safetensors|timm, or --inspect")
    if options.timm_exact and options.target != "timm":
        raise UsageError("--timm-exact applies to --to timm")
    source_sha256 = None if inspect else _BackgroundSha256(model)  # before the slow imports
    from senet.converter.load import load_net
    from senet.manifest import check_architecture, lookup, recognise
    from senet.progress import Progress

    expected = lookup(options.model_name) if options.model_name else None
    progress = Progress(quiet=quiet or inspect)
    progress.step(f"reading {model}" + (f" with {prototxt}" if prototxt else ""))
    net = load_net(model, prototxt, _parse_shape(input_shape), allow_unknown_fields,
                   warn=lambda message: click.echo(f"senet-convert: warning: {message}",
                                                   err=True))
    if expected is not None:
        check_architecture(net, expected)
    recognised = recognise(net)
    if inspect:
        click.echo(describe(net, recognised))
        return
    destination = Path(options.output) if options.output else Path(
        Path(model).stem + _SUFFIXES[options.target])
    if options.target == "onnx":
        _write_onnx(net, destination, options, progress,
                    lambda: _metadata(model, prototxt, recognised, source_sha256.result()))
    else:
        _write_torch_format(net, destination, options, progress)
    progress.step("done")


def _write_onnx(net, destination, options, progress, metadata):
    from senet.converter.to_onnx import DEFAULT_OPSET, build_graph, write_model

    progress.step(f"building ONNX graph ({len(net.layers)} layers)")
    onnx_model, initializers = build_graph(net, options.requested_outputs(),
                                           options.opset or DEFAULT_OPSET)
    progress.step(f"writing {destination}")
    write_model(destination, onnx_model, initializers, progress.bar("weights"),
                source=net.weight_file, metadata=metadata)


def _write_torch_format(net, destination, options, progress):
    if options.opset is not None:
        raise UsageError("--opset applies to --to onnx")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(f"--to {options.target} needs PyTorch: pip install 'senet[torch]'") \
            from None
    progress.step(f"writing {destination}")
    if options.target == "timm":
        if options.outputs or not options.fold:
            raise UsageError("--outputs and --no-fold do not apply to --to timm")
        from senet.converter.to_timm import export_timm
        from senet.manifest import recognise
        export_timm(net, destination, recognise(net), exact=options.timm_exact)
        return
    from senet.converter.torch_io import export_pt2, save_safetensors
    write = export_pt2 if options.target == "torch" else save_safetensors
    write(net, destination, options.requested_outputs(), fold=options.fold)


def _metadata(model, prototxt, recognised, source_sha256: str) -> dict[str, str]:
    meta = {"source_file": Path(model).name, "source_sha256": source_sha256,
            "converter": "senet"}
    if prototxt:
        meta["prototxt_sha256"] = sha256_file(prototxt)
    if recognised is not None:
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
    else:
        meta["recognised_model"] = "none"
    return meta


def _class_order_text(entry) -> str:
    if entry.class_order == "devkit":
        return ("ILSVRC2012 devkit order (output k = devkit ILSVRC2012_ID k+1), "
                "not sorted-WNID order")
    if entry.classes:
        return "explicit: " + ",".join(entry.classes)
    return entry.class_order


def describe(net, recognised) -> str:
    """Human-readable table of layers, output shapes and parameter counts."""
    lines = [f"net: {net.name or '(unnamed)'}",
             "inputs: " + ", ".join(f"{n} {list(s)}" for n, s in net.inputs.items())]
    width = max([len(layer.name) for layer in net.layers] + [5])
    for layer in net.layers:
        shapes = " ".join(str(list(net.shapes[t])) for t in layer.tops)
        params = sum(b.size for b in layer.blobs)
        blob_shapes = " ".join("x".join(map(str, b.shape)) for b in layer.blobs)
        lines.append(f"  {layer.name:<{width}}  {layer.type:<12} -> {shapes}"
                     + (f"  params {params:,} ({blob_shapes})" if params else ""))
    lines.append("outputs: " + ", ".join(net.default_outputs()))
    lines.append(f"parameters: {net.parameter_count():,} in {sum(1 for l in net.layers if l.blobs)}"
                 f" layers with blobs")
    lines.append("recognised model: " + (recognised.name if recognised else "none"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ senet-verify

VERIFY = "senet-verify"


class _VerifyUsageErrors(_OneLineUsageErrors):
    prog = VERIFY


def _verify_exit_code(error: SenetError) -> int:
    """1 when the check ran and failed (weights that are not the model), 2 when it could not
    run: usage, a missing or unreadable data set, weights or report (input errors)."""
    from senet.parity.runners import WeightsMismatchError
    return 1 if isinstance(error, WeightsMismatchError) else 2


@click.command(cls=_VerifyUsageErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("reports", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-m", "--model", help="Published model name or alias (e.g. se_resnet50); "
              "without it, recognised from the weights.")
@click.option("-w", "--weights", type=click.Path(dir_okay=False),
              help=".caffemodel (converted on the fly, cached), .onnx or .pt2 "
                   "(default: the model's file in --weights-dir).")
@click.option("--prototxt", type=click.Path(dir_okay=False),
              help="Deploy prototxt for a .caffemodel (default: the net stored in it).")
@click.option("--val", "--val-dir", "val_dir", type=click.Path(),
              help="ImageNet validation folder: WNID folders, ILSVRC2012_val_*.JPEG files, or "
                   "any folder with --labels.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Labels file: Caffe's val.txt or LOC_val_solution.csv.")
@click.option("--label-order", type=click.Choice(["sorted", "devkit"]), default="sorted",
              show_default=True, help="Class order of numeric labels in --labels.")
@click.option("--weights-dir", default="~/.cache/senet", show_default=True,
              help="Where the published .caffemodel files are looked up.")
@click.option("--cache-dir", default="~/.cache/senet", show_default=True,
              help="Converted models and per-run prediction caches.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto",
              show_default=True, help="auto: torch for .pt2, onnxruntime otherwise.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:K (auto: CUDA when the backend has it).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("-j", "--workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes (default: spare cores, at least 1; 0: none).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads (default: the runtime's).")
@click.option("--limit", type=int, default=None, help="Score only the first N images.")
@click.option("--allow-unreadable", is_flag=True,
              help="Pass the gate even when more than 0.1% of the images are unreadable.")
@click.option("--no-resume", is_flag=True, help="Ignore earlier predictions of the same run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the JSON report (per-class accuracy, unreadable files) here.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="Write a Markdown report here.")
@click.option("--summary", is_flag=True, help="Print the table over the JSON REPORTS given.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="With --summary: write a PNG bar chart, ours vs Table 1.")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), default=None,
              metavar="A B", help="Blob-by-blob difference between two forms of one model "
                                  "(.caffemodel, .onnx, .pt2).")
@click.option("--image", type=click.Path(dir_okay=False),
              help="With --compare: this image, preprocessed, instead of random input.")
@click.option("--tolerance", type=float, default=None,
              help="With --compare: largest relative difference allowed (default 1e-4).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="With --compare: seed of the random input.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def verify_main(reports, debug, **options):
    """Check a converted SENet model against the published ImageNet errors (Table 1).

    \b
    senet-verify --model se_resnet50 --val /data/imagenet/val
    senet-verify --weights SE-ResNet-50.caffemodel --val val --json r50.json
    senet-verify --model digits_se_demo          (bundled demo: runs offline)
    senet-verify --summary r50.json r101.json --plot summary.png
    senet-verify --compare SE-ResNet-50.caffemodel r50.onnx --image cat.jpg

    Exit status: 0 within tolerance (or all blobs within --tolerance), 1 outside it or weights
    that do not match the model, 2 usage or input error.
    """
    try:
        code = _verify(reports, **options)
    except SenetError as error:
        if debug:
            raise
        click.echo(f"{VERIFY}: error: {_one_line(str(error))}", err=True)
        sys.exit(_verify_exit_code(error))
    except KeyboardInterrupt:
        click.echo(f"{VERIFY}: interrupted; rerun the same command to resume from the "
                   "predictions cache", err=True)
        sys.exit(130)
    except Exception as error:
        _internal_error(VERIFY, error, debug)
    sys.exit(code)


_EVAL_ONLY = {"json_path": "--json", "markdown_path": "--markdown", "val_dir": "--val",
              "labels": "--labels", "limit": "--limit"}
_COMPARE_ONLY = {"image": "--image", "tolerance": "--tolerance"}


def _verify(reports, summary, plot, compare, **options) -> int:
    if summary:
        if not reports:
            raise UsageError("--summary needs one or more JSON reports")
        return _verify_summary(reports, plot)
    if reports:
        raise UsageError(f"unexpected argument '{reports[0]}'",
                         hint="JSON reports are read with --summary")
    if plot:
        raise UsageError("--plot goes with --summary")
    if compare:
        used = [flag for name, flag in _EVAL_ONLY.items() if options.get(name) is not None]
        if used:
            raise UsageError(f"{used[0]} does not go with --compare")
        return _verify_compare(compare, options)
    used = [flag for name, flag in _COMPARE_ONLY.items() if options.get(name) is not None]
    if used:
        raise UsageError(f"{used[0]} goes with --compare")
    return _verify_run(options)


def _verify_summary(reports, plot) -> int:
    from senet.parity.report import load_report, plot_summary, summary_table
    loaded = [load_report(path) for path in reports]
    click.echo(summary_table(loaded))
    if plot:
        plot_summary(loaded, plot)
    return 0 if all(r["passed"] for r in loaded) else 1


def _verify_compare(paths, options) -> int:
    from senet.manifest import lookup
    from senet.parity.compare import DEFAULT_TOLERANCE, compare, format_comparison
    entry = lookup(options["model"]) if options["model"] else None
    tolerance = options["tolerance"] if options["tolerance"] is not None else DEFAULT_TOLERANCE
    result = compare(paths[0], paths[1], tolerance, entry, options["image"], options["seed"],
                     options["prototxt"])
    click.echo("\n".join(format_comparison(result, Path(paths[0]).name, Path(paths[1]).name)))
    return 1 if result.first_exceeding is not None else 0


def _verify_run(options) -> int:
    from senet.parity.report import build_report, markdown, summary_lines, write_json
    from senet.parity.report import write_text
    from senet.parity.verify import RateMeter, VerifyOptions, evaluate
    from senet.progress import Progress
    from senet.parity import distributed
    main = distributed.from_env().is_main
    quiet = options["quiet"] or not main
    progress = Progress(quiet=quiet)
    run_options = VerifyOptions(
        model=options["model"], weights=options["weights"], prototxt=options["prototxt"],
        weights_dir=options["weights_dir"], cache_dir=options["cache_dir"],
        val_dir=options["val_dir"], labels=options["labels"],
        label_order=options["label_order"], backend=options["backend"],
        device=options["device"], batch_size=options["batch_size"],
        workers=options["workers"], threads=options["threads"], limit=options["limit"],
        allow_unreadable=options["allow_unreadable"], resume=not options["no_resume"])
    evaluation = evaluate(run_options, step=progress.step,
                          progress=None if quiet else RateMeter())
    if not main:
        return 0 if evaluation.gate.passed else 1
    report = build_report(evaluation)
    if options["json_path"]:
        write_json(options["json_path"], report)
    if options["markdown_path"]:
        write_text(options["markdown_path"], markdown(report))
    click.echo("\n".join(summary_lines(report)))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    convert_main()
