"""Reference forward of Caffe's spatial layers: Convolution, Deconvolution, Im2col, Crop.

Written from BVLC's base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp, im2col_layer.cpp,
util/im2col.cpp and crop_layer.cpp. `convolution_param.axis` is the channel axis: every axis
before it is batch, every axis after it spatial (any number of them). A Convolution or
Deconvolution with several bottoms applies its one weight set to each bottom. Deconvolution is
computed as a scatter-add of each input value times the kernel (not as col2im), Convolution
and Im2col from a strided view of the zero-padded input.

Fork fields: DeepLab v1's hole (hole_h/hole_w) is the dilation; the Synopsys fork's
pad_t/pad_b/pad_l/pad_r pad a 2-D convolution differently before and after the input (they
replace pad/pad_h/pad_w).

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .caffe_forward import _axis, _name, _param, register_layer
from .prototxt_text import get, get_all


def _per_axis(p, key: str, n: int, default: int | None) -> tuple[int, ...]:
    """A field of ConvolutionParameter per spatial axis: `<key>_h`/`<key>_w` (2-D only),
    else one value for all axes, one per axis, or the default."""
    short = key.removesuffix("_size")
    h, w = f"{short}_h", f"{short}_w"
    if h in p or w in p:
        if n != 2:
            raise ValueError(f"{h}/{w} need 2 spatial axes, not {n}")
        return int(get(p, h, 0)), int(get(p, w, 0))
    values = [int(v) for v in get_all(p, key)]
    if not values:
        if default is None:
            raise ValueError(f"missing {key}")
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise ValueError(f"{len(values)} {key} values for {n} spatial axes")
    return tuple(values)


def _geometry(layer, shape: tuple[int, ...]) -> dict:
    p = _param(layer, "convolution_param")
    axis = _axis(int(get(p, "axis", 1)), len(shape))
    n = len(shape) - axis - 1
    if n < 1:
        raise ValueError(f"{_name(layer)}: no spatial axis after the channel axis")
    g = {"axis": axis, "channels": shape[axis],
         "kernel": _per_axis(p, "kernel_size", n, None),
         "pad": _per_axis(p, "pad", n, 0), "stride": _per_axis(p, "stride", n, 1),
         "dilation": _hole(p, n) or _per_axis(p, "dilation", n, 1),
         "group": int(get(p, "group", 1)), "num_output": int(get(p, "num_output", 0)),
         "bias_term": bool(get(p, "bias_term", True))}
    if min(g["kernel"]) <= 0 or min(g["stride"]) <= 0:
        raise ValueError(f"{_name(layer)}: kernel and stride must be positive")
    g["pad_after"] = g["pad"]
    before = (int(get(p, "pad_t", 0)), int(get(p, "pad_l", 0)))
    after = (int(get(p, "pad_b", 0)), int(get(p, "pad_r", 0)))
    if any(before + after):
        if n != 2 or any(key in p for key in ("pad", "pad_h", "pad_w")):
            raise ValueError(f"{_name(layer)}: pad_t/b/l/r are for 2-D and exclude pad")
        g["pad"], g["pad_after"] = before, after
    return g


def _hole(p, n: int) -> tuple[int, ...] | None:
    """DeepLab's hole per axis: hole_h/hole_w (each defaulting to 1), else hole; None if unset."""
    if "hole_h" in p or "hole_w" in p:
        return int(get(p, "hole_h", 1)), int(get(p, "hole_w", 1))
    return (int(get(p, "hole")),) * n if "hole" in p else None


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
                     pad_after: int | None = None) -> int:
    """Caffe's convolution output length: (size + 2p - (d(k-1)+1)) / s + 1, integer division
    (size + p + pad_after with Synopsys' padding after the input)."""
    after = pad if pad_after is None else pad_after
    out = (size + pad + after - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise ValueError(f"convolution output size {out} <= 0 (input {size})")
    return out


def _batched(x: np.ndarray, axis: int) -> np.ndarray:
    """x as (num, C, spatial...) with every axis before the channel axis in num."""
    return x.reshape((math.prod(x.shape[:axis]),) + x.shape[axis:])


def _columns(x: np.ndarray, g: dict) -> tuple[np.ndarray, tuple[int, ...]]:
    """Strided view (num, C, *kernel, *out) of the zero-padded (num, C, spatial...) input."""
    after = g.get("pad_after", g["pad"])
    pads = ((0, 0), (0, 0)) + tuple(zip(g["pad"], after))
    xp = np.ascontiguousarray(np.pad(x, pads))
    out = tuple(conv_output_size(s, k, st, p, d, a) for s, k, st, p, d, a in
                zip(x.shape[2:], g["kernel"], g["stride"], g["pad"], g["dilation"], after))
    spatial = xp.strides[2:]
    strides = xp.strides[:2] + tuple(d * s for d, s in zip(g["dilation"], spatial)) \
        + tuple(st * s for st, s in zip(g["stride"], spatial))
    return as_strided(xp, x.shape[:2] + g["kernel"] + out, strides, writeable=False), out


def _check_groups(layer, g: dict) -> None:
    if g["num_output"] <= 0 or g["channels"] % g["group"] or g["num_output"] % g["group"]:
        raise ValueError(f"{_name(layer)}: channels/num_output not divisible by group")


def _conv_shapes(layer, bottoms):
    g = _geometry(layer, bottoms[0].shape)
    _check_groups(layer, g)
    w = (g["num_output"], g["channels"] // g["group"]) + g["kernel"]
    return [w, (g["num_output"],)] if g["bias_term"] else [w]


def _deconv_shapes(layer, bottoms):
    g = _geometry(layer, bottoms[0].shape)
    _check_groups(layer, g)
    w = (g["channels"], g["num_output"] // g["group"]) + g["kernel"]
    return [w, (g["num_output"],)] if g["bias_term"] else [w]


def _each_bottom(layer, bottoms, one):
    if any(b.shape != bottoms[0].shape for b in bottoms):
        raise ValueError(f"{_name(layer)}: all bottoms must have one shape")
    g = _geometry(layer, bottoms[0].shape)
    return [one(b, g) for b in bottoms]


def _convolution(layer, bottoms, params):
    def one(x, g):
        cols, out = _columns(_batched(x, g["axis"]), g)
        groups, n = g["group"], cols.shape[0]
        cols = cols.reshape(n, groups, -1, math.prod(out))
        weight = params[0].reshape(groups, g["num_output"] // groups, -1)
        y = np.matmul(weight[None], cols).reshape((n, g["num_output"]) + out)
        if g["bias_term"]:
            y += params[1].reshape((1, -1) + (1,) * len(out))
        return y.reshape(x.shape[:g["axis"]] + y.shape[1:])
    return _each_bottom(layer, bottoms, one)


def _deconvolution(layer, bottoms, params):
    def one(x, g):
        if g["pad_after"] != g["pad"]:
            raise NotImplementedError(f"{_name(layer)}: pad_t/b/l/r on Deconvolution")
        xb = _batched(x, g["axis"])
        n, groups, spatial = xb.shape[0], g["group"], xb.shape[2:]
        kernel, stride, dil, pad = g["kernel"], g["stride"], g["dilation"], g["pad"]
        out_g = g["num_output"] // groups
        # every input value times the kernel: (n, G, out_g, *kernel, *spatial)
        xg = xb.reshape((n, groups, -1) + spatial)
        wg = params[0].reshape((groups, -1, out_g) + kernel)
        nk, ns = len(kernel), len(spatial)
        terms = np.einsum(xg, [0, 1, 2] + list(range(10, 10 + ns)),
                          wg, [1, 2, 3] + list(range(20, 20 + nk)),
                          [0, 1, 3] + list(range(20, 20 + nk)) + list(range(10, 10 + ns)))
        full = tuple(st * (s - 1) + d * (k - 1) + 1
                     for s, k, st, d in zip(spatial, kernel, stride, dil))
        y = np.zeros((n, groups, out_g) + full, dtype=xb.dtype)
        for offset in np.ndindex(*kernel):
            at = tuple(slice(o * d, o * d + st * (s - 1) + 1, st)
                       for o, d, st, s in zip(offset, dil, stride, spatial))
            y[(slice(None),) * 3 + at] += terms[(slice(None),) * 3 + offset]
        y = y[(slice(None),) * 3 + tuple(slice(p, f - p) for p, f in zip(pad, full))]
        if min(y.shape[3:]) <= 0:
            raise ValueError(f"{_name(layer)}: empty deconvolution output")
        y = y.reshape((n, g["num_output"]) + y.shape[3:])
        if g["bias_term"]:
            y = y + params[1].reshape((1, -1) + (1,) * ns)
        return y.reshape(x.shape[:g["axis"]] + y.shape[1:])
    return _each_bottom(layer, bottoms, one)


def _im2col(layer, bottoms, params):
    x = bottoms[0]
    g = _geometry(layer, x.shape)
    cols, out = _columns(_batched(x, g["axis"]), g)
    y = np.ascontiguousarray(cols).reshape((cols.shape[0], -1) + out)
    return [y.reshape(x.shape[:g["axis"]] + y.shape[1:])]


def _crop(layer, bottoms, params):
    x, ref = bottoms
    p = _param(layer, "crop_param")
    start = _axis(int(get(p, "axis", 2)), x.ndim)
    offsets = [int(v) for v in get_all(p, "offset")]
    if len(offsets) > 1 and start + len(offsets) != x.ndim:
        raise ValueError(f"{_name(layer)}: one crop offset or one per cropped axis")
    index = []
    for i in range(x.ndim):
        if i < start:
            index.append(slice(None))
            continue
        off = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
        if x.shape[i] - off < ref.shape[i]:
            raise ValueError(f"{_name(layer)}: crop of axis {i} out of bounds")
        index.append(slice(off, off + ref.shape[i]))
    return [x[tuple(index)].copy()]


register_layer("Convolution", _convolution, _conv_shapes)
register_layer("Deconvolution", _deconvolution, _deconv_shapes)
register_layer("Im2col", _im2col)
register_layer("Crop", _crop)
