"""ImageNet (ILSVRC2012) validation sets: folder layouts, ground-truth labels, class orders.

The two class orders, ``"devkit"`` (the SENet models' outputs) and ``"sorted"`` (Caffe's
``val.txt``, torchvision), and the tables between them are ``senet.classes``'.

Labels are carried as WNIDs internally and turned into indices of the model's order only at the
end, so no label ever goes through an index of the wrong order.

``discover(val_dir)`` recognises three layouts:

* ``"wnid-folders"``: one folder per WNID (``DIR/n01440764/*.JPEG``), the label is the folder;
* ``"flat"``: ``DIR/ILSVRC2012_val_00000001.JPEG`` ... with the 50,000 ground-truth labels that
  ship in this package (``labels/``; made from the devkit's ground truth, see its README);
* ``"labels-file"``: any folder plus ``labels_file``: Caffe's ``val.txt`` (``name label`` lines,
  label a class index in ``label_order``, or a WNID), or a CSV such as Kaggle's
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the WNID is the first word of the
  prediction string).

Files count as images by their suffix (.JPEG/.jpg/.jpe/.png, any case); hidden files and folders
are ignored. The order of samples is the sorted relative path, so every run sees the same list.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from senet.classes import NUM_CLASSES, check_order, label_data, remap_table, wnid_index, wnids
from senet.errors import DatasetError, UsageError
NUM_VAL_IMAGES = 50_000
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".jpe", ".png"})
LAYOUTS = ("wnid-folders", "flat", "labels-file")

_WNID = re.compile(r"n\d{8}")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")
_SHOWN = 3  # how many offending names an error message lists


@dataclass(frozen=True)
class Sample:
    """One evaluation image and its ground-truth class in the model's class order."""

    path: Path
    label: int


# ---------------------------------------------------------------------------------------------
# the shipped ground truth


@lru_cache(maxsize=None)
def _shipped_devkit_labels() -> np.ndarray:
    labels = np.frombuffer(label_data("val_labels_devkit.u16"), dtype="<u2").astype(np.int64)
    if labels.shape != (NUM_VAL_IMAGES,) or labels.max() >= NUM_CLASSES:
        raise DatasetError("the packaged validation labels are damaged",
                           where="senet/parity/labels/val_labels_devkit.u16",
                           hint="reinstall senet")
    labels.setflags(write=False)
    return labels


def shipped_val_labels(order: str = "devkit") -> np.ndarray:
    """Ground truth of ILSVRC2012_val_00000001 ... _00050000 (element i = image i + 1), int64."""
    devkit = _shipped_devkit_labels()
    if check_order(order) == "devkit":
        return devkit.copy()
    return remap_table("devkit", order)[devkit]


# ---------------------------------------------------------------------------------------------
# labels files


def read_labels_file(path: str | os.PathLike, label_order: str = "sorted") -> dict[str, str]:
    """Read a labels file into ``{image name: WNID}``.

    Accepted: Caffe's ``val.txt`` (``name label`` per line; label is a class index in
    ``label_order`` or a WNID; blank lines and ``#`` comments skipped) and CSV files whose first
    column is the image name and whose second column starts with the WNID
    (``LOC_val_solution.csv``; an ``ImageId,...`` header is skipped). Names are kept as written
    (with or without extension, possibly with folders).
    """
    check_order(label_order, "label order")
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError("labels file does not exist", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read labels file: {exc}", where=where) from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise DatasetError("labels file is empty", where=where)
    entries = _read_csv(text, where) if "," in first else _read_caffe_list(text, label_order, where)
    labels: dict[str, str] = {}
    for name, wnid, line_no in entries:
        if wnid not in wnid_index("devkit"):
            raise DatasetError(f"'{wnid}' is not one of the 1000 ILSVRC2012 classes",
                               where=f"{where}:{line_no}")
        key = name.replace("\\", "/").removeprefix("./")
        if labels.setdefault(key, wnid) != wnid:
            raise DatasetError(f"'{name}' is listed twice with different labels",
                               where=f"{where}:{line_no}")
    return labels


def _read_caffe_list(text: str, label_order: str, where: str):
    names = wnids(label_order)
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"expected 'name label', got '{line[:60]}'",
                               where=f"{where}:{line_no}")
        name, token = parts
        if _WNID.fullmatch(token):
            yield name, token, line_no
            continue
        try:
            label = int(token)
        except ValueError:
            raise DatasetError(f"label '{token}' is neither a class index nor a WNID",
                               where=f"{where}:{line_no}") from None
        if not 0 <= label < NUM_CLASSES:
            raise DatasetError(f"class index {label} is outside 0..{NUM_CLASSES - 1}",
                               where=f"{where}:{line_no}")
        yield name, names[label], line_no


