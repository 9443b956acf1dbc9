"""The published SENet models: names, aliases, Table 1, preprocessing, class order and an
architecture fingerprint, loaded from weights_manifest.yaml into typed records.

Besides the seven published models the manifest holds bundled models (the digits demo): their
weights and held-out images ship inside the package (``weights_path``, ``val_dir``, relative
to the ``senet`` package), their classes are listed (``class_order: explicit``, ``classes``) and
their errors are the measured ones.

``load_manifest()`` is the shipped manifest; ``load_manifest(path)`` reads another file of the
same form, and ``lookup``/``recognise`` (and the parity tools) take such a manifest as an
argument, None meaning the shipped one.

``python -m senet.manifest PROTOTXT...`` prints the fingerprint block for prototxts; that is how
the manifest's fingerprints were produced (a test recomputes them from ../shared).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from senet.converter.graph import CaffeNet
from senet.errors import ShapeError, UsageError


@dataclass(frozen=True)
class Fingerprint:
    parameters: int
    layers_with_blobs: int
    digest: str


@dataclass(frozen=True)
class Preprocessing:
    color: str
    mean: tuple[float, float, float]
    scale: float
    resize_shorter: int
    crop: int
    interpolation: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    aliases: tuple[str, ...]
    file_name: str
    file_size_mb: int
    top1_error: float
    top5_error: float
    tolerance: float
    timm_name: str | None
    input_shape: tuple[int, int, int, int]
    preprocessing: Preprocessing
    class_order: str
    fingerprint: Fingerprint
    title: str | None = None
    classes: tuple[str, ...] | None = None
    """Class names in output order where ``class_order`` is 'explicit'; None otherwise."""
    weights_path: str | None = None
    """The bundled caffemodel, relative to the senet package; None for published models."""
    val_dir: str | None = None
    """The bundled held-out images (one folder per class), relative to the senet package."""
    architecture: str | None = None
    """The deploy prototxt shipped in the package (optionally gzipped), relative to it."""


Manifest = Mapping[str, ModelEntry]
"""The models by canonical name, as ``load_manifest`` returns them."""


def package_path(relative: str | os.PathLike) -> Path:
    """A path given relative to the installed ``senet`` package (absolute paths unchanged)."""
    path = Path(relative)
    return path if path.is_absolute() else Path(str(resources.files("senet"))) / path


def fingerprint(net: CaffeNet) -> Fingerprint:
    """Parameter count, number of layers with blobs, and a digest of the ordered
    (layer name, blob shapes) — independent of the weights' values."""
    h = hashlib.sha256()
    count = 0
    for layer in net.layers:
        if not layer.blobs:
            continue
        count += 1
        shapes = ";".join("x".join(map(str, b.shape)) for b in layer.blobs)
        h.update(f"{layer.name}|{shapes}\n".encode())
    return Fingerprint(net.parameter_count(), count, h.hexdigest()[:16])


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """The models of a manifest file (None: the shipped weights_manifest.yaml)."""
    if path is None:
        return _shipped_manifest()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read manifest: {exc.strerror or exc}", where=str(path)) from None
    try:
        return _parse(text)
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"not a model manifest ({type(exc).__name__}: {exc})",
                         where=str(path)) from None


@lru_cache(maxsize=1)
def _shipped_manifest() -> dict[str, ModelEntry]:
    return _parse(resources.files("senet").joinpath("weights_manifest.yaml").read_text())


def _parse(text: str) -> dict[str, ModelEntry]:
    raw = yaml.safe_load(text)
    entries = {}
    for name, d in raw["models"].items():
        pre = d["preprocessing"]
        fp = d["fingerprint"]
        entries[name] = ModelEntry(
            name=name, aliases=tuple(d.get("aliases", [])), file_name=d["file_name"],
            file_size_mb=int(d["file_size_mb"]), top1_error=float(d["top1_error"]),
            top5_error=float(d["top5_error"]), tolerance=float(d["tolerance"]),
            timm_name=d.get("timm_name"), input_shape=tuple(d["input_shape"]),
            preprocessing=Preprocessing(color=pre["color"], mean=tuple(pre["mean"]),
                                        scale=float(pre["scale"]),
                                        resize_shorter=int(pre["resize_shorter"]),
                                        crop=int(pre["crop"]),
                                        interpolation=pre["interpolation"]),
            class_order=d["class_order"],
            fingerprint=Fingerprint(int(fp["parameters"]), int(fp["layers_with_blobs"]),
                                    str(fp["digest"])),
            title=d.get("title"),
            classes=tuple(map(str, d["classes"])) if d.get("classes") is not None else None,
            weights_path=d.get("weights_path"), val_dir=d.get("val_dir"),
            architecture=d.get("architecture"))
    return entries


def lookup(name: str, manifest: Manifest | None = None) -> ModelEntry:
    """A model of `manifest` (None: the shipped one) by canonical name or alias
    (case-insensitive); UsageError lists the known ones."""
    models = load_manifest() if manifest is None else manifest
    key = name.lower()
    for entry in models.values():
        if key == entry.name or key in (a.lower() for a in entry.aliases):
            return entry
    raise UsageError(f"unknown model '{name}'", hint="known: " + ", ".join(models))


def recognise(net: CaffeNet, manifest: Manifest | None = None) -> ModelEntry | None:
    """The model of `manifest` (None: the shipped one) whose architecture fingerprint the net
    matches, if any."""
    fp = fingerprint(net)
    for entry in (load_manifest() if manifest is None else manifest).values():
        if entry.fingerprint == fp:
            return entry
    return None


def _layers_with_blobs(net: CaffeNet) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [(layer.name, [tuple(b.shape) for b in layer.blobs])
            for layer in net.layers if layer.blobs]


def check_architecture(net: CaffeNet, entry: ModelEntry) -> None:
    """Raise ShapeError naming the first layer where `net` differs from the published model
    `entry` (layer order, names and blob shapes); return if the architecture matches."""
    if fingerprint(net) == entry.fingerprint:
        return
    from senet.converter.load import load_net
    if entry.architecture is None:
        raise UsageError(f"model '{entry.name}' has no architecture to compare with")
    path = package_path(entry.architecture)
    expected = _layers_with_blobs(load_net(prototxt=str(path), weights_optional=True))
    ours = _layers_with_blobs(net)
    for k, (mine, theirs) in enumerate(zip(ours, expected)):
        if mine != theirs:
            raise ShapeError(
                f"not {entry.name}: layer #{k} with weights is '{mine[0]}' {_shapes(mine[1])}, "
                f"{entry.name} has '{theirs[0]}' {_shapes(theirs[1])}")
    if len(ours) != len(expected):
        extra = ours[len(expected)] if len(ours) > len(expected) else expected[len(ours)]
        raise ShapeError(f"not {entry.name}: the file has {len(ours)} layers with weights, "
                         f"{entry.name} has {len(expected)} (first unmatched: '{extra[0]}')")
    raise ShapeError(f"not {entry.name}: the architecture fingerprint differs")


def _shapes(shapes) -> str:
    return "[" + ", ".join("x".join(map(str, s)) for s in shapes) + "]"


def _main(paths: list[str]) -> None:
    from senet.converter.load import load_net
    for path in paths:
        fp = fingerprint(load_net(prototxt=path, weights_optional=True))
        print(f"# {path}\nfingerprint:\n  parameters: {fp.parameters}\n"
              f"  layers_with_blobs: {fp.layers_with_blobs}\n  digest: \"{fp.digest}\"")


if __name__ == "__main__":
    _main(sys.argv[1:])
