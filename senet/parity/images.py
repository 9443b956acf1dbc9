"""Image decoding and Caffe-style preprocessing that reproduce the OpenCV reference pipeline.

The reference is what a Caffe evaluation script does with OpenCV::

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)                       # uint8 H x W x 3, BGR
    bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)  # shorter side -> 256
    crop = bgr[top:top + 224, left:left + 224]                      # centre crop
    blob = crop.transpose(2, 0, 1).astype(np.float32) - mean        # mean (104, 117, 123)

We decode with Pillow and resize with NumPy, so OpenCV is not a dependency of the product; the
tests hold both steps against OpenCV (bit-exact on every fixture image with Pillow 13 /
opencv-python-headless 4.14; the tests allow 1 grey level for other library versions).

Decoding rules (``cv2.imread(path, IMREAD_COLOR)``):
  * the format is decided by the file's magic bytes (JPEG or PNG), never by its extension;
  * grayscale becomes three equal channels, alpha is dropped (not composited), palettes are
    expanded, 16-bit samples keep their high byte;
  * CMYK JPEGs go through OpenCV's own CMYK -> BGR rule on the raw (Adobe-inverted) samples;
  * the EXIF orientation tag is applied; ICC profiles are ignored.
Pillow's JPEG ``draft`` mode (DCT scaling) is never used: it changes pixels.

Resizing (``cv2.resize(..., INTER_LINEAR)`` on uint8) uses half-pixel centres and OpenCV's
11-bit fixed-point weights, with its rounding: the horizontal pass is exact in int32, the
vertical pass is ``((H0 >> 4) * b0 >> 16) + ((H1 >> 4) * b1 >> 16) + 2 >> 2`` as in OpenCV's
SIMD path. Horizontally, taps left of pixel 0 or right of the last pixel are clamped together
with their weight; vertically only the row index is clamped and the weight is kept (OpenCV
does it that way, and it changes the rounding of the first and last rows when upscaling).
Only the pixels inside the crop are computed.

Every function is a plain module-level function of picklable arguments, so a
``torch.utils.data.DataLoader`` worker can call them (e.g. through ``functools.partial``).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from senet.errors import DatasetError

CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)
"""Caffe's ImageNet mean pixel, per BGR channel, subtracted after cropping."""

RESIZE_SHORTER = 256
CROP_SIZE = 224

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS

# EXIF orientation tag value -> the Pillow transpose that undoes it (values 2..8; 1 = as stored).
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# ---------------------------------------------------------------------------------------------
# decoding