def _read_csv(text: str, where: str):
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip():
            continue
        if line_no == 1 and row[0].strip().lower() in ("imageid", "image_id", "image", "name"):
            continue
        words = row[1].split() if len(row) >= 2 else []
        if not words:
            raise DatasetError("expected 'ImageId,WNID ...'", where=f"{where}:{line_no}")
        yield row[0].strip(), words[0], line_no


# ---------------------------------------------------------------------------------------------
# folder layouts


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _list_images(folder: Path, root: Path) -> list[str]:
    """Relative POSIX paths (to ``root``) of the image files under ``folder``, any depth."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if _visible(d)]
        rel = Path(current).relative_to(root)
        found.extend((rel / f).as_posix() for f in files if _is_image(f))
    return found


def _scan_top(val_dir: Path) -> tuple[list[str], list[str]]:
    """(visible sub-folders, top-level image files) of ``val_dir``, checking that it exists."""
    if not val_dir.exists():
        raise DatasetError("validation folder does not exist", where=str(val_dir))
    if not val_dir.is_dir():
        raise DatasetError("validation path is not a folder", where=str(val_dir))
    try:
        entries = list(os.scandir(val_dir))
    except OSError as exc:
        raise DatasetError(f"cannot list folder: {exc.strerror or exc}",
                           where=str(val_dir)) from None
    folders = sorted(e.name for e in entries if _visible(e.name) and e.is_dir())
    images = sorted(e.name for e in entries if e.is_file() and _is_image(e.name))
    return folders, images


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def detect_layout(val_dir: str | os.PathLike, labels_file: str | os.PathLike | None = None) -> str:
    """Which of LAYOUTS ``val_dir`` has; DatasetError when it is none of them."""
    return _detect(Path(val_dir), labels_file)[0]


def _detect(val_dir: Path, labels_file) -> tuple[str, list[str], list[str]]:
    """(layout, visible sub-folders, top-level image files) of ``val_dir``."""
    folders, images = _scan_top(val_dir)
    if labels_file is not None:
        return "labels-file", folders, images
    class_folders = [f for f in folders if _WNID.fullmatch(f)]
    if images and class_folders:
        raise DatasetError(
            f"both images ({_few(images)}) and class folders ({_few(class_folders)}) "
            "at the top level",
            where=str(val_dir), hint="keep one layout, or pass --labels FILE")
    if images:
        return "flat", folders, images
    if folders:
        return "wnid-folders", folders, images
    raise DatasetError("no images found", where=str(val_dir),
                       hint=f"expected image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                            "or one folder per WNID")


def _wnid_folder_labels(val_dir: Path, folders: list[str]) -> dict[str, str]:
    known = wnid_index("devkit")
    unknown = [f for f in folders if f not in known]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} of {len(folders)} folders are not ILSVRC2012 class WNIDs: "
            f"{_few(unknown)}",
            where=str(val_dir),
            hint="a class-folder layout needs one folder per WNID such as n01440764/; "
                 "pass --labels FILE for other layouts")
    return {rel: folder for folder in folders for rel in _list_images(val_dir / folder, val_dir)}


def _flat_labels(images: list[str]) -> tuple[dict[str, str], list[str]]:
    devkit = wnids("devkit")
    shipped = _shipped_devkit_labels()
    labelled, missing = {}, []
    for name in images:
        match = _VAL_NAME.fullmatch(os.path.splitext(name)[0])
        number = int(match.group(1)) if match else 0
        if 1 <= number <= NUM_VAL_IMAGES:
            labelled[name] = devkit[shipped[number - 1]]
        else:
            missing.append(name)
    return labelled, missing


def _labels_file_labels(val_dir: Path, labels_file: str | os.PathLike,
                        label_order: str) -> tuple[dict[str, str], list[str]]:
    by_name = read_labels_file(labels_file, label_order)
    labelled, missing = {}, []
    for rel in _list_images(val_dir, val_dir):
        base = rel.rsplit("/", 1)[-1]
        for key in (rel, base, os.path.splitext(base)[0]):
            if key in by_name:
                labelled[rel] = by_name[key]
                break
        else:
            missing.append(rel)
    return labelled, missing


def _explicit_class_samples(val_dir: Path, classes: list[str], limit) -> list[Sample]:
    folders, _ = _scan_top(val_dir)
    position = {name: i for i, name in enumerate(classes)}
    unknown = [f for f in folders if f not in position]
    if unknown:
        raise DatasetError(f"{len(unknown)} folders are not classes of this model: "
                           f"{_few(unknown)}", where=str(val_dir),
                           hint=f"its classes are {_few(classes)}")
    labelled = {rel: folder for folder in folders
                for rel in _list_images(val_dir / folder, val_dir)}
    if not labelled:
        raise DatasetError("no images found", where=str(val_dir),
                           hint=f"expected one folder per class ({_few(classes)})")
    return [Sample(val_dir / name, position[labelled[name]]) for name in sorted(labelled)[:limit]]


def discover(val_dir: str | os.PathLike, labels_file: str | os.PathLike | None = None,
             label_order: str = "sorted", model_order: str = "devkit",
             limit: int | None = None, classes: Sequence[str] | None = None) -> list[Sample]:
    """The labelled images of an ImageNet validation folder, sorted by relative path.

    ``label_order``: the order of numeric labels in ``labels_file`` (Caffe's val.txt: 'sorted').
    ``model_order``: the order of the returned labels (the SENet models: 'devkit').
    ``limit``: keep only the first ``limit`` samples (after sorting).
    ``classes``: a model with its own classes (not ImageNet): one folder per class name, the
    label being the name's position in ``classes``.
    Every image must have a label: otherwise DatasetError says how many lack one and names a few.
    """
    check_order(label_order, "label order")
    check_order(model_order, "model class order")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be a positive number of images, got {limit}")
    val_dir = Path(val_dir)
    if classes is not None:
        return _explicit_class_samples(val_dir, list(classes), limit)
    layout, folders, images = _detect(val_dir, labels_file)
    if layout == "wnid-folders":
        labelled, missing = _wnid_folder_labels(val_dir, folders), []
    elif layout == "flat":
        labelled, missing = _flat_labels(images)
    else:
        labelled, missing = _labels_file_labels(val_dir, labels_file, label_order)
    if missing:
        hint = ("flat folders need ILSVRC2012_val_XXXXXXXX file names; pass --labels FILE "
                "(val.txt or LOC_val_solution.csv) for others" if layout == "flat" else
                f"check that {labels_file} belongs to these images")
        raise DatasetError(f"no label for {len(missing)} of {len(missing) + len(labelled)} images: "
                           f"{_few(sorted(missing))}", where=str(val_dir), hint=hint)
    if not labelled:
        raise DatasetError("no images found", where=str(val_dir))
    index = wnid_index(model_order)
    names = sorted(labelled)[:limit]
    return [Sample(val_dir / name, index[labelled[name]]) for name in names]
