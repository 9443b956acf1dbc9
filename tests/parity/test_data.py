"""ImageNet validation layouts, labels and class orders (senet.parity.data).

Known values come from the fixture files (shared/fixtures/imagenet_labels and imagenet_sample):
n01440764 (tench) is sorted class 0 and devkit class 448 (line 449 of devkit_order_synsets.txt);
ILSVRC2012_val_00000001..3 are devkit 489, 360, 170 (ILSVRC2017_val.txt) = sorted 65, 970, 230
(val_full.txt). Tests that read the fixtures are skipped when ../shared is absent.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from senet.errors import DatasetError, UsageError
from senet.classes import class_index, class_order, remap_table
from senet.parity.data import (Sample, detect_layout, discover, read_labels_file,
                               shipped_val_labels)
from senet.parity.images import load_image, preprocess

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LABEL_FIXTURES = SHARED / "fixtures" / "imagenet_labels"
SAMPLE_FIXTURES = SHARED / "fixtures" / "imagenet_sample"
PACKAGE_LABELS = Path(__file__).resolve().parents[2] / "senet" / "parity" / "labels"
needs_fixtures = pytest.mark.skipif(not LABEL_FIXTURES.is_dir() or not SAMPLE_FIXTURES.is_dir(),
                                    reason=f"label fixtures absent: {LABEL_FIXTURES}")

TENCH, KIT_FOX, SEA_SNAKE = "n01440764", "n02119789", "n01751748"
VAL_1_TO_3_DEVKIT = [489, 360, 170]
VAL_1_TO_3_SORTED = [65, 970, 230]


# --- class orders and the shipped tables --------------------------------------------------------


def test_class_orders_hold_known_wnids():
    devkit, ordered = class_order("devkit"), class_order("sorted")
    assert len(devkit) == len(set(devkit)) == 1000 and sorted(devkit) == ordered
    assert devkit[0] == KIT_FOX and ordered[0] == TENCH
    assert class_index(TENCH, "sorted") == 0
    assert class_index(TENCH, "devkit") == 448       # devkit_order_synsets.txt line 449
    assert class_index(SEA_SNAKE, "devkit") == 489 and class_index(SEA_SNAKE, "sorted") == 65
    table = remap_table("devkit", "sorted")
    assert table[448] == 0 and table[489] == 65
    np.testing.assert_array_equal(remap_table("sorted", "devkit")[table], np.arange(1000))
    with pytest.raises(DatasetError):
        class_index("n99999999")
    with pytest.raises(UsageError):
        class_order("alphabetical")


def test_shipped_labels_known_values_and_size():
    np.testing.assert_array_equal(shipped_val_labels("devkit")[:3], VAL_1_TO_3_DEVKIT)
    np.testing.assert_array_equal(shipped_val_labels("sorted")[:3], VAL_1_TO_3_SORTED)
    counts = np.bincount(shipped_val_labels(), minlength=1000)
    assert (counts == 50).all()          # ILSVRC2012 val: 50 images per class
    assert sum(p.stat().st_size for p in PACKAGE_LABELS.iterdir() if p.suffix != ".md") < 150_000


@needs_fixtures
def test_shipped_tables_rebuild_from_fixtures_byte_for_byte():
    wnids = [line.split()[0] for line in
             (LABEL_FIXTURES / "devkit_order_synsets.txt").read_text().splitlines() if line.strip()]
    assert (PACKAGE_LABELS / "devkit_synsets.txt").read_text() == "\n".join(wnids) + "\n"
    labels = np.full(50_000, -1)
    for line in (LABEL_FIXTURES / "ILSVRC2017_val.txt").read_text().splitlines():
        name, label = line.split()
        labels[int(name[15:23]) - 1] = int(label)
    assert labels.min() >= 0
    assert (PACKAGE_LABELS / "val_labels_devkit.u16").read_bytes() == labels.astype("<u2").tobytes()


@needs_fixtures
def test_shipped_labels_agree_with_caffe_val_full_through_synsets():
    """Independent source: Caffe's sorted-order val labels, mapped via its synsets.txt."""
    caffe_synsets = (SAMPLE_FIXTURES / "synsets.txt").read_text().split()
    assert caffe_synsets == class_order("sorted")
    caffe_labels = np.array([int(line.split()[1]) for line in
                             (SAMPLE_FIXTURES / "val_full.txt").read_text().splitlines()])
    np.testing.assert_array_equal(shipped_val_labels("sorted"), caffe_labels)
    ours = [class_order("devkit")[k] for k in shipped_val_labels("devkit")]
    assert ours == [caffe_synsets[k] for k in caffe_labels]


