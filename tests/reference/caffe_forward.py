"""Independent NumPy implementation of Caffe's TEST-phase forward pass.

The network is the dict produced by ``prototxt_text.parse_prototxt``; weights
are Caffe parameter blobs per layer name, in Caffe's blob order.  Every layer
follows the arithmetic of BVLC Caffe's CPU implementation (plus the Axpy and
Permute layers of the SENet and SSD forks).  All arithmetic happens in the
requested ``dtype``: inputs and weights are cast to it and every intermediate
stays in it, so running in float32 measures pure rounding drift against the
float64 run.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .prototxt_text import get, get_all

__all__ = [
    "forward", "run_net", "net_layers", "layer_type", "is_active",
    "param_shapes", "pooled_size", "FLT_MAX", "SUPPORTED_TYPES",
    "V1_TYPE_NAMES",
]

Message = dict[str, list[Any]]
# blob_source(layer, bottoms, expected_shapes) -> parameter blobs of that layer
BlobSource = Callable[[Message, list[np.ndarray], list[tuple[int, ...]]], list[np.ndarray]]

FLT_MAX = float(np.finfo(np.float32).max)  # Caffe's -FLT_MAX initialises MAX pooling

# V1LayerParameter.LayerType enum names -> the V2 type strings they mean.
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DATA": "Data", "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

DATA_LAYER_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData",
                    "WindowData", "AnnotatedData", "VideoData"}


# --------------------------------------------------------------------------- #
# Net structure
# --------------------------------------------------------------------------- #

def net_layers(net: Message) -> list[Message]:
    """Return the layer messages of a V2 (``layer``) or V1 (``layers``) net, in order."""
    if net.get("layer") and net.get("layers"):
        raise ValueError("net uses both 'layer' (V2) and 'layers' (V1) fields")
    return get_all(net, "layer") or get_all(net, "layers")


def layer_type(layer: Message) -> str:
    """Return the layer's type as a V2 string, translating V1 enum names."""
    raw = get(layer, "type", "")
    return V1_TYPE_NAMES.get(raw, raw)


def _rule_matches(rule: Message, phase: str, level: int, stages: set[str]) -> bool:
    """True when a NetStateRule admits the given state (Caffe's StateMeetsRule)."""
    if "phase" in rule and get(rule, "phase") != phase:
        return False
    if "min_level" in rule and level < get(rule, "min_level"):
        return False
    if "max_level" in rule and level > get(rule, "max_level"):
        return False
    if any(s not in stages for s in get_all(rule, "stage")):
        return False
    return not any(s in stages for s in get_all(rule, "not_stage"))


def is_active(layer: Message, phase: str = "TEST", level: int = 0,
              stages: frozenset[str] = frozenset()) -> bool:
    """True when Caffe's include/exclude rules keep the layer in this net state."""
    include, exclude = get_all(layer, "include"), get_all(layer, "exclude")
    if include and exclude:
        raise ValueError(f"layer {get(layer, 'name')!r} has both include and exclude")
    if include:
        return any(_rule_matches(r, phase, level, set(stages)) for r in include)
    return not any(_rule_matches(r, phase, level, set(stages)) for r in exclude)


# --------------------------------------------------------------------------- #
# Small shared helpers
# --------------------------------------------------------------------------- #

def _name(layer: Message) -> str:
    return get(layer, "name", "<unnamed>")


def _param(layer: Message, key: str) -> Message:
    return get(layer, key, {}) or {}


def _axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D blob")
    return axis + ndim if axis < 0 else axis


