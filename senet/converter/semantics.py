"""Caffe's arithmetic rules, each written once.

Shape inference, both emitters and the passes call these functions; no other module restates a
rule. Every function is pure and works on plain ints and NumPy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.errors import ShapeError

Shape = tuple[int, ...]


def canonical_axis(axis: int, ndim: int, layer: str) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(f"axis {axis} is out of range for a {ndim}-D blob", layer=layer)
    return axis + ndim if axis < 0 else axis


# ----------------------------------------------------------------------------- convolution

def spatial_param(param, name: str, n_spatial: int, default: int, layer: str
                  ) -> tuple[int, ...]:
    """Caffe's value per spatial axis of a ConvolutionParameter or PoolingParameter field
    (`kernel_size`, `pad`, `stride`, `dilation`): `<f>_h`, `<f>_w` when either is set (2-D
    only; a missing one is the field's default), else the field's values — one for every
    axis or one per axis — or `default` for every axis when it has none."""
    short = name.removesuffix("_size")
    h, w = f"{short}_h", f"{short}_w"
    if h in param.DESCRIPTOR.fields_by_name and (param.HasField(h) or param.HasField(w)):
        if n_spatial != 2:
            raise ShapeError(f"{h}/{w} need 2 spatial axes, the input has {n_spatial}",
                             layer=layer)
        return int(getattr(param, h)), int(getattr(param, w))
    value = getattr(param, name)
    if isinstance(value, int):  # PoolingParameter's fields are not repeated
        values = [value] if param.HasField(name) else []
    else:
        values = [int(v) for v in value]
    if not values:
        return (default,) * n_spatial
    if len(values) == 1:
        return (values[0],) * n_spatial
    if len(values) != n_spatial:
        raise ShapeError(f"{len(values)} {short} values for {n_spatial} spatial axes",
                         layer=layer)
    return tuple(values)


def conv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    """Caffe's convolution output size: floor((size + 2p - (d(k-1)+1)) / s) + 1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


# ----------------------------------------------------------------------------- pooling

@dataclass(frozen=True)
class PoolGeometry:
    """Kernel, stride and pads of one spatial axis, and Caffe's output length."""

    kernel: int
    stride: int
    pad: int
    output: int
    input_extent: int

    @property
    def pad_end(self) -> int:
        """Padding after the input that makes a floor-mode pooling (ONNX, PyTorch) with `pad`
        before it give Caffe's output length (ceil mode lets the last window run past the
        input; Caffe clips it)."""
        return max(0, (self.output - 1) * self.stride + self.kernel - self.input_extent
                   - self.pad)


def pool_output_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True,
                     any_pad: bool | None = None) -> int:
    """Caffe's pooling output size: rounded up (CEIL, the default) or down, then the last window
    dropped if it would start in the padding past the input. Caffe makes that check on both
    axes as soon as either axis is padded (`any_pad`; default: this axis's pad)."""
    span = size + 2 * pad - kernel
    steps = -(-span // stride) if ceil_mode else span // stride
    pooled = steps + 1
    if (pad > 0 if any_pad is None else any_pad) and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def pool_geometry(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool,
                  any_pad: bool | None = None) -> PoolGeometry:
    out = pool_output_size(size, kernel, pad, stride, ceil_mode, any_pad)
    return PoolGeometry(kernel=kernel, stride=stride, pad=pad, output=out, input_extent=size)


def ave_pool_divisors(geom_h: PoolGeometry, geom_w: PoolGeometry) -> np.ndarray:
    """Caffe's AVE divisor for each output cell: the window clipped to the padded input
    [-pad, size + pad), counted before clipping to the real input."""
    def axis(g: PoolGeometry) -> np.ndarray:
        start = np.arange(g.output) * g.stride - g.pad
        end = np.minimum(start + g.kernel, g.input_extent + g.pad)
        return end - start
    return np.outer(axis(geom_h), axis(geom_w)).astype(np.float64)


def empty_pool_windows(g: PoolGeometry) -> int:
    """How many trailing windows start at or past the end of the input (ceil rounding without
    padding: kernel 1, stride 2 on an even size). Caffe's MAX gives them -FLT_MAX (its
    initial value) and AVE 0/0 = NaN (the clipped window counts no cell); ONNX and PyTorch
    have no such window, so emitters pool the others and append these as constants."""
    starts = np.arange(g.output) * g.stride - g.pad
    return int(np.count_nonzero(starts >= g.input_extent))


def without_empty_windows(g: PoolGeometry) -> PoolGeometry:
    """`g` with its empty trailing windows (see empty_pool_windows) left out."""
    return PoolGeometry(g.kernel, g.stride, g.pad, g.output - empty_pool_windows(g),
                        g.input_extent)


# ----------------------------------------------------------------------------- SPP

def spp_level_window(size: int, level: int) -> tuple[int, int]:
    """(kernel, pad) of Caffe's SPP pyramid level `level` along an axis of `size` (stride =
    kernel): 2^level bins, kernel = ceil(size / bins), pad = half the shortfall
    kernel·bins − size, rounded up. The level is then an ordinary Pooling with these."""
    bins = 2 ** level
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


# ----------------------------------------------------------------------------- batch norm

def batchnorm_statistics(mean: np.ndarray, var: np.ndarray, factor: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Caffe stores running sums (mean·f, var·f) and f; the statistics are those divided by f,
    with f = 0 meaning 'no statistics yet' (Caffe then uses 0, not a division by zero)."""
    f = float(np.asarray(factor, dtype=np.float64).reshape(-1)[0]) if np.size(factor) else 1.0
    scale = 0.0 if f == 0 else 1.0 / f
    return (np.asarray(mean, np.float64) * scale, np.asarray(var, np.float64) * scale)


def batchnorm_uses_batch_statistics(param) -> bool:
    """BatchNorm normalises with the batch's own mean and biased variance (over every axis
    but 1) instead of its stored statistics: Caffe's use_global_stats defaults to
    (phase == TEST), so only an explicit `use_global_stats: false` does this in a deploy net.
    Not in a layer stored by a TRAIN-phase net (a solver snapshot's own net records
    `phase: TRAIN` on every layer): that false is its training setting, and the deploy net
    senet extracts from it uses the statistics, as the net's TEST prototxt does."""
    p = param.batch_norm_param
    stored_for_training = param.HasField("phase") and param.phase == pb.TRAIN
    return p.HasField("use_global_stats") and not p.use_global_stats and not stored_for_training


def batchnorm_affine(mean, var, factor, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) in float64 with BatchNorm(x) = (x - mean) / sqrt(var + eps) = a·x + b."""
    m, v = batchnorm_statistics(mean, var, factor)
    a = 1.0 / np.sqrt(v + np.float64(eps))
    return a, -m * a


def fold_affine_into_conv(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                          shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (float64) of a convolution followed by the per-output-channel affine
    map y·scale + shift: W·scale (each output channel's filter scaled) and b·scale + shift."""
    w = np.asarray(weight, np.float64)
    s = np.asarray(scale, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1)), b * s + np.asarray(shift, np.float64)


