"""Run a model on batches: onnxruntime (CPU, or CUDA with onnxruntime-gpu) or torch (.pt2).

``prepare_model`` turns the user's weights into a runnable file: a ``.caffemodel`` is checked
against the manifest's architecture fingerprint and converted once, cached under
``CACHE/converted/`` by the file's sha256; ``.onnx`` and ``.pt2`` files are used as they are.
``open_runner`` then gives a callable batch (N x C x H x W float32) -> scores (N x classes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from senet.errors import ConversionError, SenetError, UsageError
from senet.files import atomic_output, sha256_file
from senet.manifest import Manifest, fingerprint, lookup, recognise

WEIGHT_SUFFIXES = {".caffemodel": "caffemodel", ".onnx": "onnx", ".pt2": "pt2"}
BACKENDS = ("onnxruntime", "torch")


class WeightsMismatchError(SenetError):
    """Weights that are not the model they are checked as (exit status 1: a failed check)."""


# ------------------------------------------------------------------------------------- hashing

def file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of a file; remembered in ``cache_dir/sha256.json`` by path, size and mtime so
    that a 440 MB model is hashed once, not on every run."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror}", where=str(path)) from None
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = Path(cache_dir) / "sha256.json" if cache_dir is not None else None
    memo = _read_json(memo_path) if memo_path else {}
    if key in memo:
        return memo[key]
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror}", where=str(path)) from None
    if memo_path:
        memo[key] = digest
        _write_json(memo_path, memo)
    return digest


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    """Best effort, atomic: a cache that cannot be written only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))
    except (OSError, ConversionError):
        pass


# ------------------------------------------------------------------------------ preparing files

@dataclass(frozen=True)
class PreparedModel:
    """A runnable model file and where it came from."""

    path: Path            # the .onnx or .pt2 that is run
    format: str           # "onnx" | "pt2"
    source: Path          # the user's weights file
    source_format: str    # "caffemodel" | "onnx" | "pt2"
    sha256: str           # of the source file
    entry: object         # the senet.manifest.ModelEntry it was checked as


def weights_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UsageError(f"cannot tell the format of '{Path(path).name}'",
                         hint="weights must end in .caffemodel, .onnx or .pt2")
    return WEIGHT_SUFFIXES[suffix]


def choose_backend(backend: str, fmt: str) -> str:
    """'auto' -> torch for .pt2, onnxruntime otherwise; rejects impossible combinations."""
    if backend == "auto":
        return "torch" if fmt == "pt2" else "onnxruntime"
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint="use onnxruntime or torch")
    if backend == "onnxruntime" and fmt == "pt2":
        raise UsageError("onnxruntime cannot run a .pt2 program", hint="use --backend torch")
    if backend == "torch" and fmt == "onnx":
        raise UsageError("the torch backend runs .pt2 or .caffemodel weights, not .onnx",
                         hint="use --backend onnxruntime")
    return backend


def prepare_model(weights: str | os.PathLike, entry, backend: str, cache_dir: str | os.PathLike,
                  prototxt: str | None = None, step=None,
                  manifest: Manifest | None = None) -> PreparedModel:
    """Check ``weights`` against ``entry`` (a ModelEntry, or None to recognise it among
    ``manifest``'s models, None meaning the shipped ones) and return a runnable file for
    ``backend``. WeightsMismatchError when they do not match."""
    weights = Path(weights)
    fmt = weights_format(weights)
    if not weights.is_file():
        raise UsageError("weights file does not exist", where=str(weights))
    backend = choose_backend(backend, fmt)
    sha256 = file_sha256(weights, cache_dir)
    if fmt == "caffemodel":
        path, entry = _converted(weights, sha256, entry, backend, Path(cache_dir), prototxt, step,
                                 manifest)
        return PreparedModel(path, "onnx" if backend == "onnxruntime" else "pt2", weights, fmt,
                             sha256, entry)
    if fmt == "onnx":
        entry = _check_onnx_metadata(weights, entry, manifest)
    elif entry is None:
        raise UsageError(f"cannot tell which model '{weights.name}' is",
                         hint="pass --model NAME")
    return PreparedModel(weights, fmt, weights, fmt, sha256, entry)


