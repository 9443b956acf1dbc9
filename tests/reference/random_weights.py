"""Seeded, data-dependent random weights and image-like inputs for Caffe nets.

Weights are made while running the reference forward on a seeded random
image batch, so that each BatchNorm can store the real statistics of its
input and activations stay well scaled even through 50 SE blocks.  Every
returned blob is float32 (what a .caffemodel stores); the float64 reference
then computes with exactly those values.

Data-derived numbers (BatchNorm statistics, the inner-product rescale) are
rounded to 10 significant bits before use, so that last-bit differences of
BLAS summation order between machines cannot change the stored float32 blobs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .caffe_forward import layer_type, run_net
from .prototxt_text import get

__all__ = ["make_weights", "make_input", "INIT_BATCH", "LOGIT_STD"]

INIT_BATCH = 2     # images in the batch the statistics are taken from
LOGIT_STD = 3.0    # target std of every InnerProduct output (the logits)
_BN_VAR_FLOOR = 1e-3  # keeps a (near-)constant channel from blowing up on other inputs

Message = dict[str, list[Any]]


def _coarse(x: np.ndarray | float, bits: int = 10) -> np.ndarray:
    """Round to ``bits`` significant bits (exactly representable in float32)."""
    mant, expo = np.frexp(np.asarray(x, dtype=np.float64))
    return np.ldexp(np.round(mant * (1 << bits)) / (1 << bits), expo)


def _smooth(a: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Moving average of ``width`` along ``axis`` (edge-padded, same length)."""
    lo = width // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (lo + 1, width - lo - 1)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
    n = a.shape[axis]
    upper = np.take(c, np.arange(width, width + n), axis=axis)
    lower = np.take(c, np.arange(0, n), axis=axis)
    return (upper - lower) / width


def make_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float32 array like a mean-subtracted BGR image batch, values within [-128, 128].

    Spatially correlated (smoothed noise) plus pixel noise and a per-image,
    per-channel offset; deterministic for a seed.  Any shape is accepted; the
    smoothing applies to the last two axes when there are at least three.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in shape)
    field = rng.standard_normal(shape)
    if len(shape) >= 3:
        for axis in (-2, -1):
            for _ in range(2):
                field = _smooth(field, 7, axis % len(shape))
        field /= max(field.std(), 1e-12)
    offset = rng.normal(0.0, 10.0, shape[:2] + (1,) * (len(shape) - 2)) if len(shape) > 2 else 0.0
    image = 50.0 * field + 15.0 * rng.standard_normal(shape) + offset
    return np.clip(image, -128.0, 128.0).astype(np.float32)


# --------------------------------------------------------------------------- #
# Per-layer generators: (layer, bottoms (float64), shapes, rng) -> float32 blobs
# --------------------------------------------------------------------------- #

def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _conv(layer, bottoms, shapes, rng):
    fan_in = math.prod(shapes[0][1:])
    # float32 draws: SENet-154 has ~115M conv weights and float64 draws are 2x slower.
    weight = rng.standard_normal(shapes[0], dtype=np.float32)
    weight *= np.float32(math.sqrt(2.0 / fan_in))
    blobs = [weight]
    if len(shapes) > 1:
        blobs.append(_f32(rng.normal(0.0, 0.1, shapes[1])))
    return blobs


def _inner_product(layer, bottoms, shapes, rng):
    p = get(layer, "inner_product_param", {}) or {}
    transpose = bool(get(p, "transpose", False))
    w_shape = shapes[0]
    k = w_shape[0] if transpose else w_shape[1]
    weight = _f32(rng.normal(0.0, 1.0 / math.sqrt(k), w_shape))
    # Rescale so this layer's output (the logits, for the last one) has std LOGIT_STD.
    x2 = bottoms[0].reshape(-1, k)
    y = x2 @ (weight if transpose else weight.T).astype(np.float64)
    std = float(y.std())
    if std > 0 and np.isfinite(std):
        weight = _f32(weight * _coarse(LOGIT_STD / std))
    blobs = [weight]
    if len(shapes) > 1:
        blobs.append(_f32(rng.normal(0.0, 0.1, shapes[1])))
    return blobs


def _batch_norm(layer, bottoms, shapes, rng):
    x = bottoms[0]
    c = shapes[0][0]
    axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim > 1 else (0,)
    mean = x.mean(axis=axes).reshape(c)
    var = np.maximum(x.var(axis=axes).reshape(c), _BN_VAR_FLOOR)
    # A stored moving-average factor f exercises Caffe's mean*f, var*f, f rule.
    factor = float(_coarse(rng.uniform(0.5, 2.0)))
    return [_f32(_coarse(mean) * factor), _f32(_coarse(var) * factor), _f32([factor])]