def prototxt_float(value: float) -> float:
    """A float field as the decimal written in the prototxt: the shortest decimal that rounds
    to the stored float32 (0.1, not 0.10000000149). Both are the same float32, so float32
    arithmetic is unchanged; float64 arithmetic gets the value the author wrote."""
    return float(str(np.float32(value)))


# ----------------------------------------------------------------------------- reshape / flatten

def reshape_span(in_shape: Shape, axis: int, num_axes: int, layer: str) -> tuple[int, int]:
    """The input axes [start, end) a Reshape replaces (a negative axis counts from the end,
    -1 meaning after the last axis; num_axes -1 means to the end)."""
    ndim = len(in_shape)
    start = canonical_axis(axis, ndim + 1, layer) if axis >= 0 else axis + ndim + 1
    if not 0 <= start <= ndim:
        raise ShapeError(f"reshape axis {axis} out of range for {list(in_shape)}", layer=layer)
    end = ndim if num_axes == -1 else start + num_axes
    if num_axes < -1 or end > ndim:
        raise ShapeError(f"reshape num_axes {num_axes} out of range for {list(in_shape)}",
                         layer=layer)
    return start, end


def reshape_output(in_shape: Shape, dims: list[int], axis: int, num_axes: int, layer: str
                   ) -> Shape:
    """Caffe's Reshape: replace axes [axis, axis+num_axes) by `dims`, where 0 copies the input
    dim at that position and one -1 is inferred from the element count."""
    ndim = len(in_shape)
    start, end = reshape_span(in_shape, axis, num_axes, layer)
    out = list(in_shape[:start])
    inferred = None
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ShapeError("reshape copies (0) an axis the input lacks", layer=layer)
            out.append(in_shape[start + i])
        elif d == -1:
            if inferred is not None:
                raise ShapeError("reshape has more than one -1", layer=layer)
            inferred = len(out)
            out.append(1)
        elif d < -1:
            raise ShapeError(f"reshape dim {d} is invalid", layer=layer)
        else:
            out.append(d)
    out += list(in_shape[end:])
    total = math.prod(in_shape)
    if inferred is not None:
        known = math.prod(out)
        if known == 0 or total % known:
            raise ShapeError(f"cannot infer -1 reshaping {list(in_shape)} to {dims}", layer=layer)
        out[inferred] = total // known
    if math.prod(out) != total:
        raise ShapeError(f"reshape of {list(in_shape)} to {out} changes the element count",
                         layer=layer)
    return tuple(out)