def _converted(weights: Path, sha256: str, entry, backend: str, cache_dir: Path,
               prototxt: str | None, step, manifest: Manifest | None) -> tuple[Path, object]:
    import senet
    target = "onnx" if backend == "onnxruntime" else "pt2"
    variant = sha256_text(f"{senet.__version__}|{target}|"
                          + (file_sha256(prototxt, cache_dir) if prototxt else "-"))[:12]
    folder = cache_dir / "converted"
    out = folder / f"{sha256[:32]}-{variant}.{target}"
    sidecar = out.with_suffix(".json")
    facts = _read_json(sidecar) if out.exists() else {}
    if not facts:
        if step:
            step(f"converting {weights.name} to {target} (cached under {folder})")
        from senet.converter.load import load_net
        net = load_net(str(weights), prototxt)
        fp = fingerprint(net)
        recognised = recognise(net, manifest)
        facts = {"fingerprint": [fp.parameters, fp.layers_with_blobs, fp.digest],
                 "recognised": recognised.name if recognised else None,
                 "output": _logits_blob(net), "source": weights.name}
        _check_fingerprint(weights, entry, facts)
        if entry is None:
            entry = recognised
        folder.mkdir(parents=True, exist_ok=True)
        _write_converted(net, out, target, facts["output"])
        _write_json(sidecar, facts)
    else:
        _check_fingerprint(weights, entry, facts)
    if entry is None:
        entry = lookup(facts["recognised"], manifest)
    return out, entry


def _logits_blob(net) -> str | None:
    """The blob the ranking is read from: the input of a final Softmax (scores that have not
    been squashed, so float32 underflow cannot create ties), else the net's own output."""
    outputs = net.default_outputs()
    if len(outputs) != 1:
        return None
    producer = net.producers().get(outputs[0])
    if producer is None or producer.type != "Softmax" or len(producer.bottoms) != 1:
        return None
    bottom = producer.bottoms[0]
    caffe_name = net.caffe_name(bottom)
    # An in-place Softmax overwrote its input: the scores then have no Caffe name to ask for.
    return caffe_name if net.final_names.get(caffe_name) == bottom else None


def _check_fingerprint(weights: Path, entry, facts: dict) -> None:
    if entry is None:
        if facts["recognised"] is None:
            raise UsageError(f"'{weights.name}' is not one of the published models",
                             hint="pass --model NAME to check it as one")
        return
    params, layers, digest = facts["fingerprint"]
    want = entry.fingerprint
    if (params, layers, digest) != (want.parameters, want.layers_with_blobs, want.digest):
        seems = (f"it looks like {facts['recognised']}" if facts["recognised"]
                 else "it matches no published model")
        raise WeightsMismatchError(
            f"the weights do not match model '{entry.name}': architecture fingerprint "
            f"{params:,} parameters / {layers} layers with weights / {digest}, expected "
            f"{want.parameters:,} / {want.layers_with_blobs} / {want.digest}",
            where=str(weights), hint=seems)


def _write_converted(net, out: Path, target: str, output: str | None) -> None:
    outputs = [output] if output else None
    if target == "onnx":
        from senet.converter.to_onnx import build_graph, write_model
        model, initializers = build_graph(net, outputs)
        write_model(out, model, initializers, source=net.weight_file)
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("the torch backend needs torch", hint="pip install 'senet[torch]', "
                         "or use --backend onnxruntime") from None
    from senet.converter.torch_io import export_pt2
    export_pt2(net, out, outputs=outputs)  # written to a temp file and renamed


