"""Decoding and Caffe preprocessing (senet.parity.images) against the OpenCV reference pipeline.

The reference is ``cv2.imread(IMREAD_COLOR)`` + ``cv2.resize(INTER_LINEAR)`` + centre crop; the
comparisons allow 1 grey level (with Pillow 13 / OpenCV 4.14 they are bit-exact). Tests that need
OpenCV or the shared fixtures are skipped with the reason when those are absent.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from senet.errors import DatasetError
from senet.parity.images import (CAFFE_BGR_MEAN, center_crop_offsets, load_image, preprocess,
                                 preprocess_array, resize_linear, resized_size)

try:
    import cv2
except ImportError:  # the product does not need OpenCV; only these comparisons do
    cv2 = None

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SAMPLE = SHARED / "fixtures" / "imagenet_sample"
SAMPLE_IMAGES = sorted(
    p for sub in ("rgb_by_synset", "grayscale_by_synset", "non_imagenet_cmyk")
    for p in (SAMPLE / sub).glob("*") if p.is_file())

needs_cv2 = pytest.mark.skipif(cv2 is None,
                               reason="OpenCV (opencv-python-headless) is not installed")
needs_samples = pytest.mark.skipif(not SAMPLE_IMAGES, reason=f"fixture images absent: {SAMPLE}")
MEAN = np.array(CAFFE_BGR_MEAN, dtype=np.float32)[:, None, None]


def reference_crop(bgr: np.ndarray, shorter: int = 256, crop: int = 224) -> np.ndarray:
    """OpenCV resize + centre crop of a BGR image: uint8 crop x crop x 3."""
    h, w = resized_size(*bgr.shape[:2], shorter)
    resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = center_crop_offsets(h, w, crop)
    return resized[top:top + crop, left:left + crop]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# --- fixture images against OpenCV -------------------------------------------------------------


@needs_cv2
@needs_samples
@pytest.mark.parametrize("path", SAMPLE_IMAGES, ids=[p.name for p in SAMPLE_IMAGES])
def test_sample_image_matches_opencv_pipeline(path):
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR)
    decoded = load_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == reference.shape
    assert max_abs_diff(decoded, reference) <= 1

    crop_ref = reference_crop(reference)
    blob = preprocess(path)
    assert blob.dtype == np.float32 and blob.shape == (3, 224, 224)
    crop_ours = np.rint(blob + MEAN).astype(np.int64).transpose(1, 2, 0)
    assert max_abs_diff(crop_ours, crop_ref) <= 1
    blob_ref = crop_ref.transpose(2, 0, 1).astype(np.float32) - MEAN
    assert max_abs_diff(blob, blob_ref) <= 1.0
    # the array entry point agrees with the path entry point exactly
    np.testing.assert_array_equal(preprocess_array(decoded), blob)


@needs_samples
def test_grayscale_and_cmyk_fixtures_are_what_they_claim():
    """Guards the fixture set itself: the decoder paths under test are really exercised."""
    modes = {p.name: Image.open(p).mode for p in SAMPLE_IMAGES}
    assert modes["pil_sample_cmyk.jpg"] == "CMYK"
    assert sum(mode == "L" for mode in modes.values()) == 6


# --- resize against cv2.resize on random images -----------------------------------------------


@needs_cv2
@pytest.mark.parametrize("seed", range(8))
def test_resize_linear_matches_cv2_resize(seed):
    rng = np.random.default_rng(seed)
    for _ in range(12):
        src_h, src_w = (int(v) for v in rng.integers(1, 600, size=2))
        dst_h, dst_w = (int(v) for v in rng.integers(1, 400, size=2))
        channels = int(rng.choice([1, 3]))
        shape = (src_h, src_w) if channels == 1 else (src_h, src_w, 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = cv2.resize(image, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)
        ours = resize_linear(image, (dst_h, dst_w))
        assert ours.shape == expected.shape
        assert max_abs_diff(ours, expected) <= 1, (shape, dst_h, dst_w)


@needs_cv2
@pytest.mark.parametrize("src,dst", [
    ((375, 500), (256, 341)),   # typical ImageNet downscale
    ((188, 250), (256, 340)),   # upscale: first/last rows keep their weights
    ((768, 512), (384, 256)),   # exactly 2x: OpenCV switches to INTER_AREA, same result
    ((256, 300), (256, 300)),   # same size: OpenCV copies
    ((1, 1), (256, 256)),
    ((2, 700), (256, 89600 // 1000)),
])
def test_resize_linear_edge_cases_match_cv2(src, dst):
    image = np.random.default_rng(1).integers(0, 256, size=src + (3,), dtype=np.uint8)
    expected = cv2.resize(image, dst[::-1], interpolation=cv2.INTER_LINEAR)
    assert max_abs_diff(resize_linear(image, dst), expected) <= 1
    window = (dst[0] // 4, dst[1] // 3, dst[0] // 2, dst[1] // 2)
    top, left, h, w = window
    expected_window = expected[top:top + h, left:left + w]
    assert max_abs_diff(resize_linear(image, dst, window), expected_window) <= 1


# --- resize properties that need no OpenCV ------------------------------------------------------


def test_resize_keeps_a_constant_image_constant():
    image = np.full((375, 500, 3), 77, dtype=np.uint8)
    assert (resize_linear(image, (256, 341)) == 77).all()
    assert (resize_linear(image, (900, 1200)) == 77).all()


def test_resize_same_size_is_identity_and_halving_averages_2x2_blocks():
    image = np.random.default_rng(2).integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(image, (64, 48)), image)
    blocks = image.astype(np.int64).reshape(32, 2, 24, 2, 3).sum(axis=(1, 3))
    np.testing.assert_array_equal(resize_linear(image, (32, 24)), (blocks + 2) >> 2)


def test_resize_window_equals_slice_of_full_resize():
    image = np.random.default_rng(3).integers(0, 256, size=(333, 500), dtype=np.uint8)
    full = resize_linear(image, (256, 384))
    np.testing.assert_array_equal(resize_linear(image, (256, 384), (16, 80, 224, 224)),
                                  full[16:240, 80:304])


def test_resized_size_and_crop_offsets():
    assert resized_size(375, 500) == (256, 341)        # 341.33
    assert resized_size(500, 335) == (382, 256)        # 382.09
    assert resized_size(512, 765) == (256, 382)        # 382.5: round half to even
    assert resized_size(512, 767) == (256, 384)        # 383.5: round half to even
    assert resized_size(188, 250) == (256, 340)        # upscale, 340.43
    assert resized_size(300, 300) == (256, 256)
    assert center_crop_offsets(256, 341) == (16, 58)   # floor(117 / 2)
    assert center_crop_offsets(256, 256) == (16, 16)
    with pytest.raises(ValueError):
        center_crop_offsets(200, 300, 224)


def test_preprocess_layout_and_mean(tmp_path):
    """BGR channel order, CHW layout and the per-channel mean, on a two-colour PNG."""
    rgb = np.zeros((300, 400, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50   # R, G, B
    path = tmp_path / "flat.png"
    Image.fromarray(rgb).save(path)
    blob = preprocess(path)
    assert blob.shape == (3, 224, 224) and blob.dtype == np.float32
    assert (blob[0] == 50 - 104).all()      # B
    assert (blob[1] == 100 - 117).all()     # G
    assert (blob[2] == 200 - 123).all()     # R
    assert preprocess(path, resize_shorter=320, crop=320).shape == (3, 320, 320)


def test_preprocess_is_picklable_for_dataloader_workers(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((30, 40, 3), 9, np.uint8)).save(path)
    function = pickle.loads(pickle.dumps(functools.partial(preprocess, crop=224)))
    assert function(path).shape == (3, 224, 224)


# --- decoder cases: PNG in a .JPEG, EXIF orientation, PNG modes --------------------------------


def _random_rgb(h=30, w=40, seed=4) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@needs_cv2
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_imread(tmp_path, fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"oriented.{fmt.lower()}"
    _random_rgb().save(path, fmt, exif=exif.tobytes())
    decoded = load_image(path)
    assert decoded.shape == ((30, 40, 3) if orientation < 5 else (40, 30, 3))
    np.testing.assert_array_equal(decoded, cv2.imread(str(path), cv2.IMREAD_COLOR))


def _save_mode(path: Path, mode: str) -> None:
    rng = np.random.default_rng(5)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)).save(path, "PNG")
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)).save(path, "PNG")
    else:
        _random_rgb().convert(mode).save(path, "PNG")


@needs_cv2
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "1", "I;16"])
def test_png_modes_decode_like_imread(tmp_path, mode):
    path = tmp_path / "image.png"
    _save_mode(path, mode)
    np.testing.assert_array_equal(load_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


@needs_cv2
def test_png_data_inside_a_jpeg_named_file(tmp_path):
    path = tmp_path / "n02105855_2933.JPEG"   # ImageNet has such a file
    _random_rgb().save(path, "PNG")
    assert path.read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_array_equal(load_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert preprocess(path).shape == (3, 224, 224)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.jpg"
    _random_rgb().convert("L").save(path, "JPEG")
    decoded = load_image(path)
    assert decoded.shape == (30, 40, 3)
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()
    blob = preprocess(path) + MEAN
    assert np.array_equal(blob[0], blob[1]) and np.array_equal(blob[1], blob[2])


# --- bad files ----------------------------------------------------------------------------------


def _assert_one_line_error(path: Path, fragment: str) -> None:
    for function in (load_image, preprocess):
        with pytest.raises(DatasetError) as info:
            function(path)
        message = str(info.value)
        assert "\n" not in message
        assert str(path) in message and fragment in message


def test_corrupt_jpeg_names_the_file(tmp_path):
    path = tmp_path / "ILSVRC2012_val_00000001.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    _assert_one_line_error(path, "cannot decode image")


def test_truncated_jpeg_is_reported_as_corrupt(tmp_path):
    good = tmp_path / "good.jpg"
    _random_rgb(200, 200).save(good, "JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _assert_one_line_error(path, "truncated")


def test_not_an_image_empty_and_missing_files(tmp_path):
    text = tmp_path / "notes.JPEG"
    text.write_text("not a picture")
    _assert_one_line_error(text, "not a JPEG or PNG")
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    _assert_one_line_error(empty, "empty")
    _assert_one_line_error(tmp_path / "missing.JPEG", "cannot read image")