def _scale(layer, bottoms, shapes, rng):
    if len(bottoms) > 1:  # only the bias blob is learned
        return [_f32(rng.normal(0.0, 0.1, shapes[0]))]
    blobs = [_f32(rng.uniform(0.5, 1.5, shapes[0]))]
    if len(shapes) > 1:
        blobs.append(_f32(rng.normal(0.0, 0.1, shapes[1])))
    return blobs


def _bias(layer, bottoms, shapes, rng):
    return [_f32(rng.normal(0.0, 0.1, shapes[0]))]


def _prelu(layer, bottoms, shapes, rng):
    return [_f32(rng.uniform(0.05, 0.3, shapes[0]))]


def _dense(layer, bottoms, shapes, rng):
    """Matrices N(0, 1/fan_in) (fan_in: the elements after the first axis), vectors
    N(0, 0.1): for layers whose blobs are plain weight matrices and biases."""
    return [_f32(rng.normal(0.0, 1.0 / math.sqrt(math.prod(s[1:]) or 1), s)) if len(s) > 1
            else _f32(rng.normal(0.0, 0.1, s)) for s in shapes]


def _fork_bn(layer, bottoms, shapes, rng):
    """The forks' BN blobs from the statistics of the layer's input, so deep nets stay well
    scaled: PSPNet's slope, bias, mean, variance; SegNet's scale and shift normalising it."""
    x = bottoms[0]
    axes = (0,) + tuple(range(2, x.ndim))
    mean = _coarse(x.mean(axis=axes)).reshape(shapes[0])
    var = _coarse(np.maximum(x.var(axis=axes), 1e-3)).reshape(shapes[0])
    gain = rng.uniform(0.5, 1.5, shapes[0])
    if len(shapes) == 2:
        scale = _coarse(gain / np.sqrt(var))
        return [scale.astype(np.float32),
                _coarse(rng.normal(0.0, 0.1, shapes[0]) - mean * scale).astype(np.float32)]
    return [gain.astype(np.float32), rng.normal(0.0, 0.1, shapes[0]).astype(np.float32),
            mean.astype(np.float32), var.astype(np.float32)]


def _normalize(layer, bottoms, shapes, rng):
    """SSD Normalize's scale U(10, 30), about the 20 SSD initialises conv4_3_norm with (an
    L2-normalised position has values near 1/sqrt(C))."""
    return [_f32(rng.uniform(10.0, 30.0, shapes[0]))]


_GENERATORS = {
    "Convolution": _conv, "InnerProduct": _inner_product, "BatchNorm": _batch_norm,
    "Scale": _scale, "Bias": _bias, "PReLU": _prelu,
    "Deconvolution": _conv, "Embed": _dense, "LSTM": _dense, "RNN": _dense,
    "ConvolutionDepthwise": _conv, "DepthwiseConvolution": _conv, "BN": _fork_bn,
    "Normalize": _normalize,
}


def make_weights(net: Message, input_shapes: dict[str, tuple[int, ...]],
                 seed: int, inputs: dict[str, np.ndarray] | None = None
                 ) -> dict[str, list[np.ndarray]]:
    """Seeded float32 weights for every parametric layer of ``net``, in Caffe's blob order.

    Generated during a float64 reference forward of ``make_input`` images
    (batch ``INIT_BATCH``, other dims from ``input_shapes``): convolutions are
    He-normal (bias N(0, 0.1)); each BatchNorm stores its input's per-channel
    mean/var times a factor f in [0.5, 2] plus f itself; Scale gamma U(0.5, 1.5),
    beta N(0, 0.1); Bias N(0, 0.1); PReLU slopes U(0.05, 0.3); inner products
    N(0, 1/sqrt(K)) rescaled so their outputs have std ``LOGIT_STD``.
    Deterministic for a given net, shapes and seed. `inputs` replaces those images (for a
    net whose batch is fixed, or whose inputs are indices or sequence markers).
    """
    seeds = np.random.SeedSequence(seed).spawn(len(input_shapes) + 1)
    rng = np.random.default_rng(seeds[0])
    if inputs is None:
        inputs = {
            name: make_input((INIT_BATCH,) + tuple(shape[1:]), int(s.generate_state(1)[0]))
            for (name, shape), s in zip(sorted(input_shapes.items()), seeds[1:])
        }
    weights: dict[str, list[np.ndarray]] = {}

    def generate(layer, bottoms, shapes):
        name = get(layer, "name")
        kind = layer_type(layer)
        if kind not in _GENERATORS:
            raise NotImplementedError(f"no weight generator for {kind!r} ({name!r})")
        weights[name] = _GENERATORS[kind](layer, bottoms, shapes, rng)
        return weights[name]

    run_net(net, inputs, generate, np.float64)
    return weights