def _along(vec: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """View ``vec`` so that it broadcasts against an ``ndim`` blob starting at ``axis``."""
    return vec.reshape((1,) * axis + vec.shape + (1,) * (ndim - axis - vec.ndim))


def _covered_shape(shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
    """Dims of ``shape`` covered by (axis, num_axes), num_axes -1 meaning 'to the end'."""
    axis = _axis(axis, len(shape))
    if num_axes < -1:
        raise ValueError(f"num_axes must be >= -1, got {num_axes}")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ValueError(f"axis {axis} + num_axes {num_axes} exceeds {len(shape)} dims")
    return tuple(shape[axis:end])


def _spatial(p: Message, key: str, h_key: str | None, w_key: str | None,
             default: int | None) -> tuple[int, int]:
    """Read a per-spatial-axis conv field: explicit _h/_w, else 0, 1 or 2 repeated values."""
    if h_key and (h_key in p or w_key in p):
        if not (h_key in p and w_key in p):
            raise ValueError(f"{h_key} and {w_key} must be given together")
        return int(get(p, h_key)), int(get(p, w_key))
    values = [int(v) for v in get_all(p, key)]
    if not values:
        if default is None:
            raise ValueError(f"missing {key}")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"{key} has {len(values)} values; only 2-D convolution is supported")


# --------------------------------------------------------------------------- #
# Parameter shapes (Caffe's canonical blob shapes per layer)
# --------------------------------------------------------------------------- #

def _scale_like_shapes(layer: Message, bottoms: list[np.ndarray], key: str,
                       own_blob: bool, with_bias: bool) -> list[tuple[int, ...]]:
    """Blob shapes of Scale/Bias: a learned blob only when there is one bottom."""
    p = _param(layer, key)
    if len(bottoms) > 1:
        return [tuple(bottoms[1].shape)] if with_bias else []
    shape = _covered_shape(bottoms[0].shape, int(get(p, "axis", 1)), int(get(p, "num_axes", 1)))
    return [shape] * (int(own_blob) + int(with_bias))


def param_shapes(layer: Message, bottoms: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Canonical shapes of the layer's parameter blobs, in Caffe's order ([] if none)."""
    kind = layer_type(layer)
    if kind in _PARAM_SHAPES:
        return _PARAM_SHAPES[kind](layer, bottoms)
    if kind == "InnerProduct":
        p = _param(layer, "inner_product_param")
        x = bottoms[0]
        k = math.prod(x.shape[_axis(int(get(p, "axis", 1)), x.ndim):])
        n = int(get(p, "num_output"))
        w = (k, n) if get(p, "transpose", False) else (n, k)
        return [w, (n,)] if get(p, "bias_term", True) else [w]
    if kind == "BatchNorm":
        c = bottoms[0].shape[1] if bottoms[0].ndim > 1 else 1
        return [(c,), (c,), (1,)]
    if kind == "Scale":
        bias = bool(get(_param(layer, "scale_param"), "bias_term", False))
        return _scale_like_shapes(layer, bottoms, "scale_param", True, bias)
    if kind == "Bias":
        return _scale_like_shapes(layer, bottoms, "bias_param", True, False)
    if kind == "PReLU":
        shared = get(_param(layer, "prelu_param"), "channel_shared", False)
        return [(1,)] if shared else [(bottoms[0].shape[1],)]
    return []


def _cast_params(layer: Message, blobs: list[np.ndarray], shapes: list[tuple[int, ...]],
                 dtype) -> list[np.ndarray]:
    """Cast blobs to dtype and give them their canonical shapes.

    A blob stored with another shape of the same element count (legacy 4-D
    num/channels/height/width blobs, e.g. 1x1xOxK inner-product weights) is
    reshaped, as Caffe does when it loads legacy blobs.
    """
    if len(blobs) != len(shapes):
        raise ValueError(f"{_name(layer)}: expected {len(shapes)} parameter blobs, "
                         f"got {len(blobs)}")
    out = []
    for i, (blob, shape) in enumerate(zip(blobs, shapes)):
        arr = np.asarray(blob, dtype=dtype)
        if arr.shape != shape:
            if arr.size != math.prod(shape):
                raise ValueError(f"{_name(layer)}: blob {i} has shape {arr.shape}, "
                                 f"expected {shape}")
            arr = arr.reshape(shape)
        out.append(arr)
    return out


# --------------------------------------------------------------------------- #
# Inner product
# --------------------------------------------------------------------------- #

def _inner_product(layer, bottoms, params):
    p = _param(layer, "inner_product_param")
    x = bottoms[0]
    axis = _axis(int(get(p, "axis", 1)), x.ndim)
    x2 = x.reshape(math.prod(x.shape[:axis]), -1)
    weight = params[0]
    y = x2 @ weight if get(p, "transpose", False) else x2 @ weight.T
    if get(p, "bias_term", True):
        y = y + params[1]
    return [y.reshape(x.shape[:axis] + (y.shape[1],))]


# --------------------------------------------------------------------------- #
# Normalisation and affine layers
# --------------------------------------------------------------------------- #

def _batch_norm(layer, bottoms, params):
    p = _param(layer, "batch_norm_param")
    x = bottoms[0]
    dtype = x.dtype.type
    eps = dtype(get(p, "eps", 1e-5))
    # Caffe: use_global_stats defaults to (phase == TEST) but may be overridden.
    if get(p, "use_global_stats", True):
        factor = params[2].reshape(-1)[0]
        scale = dtype(0) if factor == 0 else dtype(1) / factor
        mean, var = params[0] * scale, params[1] * scale
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes)
        var = np.square(x - _along(mean, x.ndim, 1)).mean(axis=axes)
    c = 1 if x.ndim == 1 else x.shape[1]
    mean, var = mean.reshape(c), var.reshape(c)
    ax = min(1, x.ndim - 1)
    return [(x - _along(mean, x.ndim, ax)) / np.sqrt(_along(var, x.ndim, ax) + eps)]


def _scale_axis(layer: Message, key: str, x: np.ndarray, factor: np.ndarray) -> int:
    """Axis where a Scale/Bias operand starts; 0 for scalars (Caffe's special case)."""
    if factor.ndim == 0:
        return 0
    axis = _axis(int(get(_param(layer, key), "axis", 1)), x.ndim)
    if x.shape[axis: axis + factor.ndim] != factor.shape:
        raise ValueError(f"{_name(layer)}: operand shape {factor.shape} does not match "
                         f"bottom shape {x.shape} at axis {axis}")
    return axis


def _scale(layer, bottoms, params):
    x = bottoms[0]
    if len(bottoms) > 1:
        factor, bias = bottoms[1], (params[0] if params else None)
    else:
        factor, bias = params[0], (params[1] if len(params) > 1 else None)
    axis = _scale_axis(layer, "scale_param", x, factor)
    y = x * _along(factor, x.ndim, axis)
    if bias is not None:
        y = y + _along(bias, x.ndim, axis)
    return [y]


def _bias(layer, bottoms, params):
    x = bottoms[0]
    bias = bottoms[1] if len(bottoms) > 1 else params[0]
    axis = _scale_axis(layer, "bias_param", x, bias)
    return [x + _along(bias, x.ndim, axis)]


def _lrn_across(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    pre = (size - 1) // 2
    padded = np.pad(np.square(x), ((0, 0), (pre, size - 1 - pre)) + ((0, 0),) * (x.ndim - 2))
    total = np.zeros_like(x)
    for i in range(size):
        total += padded[:, i: i + x.shape[1]]
    return x * np.power(k + (alpha / size) * total, -beta)


def _lrn_within(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    # Caffe builds WITHIN_CHANNEL from sub-layers: Power(x^2) -> AVE Pooling
    # (kernel size, stride 1, pad (size-1)/2) -> Power(shift 1, scale alpha,
    # power -beta) -> Eltwise PROD with x.  k is not used.
    pre = (size - 1) // 2
    avg = _pool2d(np.square(x), "AVE", (size, size), (1, 1), (pre, pre), "CEIL")
    return x * np.power(1 + alpha * avg, -beta)


def _lrn(layer, bottoms, params):
    p = _param(layer, "lrn_param")
    size = int(get(p, "local_size", 5))
    if size % 2 == 0:
        raise ValueError(f"{_name(layer)}: LRN only supports odd local_size")
    alpha, beta = float(get(p, "alpha", 1.0)), float(get(p, "beta", 0.75))
    region = get(p, "norm_region", "ACROSS_CHANNELS")
    if region in ("ACROSS_CHANNELS", 0):
        return [_lrn_across(bottoms[0], size, alpha, beta, float(get(p, "k", 1.0)))]
    if region in ("WITHIN_CHANNEL", 1):
        return [_lrn_within(bottoms[0], size, alpha, beta)]
    raise ValueError(f"{_name(layer)}: unknown norm_region {region!r}")


# --------------------------------------------------------------------------- #
# Pooling
# --------------------------------------------------------------------------- #

def pooled_size(size: int, kernel: int, stride: int, pad: int, round_mode: str = "CEIL",
                any_pad: bool | None = None, pad_after: int | None = None) -> int:
    """Caffe's pooled length along one axis.

    ceil (or floor) of (size + 2p - k) / s, plus one; then, when the layer has
    any padding (``any_pad``, default ``pad > 0``: Caffe tests pad_h || pad_w
    for both axes), drop the last window if it would start in the padding.
    The Synopsys fork pads ``pad`` before and ``pad_after`` after the input
    (its pad_t/pad_b, pad_l/pad_r); its last-window test still uses ``pad``.
    """
    span = size + pad + (pad if pad_after is None else pad_after) - kernel
    steps = -(-span // stride) if round_mode in ("CEIL", 0) else span // stride
    pooled = steps + 1
    if (pad > 0 if any_pad is None else any_pad) and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _window_reduce(xp: np.ndarray, kernel, stride, out_hw, op) -> np.ndarray:
    """Reduce every (kernel) window of xp taken at (stride) with numpy ufunc ``op``."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    if kh * kw <= ho * wo:
        # Loop over kernel offsets: each step is one strided slab of all windows.
        acc = None
        for i in range(kh):
            for j in range(kw):
                slab = xp[:, :, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw]
                acc = slab.copy() if acc is None else op(acc, slab, out=acc)
        return acc
    # Few, large windows (e.g. global pooling): reduce each window directly.
    out = np.empty(xp.shape[:2] + (ho, wo), dtype=xp.dtype)
    for a in range(ho):
        for b in range(wo):
            win = xp[:, :, a * sh: a * sh + kh, b * sw: b * sw + kw]
            out[:, :, a, b] = op.reduce(win.reshape(win.shape[:2] + (-1,)), axis=2)
    return out


def _pool2d(x: np.ndarray, method: str, kernel, stride, pad, round_mode,
            pad_after=None) -> np.ndarray:
    """Caffe MAX/AVE pooling of an N x C x H x W blob (and the Synopsys fork's AVE_EXC_PAD,
    whose divisor counts only the window's cells inside the input)."""
    h, w = x.shape[2:]
    pad_after = pad_after or pad
    any_pad = bool(pad[0] or pad[1] or pad_after[0] or pad_after[1])
    ho = pooled_size(h, kernel[0], stride[0], pad[0], round_mode, any_pad, pad_after[0])
    wo = pooled_size(w, kernel[1], stride[1], pad[1], round_mode, any_pad, pad_after[1])
    # Pad enough that every window [o*s - p, o*s - p + k) exists in the array.
    after_h = max(0, (ho - 1) * stride[0] + kernel[0] - pad[0] - h)
    after_w = max(0, (wo - 1) * stride[1] + kernel[1] - pad[1] - w)
    widths = ((0, 0), (0, 0), (pad[0], after_h), (pad[1], after_w))
    if method == "MAX":
        # Padded cells can never win, exactly like Caffe's clipped window.
        xp = np.pad(x, widths, constant_values=-np.inf)
        out = _window_reduce(xp, kernel, stride, (ho, wo), np.maximum)
        # Caffe starts from -FLT_MAX and only replaces on '>', so an empty or
        # all -inf window yields -FLT_MAX.
        out[out == -np.inf] = -FLT_MAX
        return out
    if method in ("AVE", "AVE_EXC_PAD"):
        xp = np.pad(x, widths)
        total = _window_reduce(xp, kernel, stride, (ho, wo), np.add)
        divisor = _ave_divisor((h, w), kernel, stride, pad, (ho, wo), pad_after,
                               method == "AVE_EXC_PAD")
        return total / divisor.astype(x.dtype)
    raise NotImplementedError(f"pooling method {method!r} (Caffe CPU has only MAX and AVE)")


def _ave_divisor(size_hw, kernel, stride, pad, out_hw, pad_after, inside_only) -> np.ndarray:
    """Caffe's AVE pool_size: window clipped at size + pad_after (not at size), before clipping
    to 0; AVE_EXC_PAD's: the window's part in [0, size)."""
    counts = []
    for size, k, s, p, after, n in zip(size_hw, kernel, stride, pad, pad_after, out_hw):
        first = np.arange(n) * s - p
        last = np.minimum(first + k, size + after)
        if inside_only:
            first, last = np.maximum(first, 0), np.minimum(last, size)
        counts.append(last - first)
    return np.outer(counts[0], counts[1])


def _synopsys_pads(p: Message):
    """(before, after) pads of Synopsys' pad_t/pad_l/pad_b/pad_r when one is non-zero."""
    before = (int(get(p, "pad_t", 0)), int(get(p, "pad_l", 0)))
    after = (int(get(p, "pad_b", 0)), int(get(p, "pad_r", 0)))
    if not any(before + after):
        return None
    if any(key in p for key in ("pad", "pad_h", "pad_w")):
        raise ValueError("pad_t/pad_b/pad_l/pad_r exclude pad, pad_h and pad_w")
    return before, after


def _pooling(layer, bottoms, params):
    p = _param(layer, "pooling_param")
    x = bottoms[0]
    if x.ndim != 4:
        raise NotImplementedError(f"{_name(layer)}: pooling needs a 4-D blob")
    if get(p, "global_pooling", False):
        kernel, stride, pad, pad_after = x.shape[2:], (1, 1), (0, 0), None
    else:
        kernel = _spatial(p, "kernel_size", "kernel_h", "kernel_w", None)
        stride = _spatial(p, "stride", "stride_h", "stride_w", 1)
        pad, pad_after = _synopsys_pads(p) or (_spatial(p, "pad", "pad_h", "pad_w", 0), None)
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC", 3: "AVE_EXC_PAD"}.get(
        get(p, "pool"), get(p, "pool", "MAX"))
    round_mode = get(p, "round_mode", "CEIL")
    if "ceil_mode" in p:  # the forks' bool: false rounds down
        round_mode = "CEIL" if get(p, "ceil_mode") in (True, "true", 1) else "FLOOR"
    with np.errstate(divide="ignore", invalid="ignore"):
        y = _pool2d(x, method, tuple(kernel), tuple(stride), tuple(pad), round_mode,
                    pad_after)
    if len(get_all(layer, "top")) == 1:
        return [y]
    if method != "MAX":
        raise ValueError(f"{_name(layer)}: only MAX pooling has a mask top")
    return [y, _max_pool_mask(x, tuple(kernel), tuple(stride), tuple(pad), y.shape[2:])]


def _max_pool_mask(x: np.ndarray, kernel, stride, pad, out_hw) -> np.ndarray:
    """Caffe's argmax top: for each window clipped to the image, the index h*W + w of the
    first cell in row-major order holding the maximum, if that maximum exceeds -FLT_MAX
    (Caffe replaces its -FLT_MAX start only on '>'), else -1."""
    h, w = x.shape[2:]
    mask = np.full(x.shape[:2] + tuple(out_hw), -1, dtype=x.dtype)
    for a in range(out_hw[0]):
        for b in range(out_hw[1]):
            h0, w0 = a * stride[0] - pad[0], b * stride[1] - pad[1]
            rows = range(max(h0, 0), min(h0 + kernel[0], h))
            cols = range(max(w0, 0), min(w0 + kernel[1], w))
            if not rows or not cols:
                continue
            window = x[:, :, rows.start:rows.stop, cols.start:cols.stop]
            flat = window.reshape(window.shape[:2] + (-1,))
            first = np.argmax(flat, axis=2)  # first occurrence of the maximum
            index = (rows.start + first // len(cols)) * w + cols.start + first % len(cols)
            wins = np.take_along_axis(flat, first[..., None], axis=2)[..., 0] > -FLT_MAX
            mask[:, :, a, b] = np.where(wins, index, -1)
    return mask


# --------------------------------------------------------------------------- #
# Element-wise activations
# --------------------------------------------------------------------------- #

def _relu(layer, bottoms, params):
    x = bottoms[0]
    p = _param(layer, "relu_param")
    slope = float(get(p, "negative_slope", 0.0))
    y = np.maximum(x, 0)
    y = y + slope * np.minimum(x, 0) if slope else y
    # the Synopsys fork's relu6 caps the (leaky) ReLU at 6
    return [np.minimum(y, 6) if get(p, "relu6", False) in (True, "true") else y]


def _prelu(layer, bottoms, params):
    x = bottoms[0]
    # Slopes run along axis 1; a channel_shared (1,) blob broadcasts the same way.
    slope = _along(params[0], x.ndim, 1)
    return [np.maximum(x, 0) + slope * np.minimum(x, 0)]


def _sigmoid(layer, bottoms, params):
    # BVLC Caffe's form; equal to 1 / (1 + exp(-x)) without overflow.
    return [0.5 * np.tanh(0.5 * bottoms[0]) + 0.5]


def _tanh(layer, bottoms, params):
    return [np.tanh(bottoms[0])]


def _power(layer, bottoms, params):
    p = _param(layer, "power_param")
    power = float(get(p, "power", 1.0))
    scale = float(get(p, "scale", 1.0))
    shift = float(get(p, "shift", 0.0))
    x = bottoms[0]
    if power * scale == 0:
        # Caffe's special case: the input is ignored.
        # C's pow: NaN for a negative shift and a fractional power (Python's ** goes complex).
        with np.errstate(all="ignore"):
            value = 1.0 if power == 0 else np.power(shift, power)
        return [np.full_like(x, value)]
    y = x * scale if scale != 1 else x
    y = y + shift if shift != 0 else y
    return [np.power(y, power) if power != 1 else y.copy()]


def _dropout(layer, bottoms, params):
    # TEST phase copies; with scale_train false Caffe scales by (1 - ratio) at test.
    p = _param(layer, "dropout_param")
    if get(p, "scale_train", True):
        return [bottoms[0].copy()]
    return [bottoms[0] * (1.0 - float(get(p, "dropout_ratio", 0.5)))]


def _softmax(layer, bottoms, params):
    x = bottoms[0]
    axis = _axis(int(get(_param(layer, "softmax_param"), "axis", 1)), x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


# --------------------------------------------------------------------------- #
# Multi-blob and shape layers
# --------------------------------------------------------------------------- #

def _eltwise(layer, bottoms, params):
    p = _param(layer, "eltwise_param")
    op = get(p, "operation", "SUM")
    op = {0: "PROD", 1: "SUM", 2: "MAX"}.get(op, op)
    # In place (top == bottom[0]) Caffe initialises the top (SUM: 0, MAX: -FLT_MAX) before
    # it reads bottom[0]; PROD writes only after reading bottoms 0 and 1.
    in_place = get_all(layer, "top")[0] == get_all(layer, "bottom")[0]
    if op == "SUM":
        coeffs = [float(c) for c in get_all(p, "coeff")] or [1.0] * len(bottoms)
        if len(coeffs) != len(bottoms):
            raise ValueError(f"{_name(layer)}: {len(coeffs)} coeffs for {len(bottoms)} bottoms")
        y = np.zeros_like(bottoms[0])
        for i, (c, b) in enumerate(zip(coeffs, bottoms)):
            if i == 0 and in_place:
                continue  # the zeroed top is what Caffe reads as bottom[0]
            y += b if c == 1 else c * b
        return [y]
    if op == "PROD":
        y = bottoms[0].copy()
        for b in bottoms[1:]:
            y *= b
        return [y]
    if op == "MAX":
        y = np.full_like(bottoms[0], -FLT_MAX) if in_place else bottoms[0].copy()
        for b in bottoms[1:]:
            np.maximum(y, b, out=y)
        return [y]
    raise ValueError(f"{_name(layer)}: unknown eltwise operation {op!r}")


def _concat(layer, bottoms, params):
    p = _param(layer, "concat_param")
    axis = get(p, "concat_dim") if "concat_dim" in p else get(p, "axis", 1)
    return [np.concatenate(bottoms, axis=_axis(int(axis), bottoms[0].ndim))]


def _slice(layer, bottoms, params):
    p = _param(layer, "slice_param")
    x = bottoms[0]
    axis = get(p, "slice_dim") if "slice_dim" in p else get(p, "axis", 1)
    axis = _axis(int(axis), x.ndim)
    n_tops = len(get_all(layer, "top"))
    points = [int(v) for v in get_all(p, "slice_point")]
    if points:
        if len(points) != n_tops - 1:
            raise ValueError(f"{_name(layer)}: {len(points)} slice points for {n_tops} tops")
    else:
        if x.shape[axis] % n_tops:
            raise ValueError(f"{_name(layer)}: axis size {x.shape[axis]} not divisible "
                             f"by {n_tops} tops")
        step = x.shape[axis] // n_tops
        points = [step * i for i in range(1, n_tops)]
    return [part.copy() for part in np.split(x, points, axis=axis)]


def _split(layer, bottoms, params):
    return [bottoms[0].copy() for _ in get_all(layer, "top")]


def _flatten(layer, bottoms, params):
    p = _param(layer, "flatten_param")
    x = bottoms[0]
    start = _axis(int(get(p, "axis", 1)), x.ndim)
    end = _axis(int(get(p, "end_axis", -1)), x.ndim)
    shape = x.shape[:start] + (math.prod(x.shape[start: end + 1]),) + x.shape[end + 1:]
    return [x.reshape(shape)]


def _reshape(layer, bottoms, params):
    p = _param(layer, "reshape_param")
    x = bottoms[0]
    dims = [int(d) for d in get_all(get(p, "shape", {}) or {}, "dim")]
    axis, num_axes = int(get(p, "axis", 0)), int(get(p, "num_axes", -1))
    start = axis if axis >= 0 else x.ndim + axis + 1
    end = x.ndim if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= x.ndim:
        raise ValueError(f"{_name(layer)}: reshape range [{start}, {end}) invalid")
    new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    if new.count(-1) > 1:
        raise ValueError(f"{_name(layer)}: more than one -1 in reshape")
    shape = list(x.shape[:start]) + new + list(x.shape[end:])
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = x.size // known
    if math.prod(shape) != x.size:
        raise ValueError(f"{_name(layer)}: cannot reshape {x.shape} to {tuple(shape)}")
    return [x.reshape(shape)]


def _permute(layer, bottoms, params):
    x = bottoms[0]
    order = [int(o) for o in get_all(_param(layer, "permute_param"), "order")]
    order += [i for i in range(x.ndim) if i not in order]  # SSD appends missing axes
    return [np.ascontiguousarray(np.transpose(x, order))]


def _axpy(layer, bottoms, params):
    a, x, y = bottoms
    if a.shape[:2] != x.shape[:2] or any(d != 1 for d in a.shape[2:]):
        raise ValueError(f"{_name(layer)}: Axpy scale shape {a.shape} vs {x.shape}")
    return [_along(a.reshape(a.shape[:2]), x.ndim, 0) * x + y]


_LAYERS: dict[str, Callable] = {
    "InnerProduct": _inner_product,
    "BatchNorm": _batch_norm, "Scale": _scale, "Bias": _bias, "LRN": _lrn,
    "Pooling": _pooling, "ReLU": _relu, "PReLU": _prelu, "Sigmoid": _sigmoid,
    "TanH": _tanh, "Power": _power, "Dropout": _dropout, "Softmax": _softmax,
    "Eltwise": _eltwise, "Concat": _concat, "Slice": _slice, "Split": _split,
    "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute, "Axpy": _axpy,
}

# Layer families in their own modules (forward_*.py) add themselves with `register_layer`.
_PARAM_SHAPES: dict[str, Callable] = {}


def register_layer(kind: str, fn: Callable, shapes: Callable | None = None) -> None:
    """Add a layer type: ``fn(layer, bottoms, params) -> tops`` and, for a layer with learned
    blobs, ``shapes(layer, bottoms) -> [blob shape, ...]`` in Caffe's order. A Python layer's
    kind is "Python module.layer"."""
    if kind in _LAYERS:
        raise ValueError(f"reference layer {kind!r} registered twice")
    _LAYERS[kind] = fn
    if shapes is not None:
        _PARAM_SHAPES[kind] = shapes


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #

def _take_input(inputs: dict[str, np.ndarray], name: str, dtype) -> np.ndarray:
    if name not in inputs:
        raise KeyError(f"no array given for net input {name!r}")
    return np.array(inputs[name], dtype=dtype)


def _run_layer(layer: Message, blobs: dict[str, np.ndarray], inputs, blob_source, dtype):
    kind, name = layer_type(layer), _name(layer)
    if kind == "Input":
        return [_take_input(inputs, t, dtype) for t in get_all(layer, "top")]
    if kind in DATA_LAYER_TYPES:
        raise ValueError(f"layer {name!r}: data layer {kind!r} in a net meant for deploy; "
                         "pass a deploy prototxt with Input layers or net inputs")
    if kind == "Python":  # a Python layer is known by its module and class
        p = _param(layer, "python_param")
        kind = f"Python {get(p, 'module', '')}.{get(p, 'layer', '')}"
    fn = _LAYERS.get(kind)
    if fn is None:
        raise NotImplementedError(f"layer {name!r}: unsupported type {kind!r}")
    missing = [b for b in get_all(layer, "bottom") if b not in blobs]
    if missing:
        raise KeyError(f"layer {name!r}: bottom blob(s) {missing} not produced yet")
    bottoms = [blobs[b] for b in get_all(layer, "bottom")]
    shapes = param_shapes(layer, bottoms)
    params = _cast_params(layer, blob_source(layer, bottoms, shapes), shapes, dtype) \
        if shapes else []
    return fn(layer, bottoms, params)


def run_net(net: Message, inputs: dict[str, np.ndarray], blob_source: BlobSource,
            dtype=np.float64) -> dict[str, np.ndarray]:
    """Run the TEST-phase forward, asking ``blob_source`` for each parametric layer's blobs.

    ``blob_source(layer, bottoms, expected_shapes)`` is called once per layer that
    owns parameters, after its bottoms are computed, which lets callers create
    weights from the data (see ``random_weights``).  Returns every blob by name;
    a blob rewritten in place holds its final value.
    """
    dtype = np.dtype(dtype).type
    state = get(net, "state", {}) or {}
    level, stages = int(get(state, "level", 0)), frozenset(get_all(state, "stage"))
    blobs = {name: _take_input(inputs, name, dtype) for name in get_all(net, "input")}
    for layer in net_layers(net):
        if not is_active(layer, "TEST", level, stages):
            continue
        tops = get_all(layer, "top")
        outs = _run_layer(layer, blobs, inputs, blob_source, dtype)
        if len(outs) != len(tops):
            raise ValueError(f"layer {_name(layer)!r}: {len(tops)} tops, {len(outs)} outputs")
        for top, arr in zip(tops, outs):
            if arr.dtype != dtype:  # guard: no silent float64 promotion in float32 runs
                raise TypeError(f"layer {_name(layer)!r} produced {arr.dtype}, not {dtype}")
            blobs[top] = arr
    return blobs


def forward(net: Message, weights: dict[str, list[np.ndarray]],
            inputs: dict[str, np.ndarray], dtype=np.float64) -> dict[str, np.ndarray]:
    """Caffe TEST-phase forward of ``net`` with ``weights``; returns every blob by name.

    ``weights`` maps layer name to its parameter blobs in Caffe's order; they and
    the inputs are cast to ``dtype`` and all arithmetic stays in ``dtype``.
    """
    def from_dict(layer, bottoms, shapes):
        name = _name(layer)
        if name not in weights:
            raise KeyError(f"no weights given for layer {name!r} ({layer_type(layer)})")
        return weights[name]

    return run_net(net, inputs, from_dict, dtype)


# --------------------------------------------------------------------------- #
# Layer families kept in their own modules (forward_<family>.py, each registering its
# types with `register_layer` when imported here, one import line per family)
# --------------------------------------------------------------------------- #
from . import forward_activation  # noqa: E402,F401
from . import forward_detection  # noqa: E402,F401
from . import forward_fork  # noqa: E402,F401
from . import forward_index  # noqa: E402,F401
from . import forward_recurrent  # noqa: E402,F401
from . import forward_reduce  # noqa: E402,F401
from . import forward_roi  # noqa: E402,F401
from . import forward_spatial  # noqa: E402,F401

from . import forward_spp  # noqa: E402,F401
from . import forward_proposal  # noqa: E402,F401
from . import forward_ssd  # noqa: E402,F401

# Every layer type ``forward`` can run (V2 spelling; V1 enum names map onto these).
SUPPORTED_TYPES = frozenset(_LAYERS) | {"Input"}