@needs_fixtures
def test_remap_table_agrees_with_chainercv_label_map():
    rows = [line.split(",") for line in
            (LABEL_FIXTURES / "caffe_senet_to_sorted_label_map.csv").read_text().splitlines()]
    table = remap_table("devkit", "sorted")
    assert all(table[int(model)] == int(ordered) for model, ordered in rows)


# --- synthetic validation folders ---------------------------------------------------------------


def _write_image(path: Path, fmt: str = "JPEG", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), value, np.uint8)).save(path, fmt)
    return path


def _labels(samples):
    return [s.label for s in samples]


def test_wnid_folder_layout(tmp_path):
    _write_image(tmp_path / TENCH / "ILSVRC2012_val_00000293.JPEG")
    _write_image(tmp_path / TENCH / "b.JPEG", "PNG")      # PNG data in a .JPEG file
    _write_image(tmp_path / KIT_FOX / "a.jpg")
    (tmp_path / KIT_FOX / "readme.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "wnid-folders"
    samples = discover(tmp_path)
    assert [s.path.relative_to(tmp_path).as_posix() for s in samples] == [
        f"{TENCH}/ILSVRC2012_val_00000293.JPEG", f"{TENCH}/b.JPEG", f"{KIT_FOX}/a.jpg"]
    assert _labels(samples) == [448, 448, 0]
    kit_fox_sorted = class_order("sorted").index(KIT_FOX)
    assert _labels(discover(tmp_path, model_order="sorted")) == [0, 0, kit_fox_sorted]
    for sample in samples:   # every discovered file decodes, including the PNG-in-.JPEG one
        assert load_image(sample.path).shape == (12, 16, 3)
        assert preprocess(sample.path).shape == (3, 224, 224)


def test_flat_layout_uses_shipped_labels(tmp_path):
    for number in (3, 1, 2):
        _write_image(tmp_path / f"ILSVRC2012_val_{number:08d}.JPEG")
    (tmp_path / "val.txt.bak").write_text("ignored")
    assert detect_layout(tmp_path) == "flat"
    samples = discover(tmp_path)
    assert [s.path.name for s in samples] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 3)]
    assert _labels(samples) == VAL_1_TO_3_DEVKIT
    assert _labels(discover(tmp_path, model_order="sorted")) == VAL_1_TO_3_SORTED
    assert _labels(discover(tmp_path, limit=2)) == VAL_1_TO_3_DEVKIT[:2]


@pytest.fixture
def flat_dir(tmp_path):
    folder = tmp_path / "val"
    for number in (1, 2, 3):
        _write_image(folder / f"ILSVRC2012_val_{number:08d}.JPEG")
    return folder


def test_caffe_val_txt_in_sorted_order(flat_dir, tmp_path):
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{n:08d}.JPEG {k}\n"
                              for n, k in zip((1, 2, 3), VAL_1_TO_3_SORTED)))
    assert detect_layout(flat_dir, labels) == "labels-file"
    assert _labels(discover(flat_dir, labels)) == VAL_1_TO_3_DEVKIT            # 'sorted' default
    assert _labels(discover(flat_dir, labels, model_order="sorted")) == VAL_1_TO_3_SORTED


def test_caffe_val_txt_in_devkit_order_and_with_wnids(flat_dir, tmp_path):
    labels = tmp_path / "ILSVRC2017_val.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{n:08d}.JPEG {k}\n"
                              for n, k in zip((1, 2, 3), VAL_1_TO_3_DEVKIT)))
    assert _labels(discover(flat_dir, labels, label_order="devkit")) == VAL_1_TO_3_DEVKIT
    # read with the wrong order the labels change: the orders really differ
    assert _labels(discover(flat_dir, labels, label_order="sorted")) != VAL_1_TO_3_DEVKIT
    wnid_list = tmp_path / "wnids.txt"
    wnid_list.write_text(f"# name wnid\nILSVRC2012_val_00000001.JPEG {SEA_SNAKE}\n\n"
                         f"ILSVRC2012_val_00000002.JPEG {TENCH}\n"
                         f"ILSVRC2012_val_00000003.JPEG {KIT_FOX}\n")
    assert _labels(discover(flat_dir, wnid_list)) == [489, 448, 0]