def _check_onnx_metadata(path: Path, entry, manifest: Manifest | None):
    """The model an ONNX file written by senet-convert says it is, checked against ``entry``."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"not a readable ONNX file ({type(exc).__name__})",
                         where=str(path)) from None
    meta = {p.key: p.value for p in model.metadata_props}
    del model
    claimed = meta.get("recognised_model")
    if entry is None:
        if not claimed or claimed == "none":
            raise UsageError(f"cannot tell which model '{path.name}' is",
                             hint="pass --model NAME")
        return lookup(claimed, manifest)
    if claimed and claimed != "none" and claimed != entry.name:
        raise WeightsMismatchError(f"the weights do not match model '{entry.name}': the file was "
                                   f"converted from {claimed}", where=str(path))
    return entry


# ------------------------------------------------------------------------------------- runners

def resolve_device(device: str, backend: str, local_rank: int = 0) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:K' -> a concrete device string for ``backend``."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"unknown device '{device}'", hint="use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    if backend == "onnxruntime":
        import onnxruntime as ort
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        hint = "install onnxruntime-gpu, or use --device cpu"
    else:
        import torch
        has_cuda = torch.cuda.is_available()
        hint = "no CUDA device is visible to torch; use --device cpu"
    if not has_cuda:
        if device == "auto":
            return "cpu"
        raise UsageError(f"--device {device} is not available to {backend}", hint=hint)
    return device if ":" in device else f"cuda:{local_rank}"


class OnnxRunner:
    """onnxruntime InferenceSession on CPU or CUDA; returns the class-score output."""

    backend = "onnxruntime"

    def __init__(self, path: Path, device: str, num_classes: int, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle inference threads sleep instead of spinning, leaving the cores to the decode
        # workers between batches (measured: end to end 80 % -> 90-98 % of the model alone
        # on 2 cores, and the model alone no slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise UsageError(f"onnxruntime cannot load the model: {' '.join(str(exc).split())}",
                             where=str(path)) from None
        self.device = device
        self.input = self.session.get_inputs()[0].name
        self.output = _pick_output([(o.name, o.shape) for o in self.session.get_outputs()],
                                   num_classes, path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run([self.output], {self.input: batch})
        return scores.reshape(len(batch), -1)


class TorchRunner:
    """A torch.export program (.pt2) run eagerly on CPU or CUDA under inference_mode."""

    backend = "torch"

    def __init__(self, path: Path, device: str, num_classes: int, threads: int | None = None):
        import torch
        try:
            import senet.kernels  # noqa: F401  (registers senet:: ops the program may call)
        except ImportError:
            pass
        if threads:
            torch.set_num_threads(threads)
        try:
            self.module = torch.export.load(str(path)).module().to(device)
        except Exception as exc:
            raise UsageError(f"torch cannot load the program: {' '.join(str(exc).split())}",
                             where=str(path)) from None
        self.torch = torch
        self.device = device
        self.num_classes = num_classes
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(out, dict):
            candidates = [(name, tuple(t.shape)) for name, t in out.items()]
            values = dict(out)
        else:
            tensors = list(out) if isinstance(out, (tuple, list)) else [out]
            candidates = [(str(k), tuple(t.shape)) for k, t in enumerate(tensors)]
            values = {str(k): t for k, t in enumerate(tensors)}
        name = _pick_output(candidates, self.num_classes, self.path)
        return values[name].float().cpu().numpy().reshape(len(batch), -1)


def _pick_output(outputs: list[tuple[str, tuple]], num_classes: int, path: Path) -> str:
    """The output with ``num_classes`` scores per image (the first such), or a mismatch error."""
    def classes(shape) -> int | None:
        dims = [d for d in shape[1:] if d != 1]
        return dims[0] if len(dims) == 1 and isinstance(dims[0], int) else None

    for name, shape in outputs:
        if classes(shape) == num_classes:
            return name
    found = ", ".join(f"{name} {list(shape)}" for name, shape in outputs)
    raise WeightsMismatchError(f"no output of the model has {num_classes} class scores "
                               f"(outputs: {found})", where=str(path))


def open_runner(prepared: PreparedModel, device: str, num_classes: int,
                threads: int | None = None):
    cls = OnnxRunner if prepared.format == "onnx" else TorchRunner
    return cls(prepared.path, device, num_classes, threads)
