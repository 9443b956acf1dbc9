"""A 1000-class Caffe net whose predictions are known in advance, and validation sets for it.

The net is a nearest-prototype classifier of an image's average colour: global average pooling,
then an InnerProduct with weights 2·p_k and bias -|p_k|² for 1000 prototypes p_k (in the
mean-subtracted BGR space), so score_k = |x|² - |x - p_k|² ranks the classes by the distance of
the mean colour x to their prototypes. A solid-colour image stays exactly that colour through
Caffe's resize and crop, so each image's top-5 follow from plain float64 distances computed
here, independently of senet. ``colour_for(label, rank)`` finds an integer colour that puts
``label`` at ``rank`` of the ranking, with clear gaps between the first six distances.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from senet import manifest
from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import read_prototxt
from senet.converter.load import load_net

MEAN_BGR = np.array([104.0, 117.0, 123.0])
KIT_FOX = "n02119789"  # devkit class 0 (ILSVRC2012 devkit meta.mat order)
TENCH = "n01440764"    # sorted class 0, devkit class 448
MARGIN = 2.0           # smallest gap between consecutive squared distances among the top 6

PROTOTXT = """name: "mean-colour-nn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 1000 } }
"""


def prototypes(seed: int = 7) -> np.ndarray:
    """1000 x 3 float64 prototypes: a 10 x 10 x 10 grid with spacing 25, jittered by up to
    ±4 so that no two distances tie."""
    rng = np.random.default_rng(seed)
    levels = -100.0 + 25.0 * np.arange(10)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    # Jitter is kept to integers so that the InnerProduct weights are exact in float32.
    return grid + rng.integers(-4, 5, grid.shape)


P = prototypes()


def ranking(colour_bgr) -> tuple[np.ndarray, np.ndarray]:
    """(classes by increasing distance, squared distances) of an integer BGR colour."""
    x = np.asarray(colour_bgr, np.float64) - MEAN_BGR
    d2 = ((P - x) ** 2).sum(axis=1)
    order = np.argsort(d2, kind="stable")
    return order, d2[order]


def _clear(colour) -> bool:
    if np.any(np.asarray(colour) < 0) or np.any(np.asarray(colour) > 255):
        return False
    _, d2 = ranking(colour)
    return bool(np.all(np.diff(d2[:7]) > MARGIN))


def colour_for(label: int, rank: int) -> tuple[int, int, int]:
    """An integer BGR colour whose ranking puts ``label`` at ``rank`` (0..4), or, for
    ``rank`` >= 5, outside the top 5 (a miss)."""
    base = P[label] + MEAN_BGR
    if rank >= 5:  # the far corner of the grid: nowhere near the label
        far = int(np.argmax(((P - P[label]) ** 2).sum(axis=1)))
        candidates = [P[far] + MEAN_BGR + d for d in ([0, 0, 0], [1, 0, 0], [0, 1, 2])]
    else:
        neighbours = np.argsort(((P - P[label]) ** 2).sum(axis=1))[1:27]
        candidates = [base + t * (P[q] - P[label]) for q in neighbours
                      for t in np.linspace(0.0, 0.95, 39)]
    for c in candidates:
        colour = tuple(int(v) for v in np.round(c))
        order, _ = ranking(colour)
        where = np.flatnonzero(order == label)[0]
        if (where == rank if rank < 5 else where >= 5) and _clear(colour):
            return colour
    raise AssertionError(f"no clear colour puts class {label} at rank {rank}")


def expected_counts(cases: list[tuple[int, int]]) -> tuple[int, int]:
    """(top-1 correct, top-5 correct) for (label, rank) cases."""
    return (sum(rank == 0 for _, rank in cases), sum(rank < 5 for _, rank in cases))


def png_bytes(colour_bgr, size: tuple[int, int] = (12, 9)) -> bytes:
    """A solid-colour RGB PNG (PNG keeps the colour exact, unlike JPEG)."""
    b, g, r = colour_bgr
    image = Image.new("RGB", size, (r, g, b))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: Path, colour_bgr) -> Path:
    """Solid-colour image at ``path`` (PNG bytes whatever the suffix: decoding goes by magic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(colour_bgr))
    return path


def write_colour_net(folder: Path, name: str = "colour_nn", prototypes_=None) -> Path:
    """The nearest-prototype net as a .caffemodel written by senet's own writer."""
    protos = P if prototypes_ is None else prototypes_
    proto_path = folder / f"{name}.prototxt"
    proto_path.write_text(PROTOTXT)
    structure = read_prototxt(proto_path)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    weights = {"fc": [np.asarray(2.0 * protos, np.float32),
                      np.asarray(-(protos ** 2).sum(axis=1), np.float32)]}
    model = folder / f"{name}.caffemodel"
    write_caffemodel(model, net, weights)
    return model


def colour_entry(caffemodel: Path, name: str = "colour_nn", top1: float = 0.0,
                 top5: float = 0.0, tolerance: float = 0.0, **changes) -> manifest.ModelEntry:
    """A manifest entry for the colour net: ImageNet preprocessing, devkit class order, the
    caffemodel's fingerprint, and the given 'Table 1' errors."""
    base = manifest.lookup("se_resnet50")
    if "title" in {f.name for f in dataclasses.fields(base)}:
        changes.setdefault("title", name)
    return dataclasses.replace(
        base, name=name, aliases=(), file_name=caffemodel.name, top1_error=top1,
        top5_error=top5, tolerance=tolerance, timm_name=None,
        fingerprint=manifest.fingerprint(load_net(str(caffemodel))), **changes)


def with_entries(*entries, base=None) -> dict[str, manifest.ModelEntry]:
    """A manifest: ``base``'s models (None: the shipped ones) and ``entries``, for the
    ``manifest`` arguments of senet.manifest and senet.parity."""
    known = dict(manifest.load_manifest() if base is None else base)
    known.update({e.name: e for e in entries})
    return known


def write_manifest(folder: Path, *entries) -> Path:
    """The shipped models and ``entries`` as a manifest YAML file (``load_manifest(path)``)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value
    models = {name: plain({k: v for k, v in dataclasses.asdict(entry).items() if k != "name"})
              for name, entry in with_entries(*entries).items()}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def use_manifest(monkeypatch, folder: Path, *entries) -> Path:
    """Point senet-verify at a manifest of the shipped models plus ``entries`` for one test,
    through SENET_MANIFEST (its --manifest option's environment variable)."""
    path = write_manifest(folder, *entries)
    monkeypatch.setenv("SENET_MANIFEST", str(path))
    return path
