"""Command-line entry points. Thin: parse, call the library, print, exit code.

Exit status: 0 success, 1 conversion or input error, 2 usage error. User errors are one line on
stderr (``senet-convert: error: ...``); --debug shows the traceback instead.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

import click

from senet.errors import SenetError, UsageError


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

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            click.echo(f"senet-convert: error: {_one_line(error.format_message())}", err=True)
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


def _sha256(path: str) -> str:
    """SHA-256 of a file, read through one reused 4 MiB buffer (hashlib releases the GIL for
    each chunk; mapping the file instead would add its size to this process's memory)."""
    h = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


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
            self._digest = _sha256(self._path)
        except Exception:  # unreadable: result() retries in the caller, which reports it
            pass

    def result(self) -> str:
        self._thread.join()
        return self._digest if self._digest is not None else _sha256(self._path)


@click.command(cls=_OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--prototxt", type=click.Path(dir_okay=False),
              help="Deploy or TEST prototxt; without it the net stored in MODEL is used.")
@click.option("--to", "target", type=click.Choice(["onnx"]), default=None,
              help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default: MODEL's name with the format's suffix, here).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17).")
@click.option("--outputs", default=None,
              help="Comma-separated Caffe blob names to expose (default: blobs nothing consumes).")
@click.option("--input-shape", default=None, help="N,C,H,W of the input (default: the net's, "
              "or 1,3,224,224 for a net stored with a data layer).")
@click.option("--allow-unknown-fields", is_flag=True,
              help="Skip prototxt fields senet's schema lacks (with a warning).")
@click.option("--inspect", is_flag=True, help="Print layers, blob shapes and parameter count.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert_main(model, prototxt, target, output, opset, outputs, input_shape,
                 allow_unknown_fields, inspect, quiet, debug):
    """Convert a Caffe MODEL (.caffemodel) exactly, without Caffe."""
    try:
        _convert(model, prototxt, target, output, opset, outputs, input_shape,
                 allow_unknown_fields, inspect, quiet)
    except SenetError as error:
        _fail("senet-convert", error, debug)
    except Exception as error:  # a bug in senet, not the user's input: still no traceback
        if debug:
            raise
        click.echo(f"senet-convert: error: internal error ({type(error).__name__}: "
                   f"{_one_line(str(error))}); rerun with --debug and report it", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("senet-convert: interrupted", err=True)
        sys.exit(130)


def _convert(model, prototxt, target, output, opset, outputs, input_shape,
             allow_unknown_fields, inspect, quiet):
    if not inspect and target is None:
        raise UsageError("say what to do: --to onnx, or --inspect")
    source_sha256 = None if inspect else _BackgroundSha256(model)  # before the slow imports
    from senet.converter.load import load_net
    from senet.progress import Progress

    progress = Progress(quiet=quiet or inspect)
    progress.step(f"reading {model}" + (f" with {prototxt}" if prototxt else ""))
    net = load_net(model, prototxt, _parse_shape(input_shape), allow_unknown_fields,
                   warn=lambda message: click.echo(f"senet-convert: warning: {message}",
                                                   err=True))
    from senet.manifest import recognise
    recognised = recognise(net)
    if inspect:
        click.echo(describe(net, recognised))
        return
    from senet.converter.to_onnx import DEFAULT_OPSET, build_graph, write_model
    requested = [o.strip() for o in outputs.split(",") if o.strip()] if outputs else None
    progress.step(f"building ONNX graph ({len(net.layers)} layers)")
    onnx_model, initializers = build_graph(net, requested, opset or DEFAULT_OPSET)
    destination = Path(output) if output else Path(Path(model).stem + ".onnx")
    progress.step(f"writing {destination}")
    write_model(destination, onnx_model, initializers, progress.bar("weights"),
                source=net.weight_file,
                metadata=lambda: _metadata(model, prototxt, recognised, source_sha256.result()))
    progress.step("done")


def _metadata(model, prototxt, recognised, source_sha256: str) -> dict[str, str]:
    meta = {"source_file": Path(model).name, "source_sha256": source_sha256,
            "converter": "senet"}
    if prototxt:
        meta["prototxt_sha256"] = _sha256(prototxt)
    if recognised is not None:
        pre = recognised.preprocessing
        meta.update({
            "recognised_model": recognised.name,
            "preprocessing": (f"{pre.color}, 0-255, mean {list(pre.mean)} subtracted, no std, "
                              f"shorter side {pre.resize_shorter} ({pre.interpolation}), "
                              f"centre crop {pre.crop}"),
            "input_size": f"{recognised.input_shape[2]}x{recognised.input_shape[3]}",
            "channel_order": pre.color,
            "mean": ",".join(str(m) for m in pre.mean),
            "class_order": ("ILSVRC2012 devkit order (output k = devkit ILSVRC2012_ID k+1), "
                            "not sorted-WNID order" if recognised.class_order == "devkit"
                            else recognised.class_order),
        })
    else:
        meta["recognised_model"] = "none"
    return meta


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


if __name__ == "__main__":
    convert_main()