def test_loc_val_solution_csv(flat_dir, tmp_path):
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n"
                      f"ILSVRC2012_val_00000003,{KIT_FOX} 255 142 454 329 {KIT_FOX} 44 21 322 295\n"
                      f"ILSVRC2012_val_00000001,{SEA_SNAKE} 1 2 3 4\n"
                      f"ILSVRC2012_val_00000002,{TENCH} 5 6 7 8\n"
                      "ILSVRC2012_val_00049999,n01443537 1 1 2 2\n")   # extra rows are fine
    assert read_labels_file(labels)["ILSVRC2012_val_00000001"] == SEA_SNAKE
    assert _labels(discover(flat_dir, labels)) == [489, 448, 0]


def test_labels_file_with_relative_paths(tmp_path):
    _write_image(tmp_path / "imgs" / "x" / "one.JPEG")
    _write_image(tmp_path / "imgs" / "two.png", "PNG")
    labels = tmp_path / "list.txt"
    labels.write_text("x/one.JPEG 0\n./two.png 65\n")
    samples = discover(tmp_path / "imgs", labels)
    names = [s.path.relative_to(tmp_path / "imgs").as_posix() for s in samples]
    assert names == ["two.png", "x/one.JPEG"]
    assert _labels(samples) == [489, 448]


def test_samples_are_picklable_and_hashable(flat_dir):
    samples = discover(flat_dir)
    assert pickle.loads(pickle.dumps(samples)) == samples
    assert isinstance(samples[0], Sample) and len(set(samples)) == 3


# --- bad input: one clear line each ---------------------------------------------------------------


def _error(*args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        discover(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_empty_folders(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")
    assert "no images found" in _error(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert "no images found" in _error(tmp_path)
    (tmp_path / TENCH).mkdir()
    assert "no images found" in _error(tmp_path)
    assert "not a folder" in _error(tmp_path / "notes.txt")


def test_unknown_wnid_folder(tmp_path):
    _write_image(tmp_path / TENCH / "a.JPEG")
    _write_image(tmp_path / "n99999999" / "b.JPEG")
    _write_image(tmp_path / "train" / "c.JPEG")
    message = _error(tmp_path)
    assert "2 of 3 folders are not ILSVRC2012 class WNIDs: n99999999, train" in message


def test_images_and_class_folders_mixed(tmp_path):
    _write_image(tmp_path / TENCH / "a.JPEG")
    _write_image(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    assert "both images" in _error(tmp_path)


def test_flat_files_without_labels(tmp_path):
    _write_image(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    for name in ("holiday.jpg", "ILSVRC2012_val_00050001.JPEG", "ILSVRC2012_val_1.JPEG", "zz.png"):
        _write_image(tmp_path / name)
    message = _error(tmp_path)
    assert ("no label for 4 of 5 images: ILSVRC2012_val_00050001.JPEG, ILSVRC2012_val_1.JPEG, "
            "holiday.jpg, ...") in message


def test_labels_file_missing_some_images(flat_dir, tmp_path):
    labels = tmp_path / "val.txt"
    labels.write_text("ILSVRC2012_val_00000002.JPEG 970\n")
    assert ("no label for 2 of 3 images: ILSVRC2012_val_00000001.JPEG, "
            "ILSVRC2012_val_00000003.JPEG") in _error(flat_dir, labels)


@pytest.mark.parametrize("content,fragment", [
    ("ILSVRC2012_val_00000001.JPEG 1000\n", "outside 0..999"),
    ("ILSVRC2012_val_00000001.JPEG cat\n", "neither a class index nor a WNID"),
    ("ILSVRC2012_val_00000001.JPEG\n", "expected 'name label'"),
    ("ILSVRC2012_val_00000001.JPEG n99999999\n", "not one of the 1000"),
    ("a.JPEG 1\na.JPEG 2\n", "listed twice"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,\n", "expected 'ImageId,WNID"),
    ("\n\n", "labels file is empty"),
])
def test_bad_labels_files(flat_dir, tmp_path, content, fragment):
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    message = _error(flat_dir, labels)
    assert fragment in message and str(labels) in message


def test_missing_labels_file_and_bad_arguments(flat_dir, tmp_path):
    assert "labels file does not exist" in _error(flat_dir, tmp_path / "missing.txt")
    with pytest.raises(UsageError):
        discover(flat_dir, label_order="imagenet")
    with pytest.raises(UsageError):
        discover(flat_dir, limit=0)


def test_explicit_classes_label_by_position(tmp_path):
    for name, count in (("b", 2), ("a", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            (tmp_path / name / f"{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    samples = discover(tmp_path, classes=["b", "a", "c"])
    assert [(s.path.parent.name, s.label) for s in samples] == [("a", 1), ("b", 0), ("b", 0)]
    (tmp_path / "zz").mkdir()
    (tmp_path / "zz" / "0.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not classes of this model: zz"):
        discover(tmp_path, classes=["b", "a"])
