"""Reference forward of the Caffe forks' dense layers: BN (PSPNet's four blobs, SegNet's two),
Interp (PSPNet/DeepLab, the Residual Attention fork's second bottom), Upsample (SegNet's
unpooling with a mask bottom, the YOLO forks' nearest one), ShuffleChannel, Reorg,
ConvolutionDepthwise, ReLU6, HardSwish, Mish and SeLu.

Written from each fork's Forward_cpu: hszhao/PSPNet bn_layer.cpp, interp_layer.cpp and
util/interp.cpp (caffe_cpu_interp2), alexgkendall/caffe-segnet bn_layer.cpp and
upsample_layer.cpp, ChenYingpeng/caffe-yolov3 upsample_layer, farmingyard/ShuffleNet
shuffle_channel_layer.cpp, Intel Caffe reorg_layer.hpp (darknet's reorg_cpu), the depthwise
fork's conv_dw_layer.cpp, Synopsys hard_swish_layer.cpp and mish_layer.cpp. Loops follow
the C++ index arithmetic rather than reshapes, so they check senet's reshape formulations.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import numpy as np

from .caffe_forward import _name, _param, register_layer
from .prototxt_text import get, get_all

SEGNET_EPS = 1e-9


# ----------------------------------------------------------------------------- BN

def _segnet_bn(layer) -> bool:
    return "bn_mode" in _param(layer, "bn_param")


def _bn_shapes(layer, bottoms):
    c = bottoms[0].shape[1]
    return [(1, c, 1, 1)] * (2 if _segnet_bn(layer) else 4)


def _bn(layer, bottoms, params):
    x = bottoms[0]
    dt = x.dtype.type
    p = _param(layer, "bn_param")
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    blobs = [b.reshape(shape) for b in params]
    if _segnet_bn(layer):
        scale, shift = blobs
        if get(p, "bn_mode", "LEARN") == "INFERENCE":
            return [x * scale + shift]
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = np.square(x).mean(axis=axes, keepdims=True) - np.square(mean)  # E x² - (E x)²
        return [(x - mean) / np.sqrt(var + dt(SEGNET_EPS)) * scale + shift]
    slope, bias, mean, var = blobs
    # (var + eps) and its power -0.5 are formed in the blob's precision, as caffe_powx does
    inv_std = np.power(var + dt(np.float32(get(p, "eps", 1e-5))), dt(-0.5))
    return [(x - mean) * inv_std * slope + bias]


# ----------------------------------------------------------------------------- Interp

def _interp_size(layer, bottoms) -> tuple[tuple[int, int], tuple[int, int], int]:
    p = _param(layer, "interp_param")
    x = bottoms[0]
    pad_beg, pad_end = int(get(p, "pad_beg", 0)), int(get(p, "pad_end", 0))
    if pad_beg > 0 or pad_end > 0:
        raise ValueError(f"{_name(layer)}: Interp pads must be <= 0")
    eff = tuple(s + pad_beg + pad_end for s in x.shape[2:])
    if "height" in p and "width" in p:
        return eff, (int(get(p, "height")), int(get(p, "width"))), -pad_beg
    if len(bottoms) == 2:
        return eff, tuple(bottoms[1].shape[2:]), -pad_beg
    out = list(eff)
    if "shrink_factor" in p:
        out = [(o - 1) // int(get(p, "shrink_factor")) + 1 for o in out]
    if "zoom_factor" in p:
        z = int(get(p, "zoom_factor"))
        out = [o + (o - 1) * (z - 1) for o in out]
    return eff, tuple(out), -pad_beg


def _interp(layer, bottoms, params):
    x = bottoms[0]
    (h1, w1), (h2, w2), start = _interp_size(layer, bottoms)
    crop = x[:, :, start:start + h1, start:start + w1]
    if (h1, w1) == (h2, w2):
        return [crop.copy()]
    out = np.empty(x.shape[:2] + (h2, w2), x.dtype)
    rh = np.float32((h1 - 1) / (h2 - 1)) if h2 > 1 else np.float32(0)
    rw = np.float32((w1 - 1) / (w2 - 1)) if w2 > 1 else np.float32(0)
    one = x.dtype.type(1)
    for i in range(h2):
        hr = np.float32(rh * np.float32(i))  # float products, as the C++ computes them
        h = int(hr)
        hp = 1 if h < h1 - 1 else 0
        hl = x.dtype.type(hr - h)
        for j in range(w2):
            wr = np.float32(rw * np.float32(j))
            w = int(wr)
            wp = 1 if w < w1 - 1 else 0
            wl = x.dtype.type(wr - w)
            out[:, :, i, j] = ((one - hl) * ((one - wl) * crop[:, :, h, w]
                                             + wl * crop[:, :, h, w + wp])
                               + hl * ((one - wl) * crop[:, :, h + hp, w]
                                       + wl * crop[:, :, h + hp, w + wp]))
    return [out]


# ----------------------------------------------------------------------------- Upsample

def _upsample(layer, bottoms, params):
    p = _param(layer, "upsample_param")
    x = bottoms[0]
    n, c, h, w = x.shape
    if len(bottoms) == 1:  # YOLO forks: out[h, w] = in[h / s, w / s]
        s = int(get(p, "scale", 2))
        rows = np.arange(h * s) // s
        cols = np.arange(w * s) // s
        return [x[:, :, rows][:, :, :, cols]]
    if "upsample_h" in p and "upsample_w" in p:
        oh, ow = int(get(p, "upsample_h")), int(get(p, "upsample_w"))
    else:
        sh = int(get(p, "scale_h", get(p, "scale", 2)))
        sw = int(get(p, "scale_w", get(p, "scale", 2)))
        oh = h * sh - int(bool(get(p, "pad_out_h", False)))
        ow = w * sw - int(bool(get(p, "pad_out_w", False)))
    mask = bottoms[1].reshape(n * c, h * w)
    values = x.reshape(n * c, h * w)
    top = np.zeros((n * c, oh * ow), x.dtype)
    rows = np.arange(n * c)
    for i in range(h * w):  # in bottom order: a repeated index keeps the later value
        index = mask[:, i].astype(np.int64)
        if (index >= oh * ow).any() or (index < 0).any():
            raise ValueError(f"{_name(layer)}: upsample index out of range")
        top[rows, index] = values[:, i]
    return [top.reshape(n, c, oh, ow)]


# ----------------------------------------------------------------------------- moves

def _shuffle_channel(layer, bottoms, params):
    x = bottoms[0]
    group = int(get(_param(layer, "shuffle_channel_param"), "group", 1))
    columns = x.shape[1] // group
    out = np.empty_like(x)
    for i in range(group):
        for j in range(columns):
            out[:, j * group + i] = x[:, i * columns + j]
    return [out]


def _reorg(layer, bottoms, params):
    p = _param(layer, "reorg_param")
    s, reverse = int(get(p, "stride")), bool(get(p, "reverse", False))
    x = bottoms[0]
    n, c, h, w = x.shape
    part = c // (s * s)
    flat_in = x.reshape(-1)
    flat_out = np.empty_like(flat_in)
    # reorg_cpu(bottom, W, H, C, N, s, forward = reverse, top), darknet's index arithmetic
    b, k, j, i = np.meshgrid(np.arange(n), np.arange(c), np.arange(h), np.arange(w),
                             indexing="ij")
    in_index = i + w * (j + h * (k + c * b))
    c2, offset = k % part, k // part
    w2, h2 = i * s + offset % s, j * s + offset // s
    out_index = w2 + w * s * (h2 + h * s * (c2 + part * b))
    if reverse:
        flat_out[out_index.ravel()] = flat_in[in_index.ravel()]
        return [flat_out.reshape(n, part, h * s, w * s)]
    flat_out[in_index.ravel()] = flat_in[out_index.ravel()]
    return [flat_out.reshape(n, c * s * s, h // s, w // s)]


# ----------------------------------------------------------------------------- depthwise

def _depthwise_geometry(layer):
    p = _param(layer, "convolution_param")

    def pair(key, default):
        h, w = f"{key}_h", f"{key}_w"
        if h in p and w in p:
            return int(get(p, h)), int(get(p, w))
        values = [int(v) for v in get_all(p, "kernel_size" if key == "kernel" else key)]
        if not values:
            return default, default
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])

    return (pair("kernel", None), pair("stride", 1), pair("pad", 0), pair("dilation", 1),
            bool(get(p, "bias_term", True)))


def _multiplier(layer, channels: int) -> int:
    """Output channels per input channel: 1 for conv_dw_layer.cpp (no group field), else
    num_output / group of Synopsys' BaseConvolution form (group must be the channels)."""
    p = _param(layer, "convolution_param")
    if "group" not in p:
        return 1
    if int(get(p, "group")) != channels:
        raise ValueError(f"{_name(layer)}: the reference covers group == channels only")
    return int(get(p, "num_output")) // channels


