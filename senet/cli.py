"""Command-line entry points. Thin: parse, call the library, print, exit code.

Exit status: 0 success, 1 conversion or input error, 2 usage error. User errors are one line on
stderr (``senet-convert: error: ...``); --debug shows the traceback instead.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import click

from senet.errors import SenetError, UsageError


def _fail(prog: str, error: SenetError, debug: bool):
    if debug:
        raise error
    click.echo(f"{prog}: error: {error}", err=True)
    sys.exit(error.exit_code)


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
    except KeyboardInterrupt:
        click.echo("senet-convert: interrupted", err=True)
        sys.exit(130)


def _convert(model, prototxt, target, output, opset, outputs, input_shape,
             allow_unknown_fields, inspect, quiet):
    from senet.converter.load import load_net
    from senet.progress import Progress

    if not inspect and target is None:
        raise UsageError("say what to do: --to onnx, or --inspect")
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
    from senet.converter.to_onnx import DEFAULT_OPSET, build_graph, set_metadata, write_model
    requested = [o.strip() for o in outputs.split(",") if o.strip()] if outputs else None
    progress.step(f"building ONNX graph ({len(net.layers)} layers)")
    onnx_model, initializers = build_graph(net, requested, opset or DEFAULT_OPSET)
    set_metadata(onnx_model, _metadata(model, prototxt, recognised, net))
    destination = Path(output) if output else Path(Path(model).stem + ".onnx")
    progress.step(f"writing {destination}")
    write_model(destination, onnx_model, initializers, progress.bar("weights"))
    progress.step("done")


def _metadata(model, prototxt, recognised, net) -> dict[str, str]:
    meta = {"source_file": Path(model).name, "source_sha256": _sha256(model),
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