def _decode(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to uint8 pixels in RGB channel order: H x W x 3, or H x W for grayscale.

    Grayscale stays single-channel so that the resize runs on one plane instead of three.
    """
    where = str(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
            if head.startswith(_JPEG_MAGIC):
                image_format = "JPEG"
            elif head.startswith(_PNG_MAGIC):
                image_format = "PNG"
            elif not head:
                raise DatasetError("cannot decode image: the file is empty", where=where)
            else:
                raise DatasetError(
                    f"cannot decode image: not a JPEG or PNG file (starts with {head[:4].hex()})",
                    where=where)
            stream.seek(0)
            image = Image.open(stream, formats=[image_format])
            image.load()
            pixels = _to_rgb_or_gray(image)
    except DatasetError:
        raise
    except MemoryError:
        raise
    except UnidentifiedImageError:
        raise DatasetError(f"cannot decode image: not a valid {image_format} file", where=where,
                           hint="corrupt or truncated file") from None
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise DatasetError(f"cannot read image: {exc.strerror or exc}", where=where) from exc
        raise DatasetError(f"cannot decode image: {_one_line(exc)}", where=where,
                           hint="corrupt or truncated file") from exc
    except Exception as exc:  # Pillow raises many kinds (SyntaxError, ValueError, ...) on bad data
        raise DatasetError(f"cannot decode image: {_one_line(exc)}", where=where,
                           hint="corrupt or truncated file") from exc
    return pixels


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _to_rgb_or_gray(image: Image.Image) -> np.ndarray:
    """Pillow image -> uint8 array (RGB or gray) with the EXIF orientation applied."""
    orientation = _orientation(image)
    mode = image.mode
    if mode == "CMYK":
        pixels = _cmyk_to_rgb(np.asarray(image))
    elif mode in ("L", "RGB"):
        pixels = np.asarray(image)
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNG: OpenCV keeps the high byte (libpng's strip_16).
        pixels = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
    elif mode in ("1", "LA", "La"):
        pixels = np.asarray(image.convert("L"))
    else:  # P, PA, RGBA, RGBa, RGBX, YCbCr, ...: expand palette / drop alpha like libpng does
        pixels = np.asarray(image.convert("RGB"))
    fix = _ORIENTATION_FIX.get(orientation)
    if fix is not None:
        pixels = _transpose_array(pixels, fix)
    return pixels


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: OpenCV ignores it too
        return 1


def _transpose_array(pixels: np.ndarray, method: Image.Transpose) -> np.ndarray:
    """Apply a Pillow transpose to an H x W (x C) array (NumPy views, copied at the end)."""
    if method == Image.Transpose.FLIP_LEFT_RIGHT:
        out = pixels[:, ::-1]
    elif method == Image.Transpose.FLIP_TOP_BOTTOM:
        out = pixels[::-1]
    elif method == Image.Transpose.ROTATE_180:
        out = pixels[::-1, ::-1]
    elif method == Image.Transpose.ROTATE_90:  # counter-clockwise
        out = np.rot90(pixels, 1)
    elif method == Image.Transpose.ROTATE_270:  # clockwise
        out = np.rot90(pixels, -1)
    elif method == Image.Transpose.TRANSPOSE:  # mirror about the main diagonal
        out = np.swapaxes(pixels, 0, 1)
    else:  # TRANSVERSE: mirror about the anti-diagonal
        out = np.swapaxes(pixels, 0, 1)[::-1, ::-1]
    return np.ascontiguousarray(out)


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's CMYK -> colour rule, applied to the samples exactly as libjpeg delivers them.

    Pillow always reads CMYK JPEGs as Adobe-inverted ("CMYK;I"), so the raw libjpeg sample is
    ``255 - pillow``; OpenCV then computes ``k - ((255 - c) * k >> 8)`` per channel.
    """
    raw = 255 - cmyk.astype(np.int32)
    k = raw[..., 3:4]
    rgb = k - (((255 - raw[..., :3]) * k) >> 8)
    return rgb.astype(np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image like ``cv2.imread(path, cv2.IMREAD_COLOR)``: uint8 H x W x 3, BGR.

    Raises DatasetError naming the file when it is missing, unreadable, not a JPEG/PNG or corrupt.
    """
    pixels = _decode(path)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, ::-1])


# ---------------------------------------------------------------------------------------------
# geometry


def resized_size(height: int, width: int, shorter: int = RESIZE_SHORTER) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``shorter``, keeping the aspect ratio.

    The other side is ``round(other * shorter / short)`` with round-half-to-even (Python's
    ``round``, the same as OpenCV's ``cvRound``): 500 x 375 -> 341 x 256.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if height <= width:
        return shorter, max(1, round(width * shorter / height))
    return max(1, round(height * shorter / width)), shorter


def center_crop_offsets(height: int, width: int, crop: int = CROP_SIZE) -> tuple[int, int]:
    """(top, left) of the centred ``crop`` x ``crop`` window: floor((size - crop) / 2)."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit in a {height} x {width} image")
    return (height - crop) // 2, (width - crop) // 2


def _linear_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """For each destination index: (first source index, second source index, w0, w1).

    Computed like OpenCV: ``f = float32((d + 0.5) * scale - 0.5)`` with ``scale = 1 / (dst/src)``
    in double, ``w = round(weight * 2048)`` in float32 with round-half-to-even.
    """
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        before = first < 0
        frac[before] = 0
        first[before] = 0
        after = first >= src - 1
        frac[after] = 0
        first[after] = src - 1
    second = np.clip(first + 1, 0, src - 1)
    first = np.clip(first, 0, src - 1)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    return first, second, w0, w1


def resize_linear(image: np.ndarray, size: tuple[int, int],
                  window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)`` for uint8 images.

    ``image``: uint8 H x W or H x W x C. ``size``: (h, w) of the resized image. ``window``:
    (top, left, height, width) of the part of the resized image to compute (default: all of it);
    the result equals ``cv2.resize(...)[top:top+height, left:left+width]``.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 H x W (x C) image, got {image.dtype} {image.shape}")
    out_h, out_w = size
    top, left, win_h, win_w = window if window is not None else (0, 0, out_h, out_w)
    if not (0 <= top and top + win_h <= out_h and 0 <= left and left + win_w <= out_w):
        raise ValueError(f"window {window} is outside the {out_h} x {out_w} output")
    y0, y1, b0, b1 = (a[top:top + win_h] for a in _linear_taps(image.shape[0], out_h, False))
    x0, x1, a0, a1 = (a[left:left + win_w] for a in _linear_taps(image.shape[1], out_w, True))

    # Work on 2-D (rows, columns * channels) arrays, and keep temporaries few: fresh large
    # arrays cost page faults, which were half of the run time in a first version.
    channels = 1 if image.ndim == 2 else image.shape[2]
    plane = image.reshape(image.shape[0], -1)
    if channels > 1:
        lanes = np.arange(channels)
        x0 = (x0[:, None] * channels + lanes).ravel()
        x1 = (x1[:, None] * channels + lanes).ravel()
        a0 = np.repeat(a0, channels)
        a1 = np.repeat(a1, channels)

    # Horizontal pass, exact in int32, on the source rows the window needs (each row once).
    rows, row_of = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    band = plane[rows]
    horizontal = np.multiply(band[:, x0], a0, dtype=np.int32)
    horizontal += np.multiply(band[:, x1], a1, dtype=np.int32)
    horizontal >>= 4

    # Vertical pass with OpenCV's rounding (see the module docstring).
    upper = horizontal[row_of[:win_h]]
    upper *= b0[:, None]
    upper >>= 16
    lower = horizontal[row_of[win_h:]]
    lower *= b1[:, None]
    lower >>= 16
    upper += lower
    upper += 2
    upper >>= 2
    return upper.astype(np.uint8).reshape((win_h, win_w) + image.shape[2:])


# ---------------------------------------------------------------------------------------------
# the pipeline


def _crop_to_blob(crop_rgb_or_gray: np.ndarray, mean: tuple[float, float, float]) -> np.ndarray:
    """uint8 RGB (or gray) crop -> float32 3 x h x w in BGR order minus the per-channel mean."""
    h, w = crop_rgb_or_gray.shape[:2]
    blob = np.empty((3, h, w), dtype=np.float32)
    for bgr_channel in range(3):
        plane = crop_rgb_or_gray
        if plane.ndim == 3:
            plane = plane[..., 2 - bgr_channel]
        np.subtract(plane, np.float32(mean[bgr_channel]), out=blob[bgr_channel], dtype=np.float32)
    return blob


def _resize_and_crop(pixels: np.ndarray, resize_shorter: int, crop: int) -> np.ndarray:
    if crop > resize_shorter:
        raise ValueError(f"crop {crop} is larger than the resized shorter side {resize_shorter}")
    size = resized_size(pixels.shape[0], pixels.shape[1], resize_shorter)
    top, left = center_crop_offsets(*size, crop)
    return resize_linear(pixels, size, (top, left, crop, crop))


def preprocess_array(image_bgr: np.ndarray, resize_shorter: int = RESIZE_SHORTER,
                     crop: int = CROP_SIZE,
                     mean: tuple[float, float, float] = CAFFE_BGR_MEAN) -> np.ndarray:
    """Caffe preprocessing of a decoded uint8 BGR H x W x 3 image -> float32 3 x crop x crop."""
    cropped = _resize_and_crop(image_bgr, resize_shorter, crop)
    return _crop_to_blob(cropped[..., ::-1], mean)


def preprocess(path: str | os.PathLike, resize_shorter: int = RESIZE_SHORTER,
               crop: int = CROP_SIZE,
               mean: tuple[float, float, float] = CAFFE_BGR_MEAN) -> np.ndarray:
    """Decode ``path`` and apply Caffe's evaluation preprocessing: float32 3 x crop x crop, BGR.

    Shorter side resized to ``resize_shorter`` (bilinear, OpenCV semantics), centre crop of
    ``crop`` pixels, minus ``mean`` per BGR channel. Raises DatasetError naming the file when it
    cannot be decoded.
    """
    pixels = _decode(path)
    return _crop_to_blob(_resize_and_crop(pixels, resize_shorter, crop), mean)