def _depthwise_shapes(layer, bottoms):
    (kh, kw), _, _, _, bias = _depthwise_geometry(layer)
    c = bottoms[0].shape[1] * _multiplier(layer, bottoms[0].shape[1])
    return [(c, 1, kh, kw)] + ([(c,)] if bias else [])


def _depthwise(layer, bottoms, params):
    """conv_dw_layer.cpp: output channel c is input channel c correlated with filter c; with
    a multiplier m, output channel c·m + k is input channel c with filter c·m + k."""
    x = bottoms[0]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias = _depthwise_geometry(layer)
    x = np.repeat(x, _multiplier(layer, x.shape[1]), axis=1)
    n, c, h, w = x.shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, c, oh, ow), x.dtype)
    weight = params[0]
    for a in range(kh):
        for b in range(kw):
            window = xp[:, :, a * dh:a * dh + sh * (oh - 1) + 1:sh,
                        b * dw:b * dw + sw * (ow - 1) + 1:sw]
            out += window * weight[:, 0, a, b].reshape(1, c, 1, 1)
    if bias:
        out += params[1].reshape(1, c, 1, 1)
    return [out]


# ----------------------------------------------------------------------------- activations

def _relu6(layer, bottoms, params):
    return [np.minimum(np.maximum(bottoms[0], 0), 6)]