def flatten_output(in_shape: Shape, axis: int, end_axis: int, layer: str) -> Shape:
    """Caffe's Flatten: axes [axis, end_axis] become one."""
    ndim = len(in_shape)
    a = canonical_axis(axis, ndim, layer)
    e = canonical_axis(end_axis, ndim, layer)
    if e < a:
        raise ShapeError("flatten end_axis precedes axis", layer=layer)
    return tuple(in_shape[:a]) + (math.prod(in_shape[a:e + 1]),) + tuple(in_shape[e + 1:])


def inner_product_fan_in(in_shape: Shape, axis: int, layer: str) -> tuple[int, int]:
    """(canonical axis, K): InnerProduct flattens every axis from `axis` on into K inputs."""
    a = canonical_axis(axis, len(in_shape), layer)
    return a, math.prod(in_shape[a:])


def scale_param_shape(in_shape: Shape, axis: int, num_axes: int, layer: str) -> Shape:
    """Shape of a learned Scale/Bias parameter: the input dims [axis, axis+num_axes)."""
    ndim = len(in_shape)
    a = canonical_axis(axis, ndim, layer) if ndim else 0
    if num_axes == -1:
        return tuple(in_shape[a:])
    if num_axes < -1 or a + num_axes > ndim:
        raise ShapeError(f"num_axes {num_axes} out of range for {list(in_shape)}", layer=layer)
    return tuple(in_shape[a:a + num_axes])


def broadcast_shape_for(param_shape: Shape, in_ndim: int, axis: int) -> Shape:
    """Shape that makes a Scale/Bias operand broadcast (NumPy rules) against the input: the
    operand's dims followed by ones for the trailing input axes."""
    trailing = in_ndim - axis - len(param_shape)
    return tuple(param_shape) + (1,) * trailing


def slice_points(size: int, points: list[int], tops: int, layer: str) -> list[int]:
    """Sizes of each Slice output along the axis (explicit points, or an equal split)."""
    if points:
        if len(points) != tops - 1:
            raise ShapeError(f"{len(points)} slice points for {tops} tops", layer=layer)
        edges = [0, *points, size]
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        if any(s <= 0 for s in sizes):
            raise ShapeError(f"slice points {points} do not fit an axis of {size}", layer=layer)
        return sizes
    if size % tops:
        raise ShapeError(f"axis of {size} does not split evenly into {tops} tops", layer=layer)
    return [size // tops] * tops
