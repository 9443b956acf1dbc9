"""Command-line entry points. Thin: parse arguments, call senet's public API, print, exit.

Exit status comes from the error (``SenetError.exit_code``; README's table): 0 success, 1 a
model file that cannot be read or converted or is not the model it should be (and for
senet-verify a failed gate), 2 usage or data set error, 130 interrupted. Errors are one line on
stderr (``senet-convert: error: ...``); --debug shows the traceback instead.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from senet.errors import SenetError, UsageError

CONVERT, VERIFY = "senet-convert", "senet-verify"


def _one_line(text: str) -> str:
    # Layer names and parser messages can hold newlines; the contract is one line.
    return " ".join(text.split("\n"))


def _error(prog: str, message: str, code: int):
    click.echo(f"{prog}: error: {_one_line(message)}", err=True)
    sys.exit(code)


class _Program(click.Command):
    """A senet program: click's own usage errors (bad option value, missing MODEL) as one
    line with exit status 2, like senet's, instead of click's three-line usage banner; and
    around the command, senet's errors as one line with their exit status."""

    prog = CONVERT
    interrupted = "interrupted"

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            _error(self.prog, error.format_message(), 2)

    def invoke(self, ctx):
        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except SenetError as error:
            if debug:
                raise
            _error(self.prog, str(error), error.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{self.prog}: {self.interrupted}", err=True)
            sys.exit(130)
        except Exception as error:  # a bug in senet, not the user's input: still one line
            if debug:
                raise
            _error(self.prog, f"internal error ({type(error).__name__}: {error}); rerun with "
                   "--debug and report it", 1)


class _Convert(_Program):
    prog = CONVERT


class _Verify(_Program):
    prog = VERIFY
    interrupted = "interrupted; rerun the same command to resume from the predictions cache"


def _parse_shape(values: tuple[str, ...]):
    """--input-shape as given: None, one shape (N,C,H,W, or NxCxHxW) for a net with one
    input, or shapes by input name from NAME=DIMS entries (repeated, or joined with ';' or
    ','); senet.api checks the numbers make shapes."""
    if not values:
        return None
    if not any("=" in value for value in values):
        if len(values) > 1:
            raise UsageError("--input-shape given twice without input names",
                             hint="name each input: --input-shape data=1,3,224,224")
        return _dims(values[0], values[0])
    named: dict[str, tuple[int, ...]] = {}
    for value in values:
        for entry in _NAMED_SPLIT.split(value.strip()):
            name, sep, dims = entry.partition("=")
            if not sep or not name:
                raise UsageError(f"--input-shape '{value}': '{entry}' is not NAME=N,C,H,W")
            if name in named:
                raise UsageError(f"--input-shape gives '{name}' twice")
            named[name] = _dims(dims, value)
    return named


# Between NAME=DIMS entries: ';', blanks, or a ',' followed by the next NAME=.
_NAMED_SPLIT = re.compile(r"[;\s]+|,(?=[^,;=\s]+=)")


def _dims(text: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape '{value}' is not N,C,H,W integers") from None


def _names(text: str | None) -> list[str] | None:
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    return names or None


def _warn(message: str) -> None:
    click.echo(f"{CONVERT}: warning: {message}", err=True)


@click.command(cls=_Convert,
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
@click.option("--input-shape", multiple=True, metavar="[NAME=]N,C,H,W",
              help="Shape of the input (default: the net's; 1,3,224,224 where nothing declares "
              "it). NAME=N,C,H,W sets the input NAME; repeat it (or join with ';') for nets "
              "with several inputs.")
@click.option("--rpn", default=None, metavar="NAME=VALUE,...",
              help="Test-time settings of py-faster-rcnn proposal layers (its cfg.TEST): "
              "pre_nms_top_n=6000,post_nms_top_n=300,nms_thresh=0.7,min_size=16 are the "
              "defaults; give those your model was evaluated with.")
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
def convert_main(model, prototxt, target, output, opset, outputs, input_shape, rpn,
                 allow_unknown_fields, no_fold, timm_exact, model_name, inspect, quiet, debug):
    """Convert a Caffe MODEL (.caffemodel) exactly, without Caffe."""
    import senet
    from senet.progress import Progress
    shape = _parse_shape(input_shape)
    if inspect:
        click.echo(senet.inspect(model, prototxt, input_shape=shape, rpn=rpn,
                                 allow_unknown_fields=allow_unknown_fields, warn=_warn))
        return
    if target is None:
        raise UsageError("say what to do: --to onnx|torch|safetensors|timm, or --inspect")
    senet.convert(model, target, output, prototxt=prototxt, outputs=_names(outputs),
                  opset=opset, fold=not no_fold, input_shape=shape, rpn=rpn,
                  timm_exact=timm_exact,
                  expect_model=model_name, allow_unknown_fields=allow_unknown_fields,
                  progress=Progress(quiet=quiet), warn=_warn)


# ------------------------------------------------------------------------------------ senet-verify

@click.command(cls=_Verify, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("reports", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-m", "--model", help="Published model name or alias (e.g. se_resnet50); "
              "without it, recognised from the weights.")
@click.option("-w", "--weights", type=click.Path(dir_okay=False),
              help=".caffemodel (converted on the fly, cached), .onnx or .pt2 "
                   "(default: the model's file in --weights-dir).")
@click.option("--prototxt", type=click.Path(dir_okay=False),
              help="Deploy prototxt for a .caffemodel (default: the net stored in it).")
@click.option("--val", "--val-dir", "val", type=click.Path(),
              help="ImageNet validation folder: WNID folders, ILSVRC2012_val_*.JPEG files, or "
                   "any folder with --labels.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Labels file: Caffe's val.txt or LOC_val_solution.csv.")
@click.option("--label-order", type=click.Choice(["sorted", "devkit"]), default="sorted",
              show_default=True, help="Class order of numeric labels in --labels.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              envvar="SENET_MANIFEST", help="Models to know, as a YAML file like senet's weights_manifest.yaml "
                   "(default: the published ones; env SENET_MANIFEST).")
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
@click.option("--resume/--no-resume", default=True,
              help="Reuse earlier predictions of the same run (default), or start over.")
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
def verify_main(reports, summary, plot, compare, image, tolerance, seed, json_path,
                markdown_path, quiet, debug, **options):
    """Check a converted SENet model against the published ImageNet errors (Table 1).

    \b
    senet-verify --model se_resnet50 --val /data/imagenet/val
    senet-verify --weights SE-ResNet-50.caffemodel --val val --json r50.json
    senet-verify --model digits_se_demo          (bundled demo: runs offline)
    senet-verify --summary r50.json r101.json --plot summary.png
    senet-verify --compare SE-ResNet-50.caffemodel r50.onnx --image cat.jpg

    Exit status: 0 within tolerance (or all blobs within --tolerance); 1 outside it, or
    weights that are not the model or cannot be read; 2 usage or data set error.
    """
    if summary:
        sys.exit(_summary(reports, plot))
    if reports:
        raise UsageError(f"unexpected argument '{reports[0]}'",
                         hint="JSON reports are read with --summary")
    if plot:
        raise UsageError("--plot goes with --summary")
    evaluation_only = {"--json": json_path, "--markdown": markdown_path, "--val": options["val"],
                       "--labels": options["labels"], "--limit": options["limit"]}
    comparison_only = {"--image": image, "--tolerance": tolerance}
    if compare:
        _refuse(evaluation_only, "{} does not go with --compare")
        sys.exit(_compare(compare, image, tolerance, seed, options))
    _refuse(comparison_only, "{} goes with --compare")
    sys.exit(_run(options, json_path, markdown_path, quiet))


def _refuse(flags: dict, message: str) -> None:
    used = [flag for flag, value in flags.items() if value is not None]
    if used:
        raise UsageError(message.format(used[0]))


def _summary(reports, plot) -> int:
    from senet.parity.report import load_report, plot_summary, summary_table
    if not reports:
        raise UsageError("--summary needs one or more JSON reports")
    loaded = [load_report(path) for path in reports]
    click.echo(summary_table(loaded))
    if plot:
        plot_summary(loaded, plot)
    return 0 if all(r["passed"] for r in loaded) else 1


def _compare(paths, image, tolerance, seed, options) -> int:
    from senet.manifest import load_manifest, lookup
    from senet.parity.compare import DEFAULT_TOLERANCE, compare, format_comparison
    manifest = load_manifest(options["manifest"]) if options["manifest"] else None
    entry = lookup(options["model"], manifest) if options["model"] else None
    result = compare(paths[0], paths[1], DEFAULT_TOLERANCE if tolerance is None else tolerance,
                     entry, image, seed, options["prototxt"], manifest=manifest)
    click.echo("\n".join(format_comparison(result, Path(paths[0]).name, Path(paths[1]).name)))
    return 1 if result.first_exceeding is not None else 0


def _run(options, json_path, markdown_path, quiet) -> int:
    import senet
    from senet.parity import distributed
    from senet.parity.verify import RateMeter
    from senet.progress import Progress
    main = distributed.from_env().is_main
    quiet = quiet or not main
    report = senet.verify(step=Progress(quiet=quiet).step,
                          progress=None if quiet else RateMeter(), **options)
    if main:
        if json_path:
            report.write_json(json_path)
        if markdown_path:
            report.write_markdown(markdown_path)
        click.echo(report.summary())
    return 0 if report.passed else 1


if __name__ == "__main__":
    convert_main()