def _hard_swish(layer, bottoms, params):
    x = bottoms[0]
    return [x * np.minimum(np.maximum(x + 3, 0), 6) / 6]


def _mish(layer, bottoms, params):
    x = bottoms[0]
    # the fork's thresholded softplus: x above 20, e^x below -20
    soft = np.where(x > 20, x, np.where(x < -20, np.exp(np.minimum(x, 0)),
                                        np.log1p(np.exp(np.minimum(x, 20)))))
    return [x * np.tanh(soft)]


def _selu(layer, bottoms, params):
    x = bottoms[0]
    dt = x.dtype.type
    alpha, scale = dt(1.6732632423543772848170429916717), dt(1.0507009873554804934193349852946)
    return [scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))]


def _mul(layer, bottoms, params):
    """mul_layer.cpp: each top index maps to both bottoms with size-1 axes held at 0."""
    if len(bottoms) != 2:
        raise ValueError(f"{_name(layer)}: the reference covers two-bottom Mul only")
    a, b = bottoms
    shape = np.broadcast_shapes(a.shape, b.shape)
    return [np.broadcast_to(a, shape) * np.broadcast_to(b, shape)]


register_layer("BN", _bn, _bn_shapes)
register_layer("Mul", _mul)
register_layer("Interp", _interp)
register_layer("Upsample", _upsample)
register_layer("ShuffleChannel", _shuffle_channel)
register_layer("Reorg", _reorg)
for _kind in ("ConvolutionDepthwise", "DepthwiseConvolution"):
    register_layer(_kind, _depthwise, _depthwise_shapes)
register_layer("ReLU6", _relu6)
register_layer("HardSwish", _hard_swish)
register_layer("Mish", _mish)
for _kind in ("SeLu", "SELU"):
    register_layer(_kind, _selu)
