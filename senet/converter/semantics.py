"""Caffe's arithmetic rules, each written once.

Shape inference, both emitters and the passes call these functions; no other module restates a
rule. Every function is pure and works on plain ints and NumPy arrays.
"""

from __future__ import annotations

import dataclasses
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


def conv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int,
                     pad_after: int | None = None) -> int:
    """Caffe's convolution output size: floor((size + 2p - (d(k-1)+1)) / s) + 1; with a
    different padding after the input (Synopsys' pad_b/pad_r), size + p + pad_after."""
    extent = dilation * (kernel - 1) + 1
    return (size + pad + (pad if pad_after is None else pad_after) - extent) // stride + 1


# ----------------------------------------------------------------------------- pooling

@dataclass(frozen=True)
class PoolGeometry:
    """Kernel, stride and pads of one spatial axis, and Caffe's output length."""

    kernel: int
    stride: int
    pad: int
    output: int
    input_extent: int
    pad_after: int | None = None  # Caffe's padding after the input when not `pad` (Synopsys)

    @property
    def after(self) -> int:
        """The layer's own padding after the input (the AVE divisor counts it)."""
        return self.pad if self.pad_after is None else self.pad_after

    @property
    def pad_end(self) -> int:
        """Padding after the input that makes a floor-mode pooling (ONNX, PyTorch) with `pad`
        before it give Caffe's output length (ceil mode lets the last window run past the
        input; Caffe clips it)."""
        return max(0, (self.output - 1) * self.stride + self.kernel - self.input_extent
                   - self.pad)


def pool_output_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True,
                     any_pad: bool | None = None, pad_after: int | None = None) -> int:
    """Caffe's pooling output size: rounded up (CEIL, the default) or down, then the last window
    dropped if it would start in the padding past the input. Caffe makes that check on both
    axes as soon as either axis is padded (`any_pad`; default: this axis's pad). `pad_after`:
    Synopsys' different padding after the input (the check still uses `pad`, before it)."""
    span = size + pad + (pad if pad_after is None else pad_after) - kernel
    steps = -(-span // stride) if ceil_mode else span // stride
    pooled = steps + 1
    if (pad > 0 if any_pad is None else any_pad) and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def pool_geometry(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool,
                  any_pad: bool | None = None, pad_after: int | None = None) -> PoolGeometry:
    out = pool_output_size(size, kernel, pad, stride, ceil_mode, any_pad, pad_after)
    return PoolGeometry(kernel=kernel, stride=stride, pad=pad, output=out, input_extent=size,
                        pad_after=None if pad_after == pad else pad_after)


def ave_pool_divisors(geom_h: PoolGeometry, geom_w: PoolGeometry,
                      exclude_pad: bool = False) -> np.ndarray:
    """Caffe's AVE divisor for each output cell: the window clipped to the padded input
    [-pad, size + pad_after), counted before clipping to the real input; with `exclude_pad`
    (Synopsys' AVE_EXC_PAD) the window clipped to the real input [0, size)."""
    def axis(g: PoolGeometry) -> np.ndarray:
        start = np.arange(g.output) * g.stride - g.pad
        end = np.minimum(start + g.kernel, g.input_extent + g.after)
        if exclude_pad:
            start, end = np.maximum(start, 0), np.minimum(end, g.input_extent)
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
    return dataclasses.replace(g, output=g.output - empty_pool_windows(g))


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


def batch_statistics_axes(ndim: int) -> list[int]:
    """The axes a batch-statistics normalisation (BVLC BatchNorm without global stats, the
    forks' BN in LEARN mode) averages over: every axis but the channels (1)."""
    return [0] + list(range(2, ndim))


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


# ----------------------------------------------------------------------------- recurrent
# LSTM, RNN (BVLC's RecurrentLayer, which unrolls a net over the T timesteps) and LSTMUnit.

# Caffe's 4H gate axis holds four blocks of H rows in this order (ONNX's LSTM uses i, o, f, c).
LSTM_GATES = ("i", "f", "o", "g")


@dataclass(frozen=True)
class RecurrentDims:
    """What a recurrent layer's bottoms fix: T timesteps of N streams, I inputs per step (x's
    axes after (T, N) flattened), S static inputs per stream (None without x_static), H outputs,
    and whether the initial states are bottoms (and the final ones tops)."""

    steps: int
    streams: int
    inputs: int
    static: int | None
    hidden: int
    exposed: bool


def recurrent_dims(in_shapes: list[Shape], num_output: int, expose_hidden: bool, states: int,
                   layer: str) -> RecurrentDims:
    """Caffe's RecurrentLayer checks on bottoms x (T, N, ...), cont (T, N), [x_static (N, ...)],
    [the `states` initial states, each (1, N, H), with expose_hidden]; ShapeError otherwise."""
    if num_output <= 0:
        raise ShapeError("recurrent_param.num_output must be positive", layer=layer)
    exposed = states if expose_hidden else 0
    if not 2 + exposed <= len(in_shapes) <= 3 + exposed:
        raise ShapeError(f"takes {2 + exposed} or {3 + exposed} bottoms (x, cont, [x_static]"
                         f"{', the initial states' if exposed else ''}), got {len(in_shapes)}",
                         layer=layer)
    x, cont = in_shapes[0], in_shapes[1]
    if len(x) < 3:  # the input transform is an InnerProduct on axis 2
        raise ShapeError(f"x must be (T, N, ...) with at least 3 axes, got {list(x)}",
                         layer=layer)
    steps, streams = x[0], x[1]
    if tuple(cont) != (steps, streams):
        raise ShapeError(f"cont must be (T, N) = {[steps, streams]}, got {list(cont)}",
                         layer=layer)
    static = None
    if len(in_shapes) == 3 + exposed:
        xs = in_shapes[2]
        if len(xs) < 2 or xs[0] != streams:  # InnerProduct on axis 1 of (N, ...)
            raise ShapeError(f"x_static must be (N, ...) with N = {streams} and at least 2 "
                             f"axes, got {list(xs)}", layer=layer)
        static = math.prod(xs[1:])
    for shape in in_shapes[len(in_shapes) - exposed:]:
        if tuple(shape) != (1, streams, num_output):
            raise ShapeError(f"an initial state must be (1, N, H) = {[1, streams, num_output]}, "
                             f"got {list(shape)}", layer=layer)
    return RecurrentDims(steps, streams, math.prod(x[2:]), static, num_output,
                         bool(expose_hidden))


def recurrent_blob_shapes(dims: RecurrentDims, gates: int, output_layer: bool) -> list[Shape]:
    """Learned blobs in Caffe's order (the unrolled net's parameters in layer order): W_x
    (G·H, I), b (G·H,), [W_x_static (G·H, S)], W_h (G·H, H) for G `gates` blocks, then with an
    `output_layer` (RNN) W_ho (H, H), b_o (H,)."""
    rows = gates * dims.hidden
    shapes = [(rows, dims.inputs), (rows,)]
    if dims.static is not None:
        shapes.append((rows, dims.static))
    shapes.append((rows, dims.hidden))
    if output_layer:
        shapes += [(dims.hidden, dims.hidden), (dims.hidden,)]
    return shapes


def lstm_unit_hidden(in_shapes: list[Shape], layer: str) -> int:
    """H of an LSTMUnit with bottoms c_prev (1, N, H), gates (1, N, 4H), cont (1, N), as Caffe's
    LSTMUnitLayer::Reshape checks them; ShapeError otherwise."""
    c_prev, gates, cont = in_shapes
    ok = (len(c_prev) == 3 and len(gates) == 3 and len(cont) == 2
          and c_prev[0] == gates[0] == cont[0] == 1 and c_prev[1] == gates[1] == cont[1]
          and gates[2] == len(LSTM_GATES) * c_prev[2])
    if not ok:
        raise ShapeError(f"needs c_prev (1, N, H), gates (1, N, 4H), cont (1, N); got "
                         f"{[list(s) for s in in_shapes]}", layer=layer)
    return c_prev[2]


# ----------------------------------------------------------------------------- reductions and
# indexing (ArgMax, MVN, Reduction, Tile, Embed, Filter, BatchReindex)

def argmax_output(in_shape: Shape, axis: int | None, top_k: int, out_max_val: bool,
                  layer: str) -> tuple[int | None, Shape]:
    """Caffe's ArgMax: (canonical axis or None, top shape). With an axis the top is the input
    with `top_k` along it (indices, or only the values with out_max_val). Without one each
    sample is searched over its flattened C·H·W and the top has max(ndim, 3) axes,
    (N, 1, top_k, 1, …) of indices or (N, 2, top_k, 1, …) with the values in [:, 1]."""
    if top_k < 1:
        raise ShapeError("top_k must be at least 1", layer=layer)
    if axis is not None:
        a = canonical_axis(axis, len(in_shape), layer)
        if top_k > in_shape[a]:
            raise ShapeError(f"top_k {top_k} exceeds the {in_shape[a]} values along axis {a}",
                             layer=layer)
        return a, tuple(in_shape[:a]) + (top_k,) + tuple(in_shape[a + 1:])
    if not in_shape:
        raise ShapeError("ArgMax without axis needs an N×… input, got a 0-D blob", layer=layer)
    per_sample = math.prod(in_shape[1:])
    if top_k > per_sample:
        raise ShapeError(f"top_k {top_k} exceeds the {per_sample} values of a sample",
                         layer=layer)
    out = [1] * max(len(in_shape), 3)
    out[0], out[1], out[2] = in_shape[0], 2 if out_max_val else 1, top_k
    return None, tuple(out)


def legacy_4d_shape(in_shape: Shape, layer: str) -> Shape:
    """(num, channels, height, width) as Caffe's legacy accessors read a blob of at most 4 axes:
    missing trailing axes are 1. Layers that reshape their top this way (MVN) are always 4-D."""
    if len(in_shape) > 4:
        raise ShapeError(f"needs at most 4 axes (Caffe's legacy accessors), got {list(in_shape)}",
                         layer=layer)
    return tuple(in_shape) + (1,) * (4 - len(in_shape))


def mvn_groups(in_shape: Shape, across_channels: bool, layer: str) -> Shape:
    """The 4-D input viewed as (N, C, H·W), or (N, C·H·W) across channels: MVN normalises each
    row over the last axis, y = (x − mean) / (sqrt(mean((x − mean)²)) + eps). BVLC's
    mvn_layer.cpp adds eps to the standard deviation (after the root), not to the variance."""
    n, c, h, w = legacy_4d_shape(in_shape, layer)
    return (n, c * h * w) if across_channels else (n, c, h * w)


def reduction_output(in_shape: Shape, axis: int, layer: str) -> tuple[int, Shape]:
    """Caffe's Reduction reduces every axis from `axis` to the end: (canonical axis, top shape =
    the dims before it; axis 0 gives a 0-D top)."""
    a = canonical_axis(axis, len(in_shape), layer)
    return a, tuple(in_shape[:a])


def reduction_factor(operation: str, coeff: float, count: int) -> float:
    """The factor Caffe multiplies a reduced SUM / ASUM / SUMSQ by: coeff, or coeff / count
    (float32 division, as Caffe's Dtype) for MEAN."""
    if operation == "MEAN":
        return float(np.float32(coeff) / np.float32(count))
    return float(np.float32(coeff))


def tile_output(in_shape: Shape, axis: int, tiles: int, layer: str) -> tuple[int, Shape]:
    """Caffe's Tile: the block of axes from `axis` on repeated `tiles` times (np.tile along the
    axis, not np.repeat): (canonical axis, top shape)."""
    a = canonical_axis(axis, len(in_shape), layer)
    if tiles < 1:
        raise ShapeError(f"tiles must be at least 1, got {tiles}", layer=layer)
    out = list(in_shape)
    out[a] *= tiles
    return a, tuple(out)


def filter_output(in_shapes: list[Shape], layer: str) -> list[Shape]:
    """Caffe's Filter: the last bottom selects samples (shape (N, 1, …, 1)); each other bottom
    keeps the samples whose selector is non-zero. The count depends on the data, so the static
    shape is Caffe's setup shape: axis 0 is N, the most that can be selected."""
    *data, selector = in_shapes
    if not selector or any(d != 1 for d in selector[1:]):
        raise ShapeError(f"the selector (last bottom) must be (N, 1, …, 1), got {list(selector)}",
                         layer=layer)
    for i, shape in enumerate(data):
        if not shape or shape[0] != selector[0]:
            raise ShapeError(f"bottom[{i}] {list(shape)} does not have the selector's "
                             f"{selector[0]} samples", layer=layer)
    return [tuple(shape) for shape in data]


def batch_reindex_output(data: Shape, indices: Shape, layer: str) -> Shape:
    """Caffe's BatchReindex: top[i] = data[int(indices[i])] along axis 0, for a 1-D index blob."""
    if len(indices) != 1 or not data:
        raise ShapeError(f"needs N×… data and a 1-D index blob, got {list(data)} and "
                         f"{list(indices)}", layer=layer)
    return (indices[0],) + tuple(data[1:])


# ----------------------------------------------------------------------------- element-wise
# Caffe computes the constants of Power, Exp and Log once, in float (its Dtype), when the layer
# is set up; computing them in float32 here lets float32 emitters repeat its arithmetic.

def power_constant(power: float, scale: float, shift: float) -> float | None:
    """The value Caffe's Power writes whatever its input, when power·scale is 0 in float32:
    1 for power 0, else shift^power (NaN for a negative shift and a fractional power, inf for
    0^negative); None when the output depends on the input."""
    power, scale, shift = np.float32(power), np.float32(scale), np.float32(shift)
    if power * scale != 0:
        return None
    if power == 0:
        return 1.0
    with np.errstate(all="ignore"):
        return float(np.power(shift, power))


def _log_of_base(base: float, kind: str, layer: str) -> np.float32:
    """ln(base) as Caffe's Exp/Log set it up: exactly 1 for base -1 (meaning e); any other
    base must be positive with a finite logarithm."""
    base = np.float32(base)
    if base == -1:
        return np.float32(1)
    if not base > 0:
        raise ShapeError(f"{kind} base must be -1 (meaning e) or positive, got {base}",
                         layer=layer)
    log_base = np.log(base)
    if not np.isfinite(log_base):
        raise ShapeError(f"{kind} base {base} has no finite logarithm", layer=layer)
    return log_base


def exp_factors(base: float, scale: float, shift: float, layer: str) -> tuple[float, float]:
    """(inner, outer) with Caffe's Exp y = outer · exp(inner · x): inner = ln(base)·scale and
    outer = base^shift (e^shift for base -1), each a float32 as Caffe computes it. Caffe does
    not evaluate base^(shift + scale·x) itself, and its rounding follows this form."""
    inner = _log_of_base(base, "Exp", layer) * np.float32(scale)
    shift = np.float32(shift)
    with np.errstate(all="ignore"):
        if shift == 0:
            outer = np.float32(1)
        elif np.float32(base) == -1:
            outer = np.exp(shift)
        else:
            outer = np.power(np.float32(base), shift)
    return float(inner), float(outer)


def log_base_scale(base: float, layer: str) -> float:
    """1 / ln(base) in float32: Caffe's Log is y = that · ln(shift + scale·x) (1 for base -1).
    Base 1 is refused as Caffe refuses it (1 / ln 1 is infinite)."""
    log_base = _log_of_base(base, "Log", layer)
    with np.errstate(divide="ignore"):
        factor = np.float32(1) / log_base
    if not np.isfinite(factor):
        raise ShapeError(f"Log base {np.float32(base)} gives 1/ln(base) = {factor}", layer=layer)
    return float(factor)


# ----------------------------------------------------------------------------- spatial
# (Deconvolution, Crop, Im2col: base_conv_layer.cpp, deconv_layer.cpp, crop_layer.cpp,
# im2col_layer.cpp and util/im2col.cpp of BVLC Caffe)

def deconv_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    """Caffe's deconvolution output size: s(size-1) + d(k-1) + 1 - 2p (the inverse of the
    convolution rule without its floor; Caffe has no output_padding)."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def crop_geometry(in_shape: Shape, ref_shape: Shape, axis: int, offsets: list[int],
                  layer: str) -> tuple[Shape, Shape]:
    """(offset of every axis, output shape) of Caffe's Crop: axes before `axis` (canonical,
    so negative counts from the end) are kept whole; every axis from `axis` on takes the
    reference's size, starting at the one offset given for all of them, or at its own offset
    (exactly one per cropped axis), or 0. A crop running past the input is refused."""
    ndim = len(in_shape)
    start = canonical_axis(axis, ndim, layer)
    if len(offsets) > 1 and start + len(offsets) != ndim:
        raise ShapeError(f"{len(offsets)} crop offsets for the {ndim - start} axes from axis "
                         f"{start} on (give one, or one per cropped axis)", layer=layer)
    if len(ref_shape) < ndim:
        raise ShapeError(f"the reference {list(ref_shape)} has fewer axes than the input "
                         f"{list(in_shape)}", layer=layer)
    offs, out = [], []
    for i, size in enumerate(in_shape):
        if i < start:
            offs.append(0)
            out.append(size)
            continue
        off = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
        if size - off < ref_shape[i]:
            raise ShapeError(f"the crop of axis {i} runs past the input: size {ref_shape[i]} "
                             f"at offset {off} of {size}", layer=layer)
        offs.append(off)
        out.append(ref_shape[i])
    return tuple(offs), tuple(out)


def im2col_one_hot(channels: int, kernel: tuple[int, ...]) -> np.ndarray:
    """Weight of a convolution with `channels` groups that computes Caffe's im2col: output
    channel c·K + j (K = prod(kernel), j the kernel offset in row-major order, the last
    spatial axis fastest) is input channel c at offset j, times exactly 1."""
    taps = math.prod(kernel)
    weight = np.zeros((channels * taps, 1, taps), np.float32)
    weight[np.arange(channels * taps), 0, np.tile(np.arange(taps), channels)] = 1.0
    return weight.reshape((channels * taps, 1) + tuple(kernel))


# ----------------------------------------------------------------------------- fork layers
# (Interp, Upsample, Reorg, ShuffleChannel, BN of the PSPNet/DeepLab/SegNet/YOLO/ShuffleNet
# forks; each rule as the fork's C++ computes it)

def interp_output_size(size: int, pad_beg: int, pad_end: int, zoom: int | None,
                       shrink: int | None, layer: str) -> tuple[int, int]:
    """(cropped input length, output length) of PSPNet/DeepLab's Interp along one axis when
    the size comes from the factors: the input is first cropped by -pad_beg and -pad_end
    (both ≤ 0), then shrunk to (n - 1) / shrink + 1 and zoomed to n + (n - 1)(zoom - 1)
    (DeepLab applies both when both are given, shrink first)."""
    if pad_beg > 0 or pad_end > 0:
        raise ShapeError("Interp supports only pad_beg, pad_end <= 0 (cropping), as the fork",
                         layer=layer)
    cropped = size + pad_beg + pad_end
    if cropped <= 0:
        raise ShapeError(f"Interp crops all of an axis of size {size}", layer=layer)
    out = cropped
    if shrink is not None:
        if shrink < 1:
            raise ShapeError("Interp shrink_factor must be at least 1", layer=layer)
        out = (out - 1) // shrink + 1
    if zoom is not None:
        if zoom < 1:
            raise ShapeError("Interp zoom_factor must be at least 1", layer=layer)
        out = out + (out - 1) * (zoom - 1)
    return cropped, out


def unpool_output_size(size: int, upsample: int | None, scale: int, pad_out: bool,
                       layer: str) -> int:
    """SegNet Upsample's output length: upsample_h/w when given, else size·scale, one less
    with pad_out (which the fork allows only for scale 2)."""
    if upsample is not None:
        if upsample <= 1:
            raise ShapeError("Upsample upsample_h/upsample_w must be greater than 1",
                             layer=layer)
        return upsample
    if scale <= 1:
        raise ShapeError("Upsample scale must be greater than 1", layer=layer)
    if pad_out and scale != 2:
        raise ShapeError("Upsample pad_out_h/pad_out_w need scale 2 (the fork's check)",
                         layer=layer)
    return size * scale - int(pad_out)


def reorg_output_shape(shape: Shape, stride: int, reverse: bool, layer: str) -> Shape:
    """Output of the YOLOv2 forks' Reorg (N×C×H×W): C·s² × H/s × W/s, or with reverse
    C/s² × H·s × W·s. The fork's index arithmetic needs C divisible by s² and, forward, H
    and W divisible by s (otherwise it reads outside the blob)."""
    if len(shape) != 4:
        raise ShapeError(f"Reorg needs an N×C×H×W input, got {list(shape)}", layer=layer)
    if stride < 1:
        raise ShapeError("Reorg stride must be positive", layer=layer)
    n, c, h, w = shape
    if reverse:
        if c % (stride * stride):
            raise ShapeError(f"Reorg reverse: {c} channels are not divisible by stride² "
                             f"{stride * stride}", layer=layer)
        return n, c // (stride * stride), h * stride, w * stride
    if c % (stride * stride) or h % stride or w % stride:
        raise ShapeError(f"Reorg: input {list(shape)} needs channels divisible by stride² "
                         f"{stride * stride} and height, width by stride {stride}", layer=layer)
    return n, c * stride * stride, h // stride, w // stride


def reorg_view(shape: Shape, stride: int, reverse: bool, layer: str
               ) -> tuple[Shape, tuple[int, ...], Shape]:
    """Reorg as one reshape → transpose → reshape of the N×C×H×W input (what the fork's
    reorg_cpu does, read in darknet's flattened order): (6-D view, permutation, output).
    Forward: the input's memory is read as N × C/s² × H·s × W·s, and output channel
    (oy·s + ox)·C/s² + c at (h, w) takes that view's (c, h·s + oy, w·s + ox); this is not
    ONNX SpaceToDepth's channel order."""
    n, c, h, w = shape
    s, part = stride, c // (stride * stride)
    out = reorg_output_shape(shape, stride, reverse, layer)
    if reverse:
        return (n, s, s, part, h, w), (0, 3, 4, 1, 5, 2), out
    return (n, part, h, s, w, s), (0, 3, 5, 1, 2, 4), out


def shuffle_channel_groups(channels: int, group: int, layer: str) -> int:
    """Channels per group of ShuffleNet's ShuffleChannel (output channel j·group + i is input
    channel i·(C/group) + j); C must split into `group` groups."""
    if group <= 0 or channels % group:
        raise ShapeError(f"ShuffleChannel: {channels} channels do not split into group "
                         f"{group}", layer=layer)
    return channels // group


def bn_inverse_std(var: np.ndarray, eps: float) -> np.ndarray:
    """PSPNet BN's (var + eps)^-0.5 in float32, as caffe_add_scalar then caffe_powx compute
    it from the stored variance."""
    shifted = np.asarray(var, np.float32) + np.float32(eps)
    return np.power(shifted, np.float32(-0.5), dtype=np.float32)


# ----------------------------------------------------------------------------- fork fields
# Fields of Caffe forks (caffe.proto marks them "fork:"): Synopsys' asymmetric padding and
# AVE_EXC_PAD (pooling_layer.cpp, conv_layer.cpp of synopsys-caffe), the ceil_mode of Synopsys
# and of the forks of BVLC PR #3057, DeepLab v1's hole (deeplab-public) and py-faster-rcnn's
# Dropout scale_train (caffe-fast-rcnn dropout_layer.cpp).

def _is_set(param, name: str) -> bool:
    value = getattr(param, name)
    return len(value) > 0 if hasattr(value, "__len__") else param.HasField(name)


def asymmetric_pads(param, layer: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((top, left), (bottom, right)) padding of a Convolution or Pooling when any of
    Synopsys' pad_t/pad_l/pad_b/pad_r is non-zero (its fork then takes all four, an unset one
    being 0), else None. They replace pad, pad_h and pad_w, which may then not be given."""
    before = (int(param.pad_t), int(param.pad_l))
    after = (int(param.pad_b), int(param.pad_r))
    if not any(before + after):
        return None
    given = [name for name in ("pad", "pad_h", "pad_w") if _is_set(param, name)]
    if given:
        raise ShapeError(f"give either pad_t/pad_b/pad_l/pad_r or {'/'.join(given)}, not both",
                         layer=layer)
    return before, after


def pool_rounds_up(param, layer: str) -> bool:
    """Whether a Pooling's output size is rounded up: BVLC's round_mode (CEIL by default), or
    the forks' ceil_mode (true by default, false = floor as round_mode FLOOR). Both given and
    disagreeing is refused."""
    ceil = param.round_mode == param.CEIL
    if not param.HasField("ceil_mode"):
        return ceil
    if param.HasField("round_mode") and bool(param.ceil_mode) != ceil:
        raise ShapeError(f"ceil_mode: {str(param.ceil_mode).lower()} and round_mode: "
                         f"{param.RoundMode.Name(param.round_mode)} disagree", layer=layer)
    return bool(param.ceil_mode)


def deeplab_hole(param, n_spatial: int, layer: str) -> tuple[int, ...] | None:
    """DeepLab v1's hole per spatial axis (hole_h/hole_w when either is given, a missing one
    being 1; else hole), or None when the layer gives none. It is Caffe's dilation: the kernel
    spans (k − 1)·hole + 1 cells."""
    if param.HasField("hole_h") or param.HasField("hole_w"):
        if n_spatial != 2:
            raise ShapeError(f"hole_h/hole_w need 2 spatial axes, the input has {n_spatial}",
                             layer=layer)
        return int(param.hole_h), int(param.hole_w)
    if param.HasField("hole"):
        return (int(param.hole),) * n_spatial
    return None


def dropout_test_factor(dropout_ratio: float, scale_train: bool) -> float | None:
    """What py-faster-rcnn's Dropout multiplies by at test time: nothing (None) when it scales
    at train time (scale_train, the default, as BVLC), else 1/scale with scale = 1/(1 − ratio)
    held in float as Caffe holds it: (1 − ratio) up to float rounding."""
    if scale_train:
        return None
    scale = np.float32(1.0 / (1.0 - float(np.float32(dropout_ratio))))
    return float(np.float32(1.0 / float(scale)))


# ----------------------------------------------------------------------------- ROI pooling
# Fast/Faster R-CNN's ROIPooling (rbgirshick/caffe-fast-rcnn roi_pooling_layer.cpp) and R-FCN's
# PSROIPooling (daijifeng001/caffe-rfcn psroi_pooling_layer.cpp). The rois are data, so their
# bins are computed at run time: each rule is written once here against `ops`, the float32
# tensor operations an emitter provides (add, sub, mul, div, maximum, minimum, floor, ceil, abs,
# sign, at_least(a, b) = 1.0 where a >= b else 0.0, and steps(n, first) = [first, ..., first +
# n - 1]); Python floats given to them are float32 constants. Caffe computes the geometry in
# float (its Dtype), so float32 tensors repeat it exactly, ties included.

def c_round(ops, v):
    """C's round() of float32 values: halfway cases away from zero (ONNX's Round and
    torch.round round them to even). |v| - floor(|v|) is exact in float, so the half is seen
    exactly."""
    magnitude = ops.abs(v)
    whole = ops.floor(magnitude)
    return ops.mul(ops.sign(v), ops.add(whole, ops.at_least(ops.sub(magnitude, whole), 0.5)))


def _clip_cells(ops, v, size: int):
    return ops.minimum(ops.maximum(v, 0.0), float(size))


def roi_pool_bins(ops, start, end, spatial_scale: float, pooled: int, size: int):
    """ROIPooling's bins along one axis of `size` cells for rois from `start` to `end` (R×1,
    image coordinates): (first cell, end cell (excluded)), each R×pooled, integer-valued in
    [0, size]. The roi's first and last cells are round(coordinate · spatial_scale); its length
    is last - first + 1, at least 1 (a malformed roi pools one cell); bin p spans floor(p · b)
    to ceil((p + 1) · b) cells from the roi's first cell, with b = length / pooled, clipped
    to the map. A bin left with no cell pools 0."""
    first = c_round(ops, ops.mul(start, spatial_scale))
    last = c_round(ops, ops.mul(end, spatial_scale))
    length = ops.maximum(ops.add(ops.sub(last, first), 1.0), 1.0)
    bin_size = ops.div(length, float(pooled))
    lo = ops.add(ops.floor(ops.mul(bin_size, ops.steps(pooled, 0))), first)
    hi = ops.add(ops.ceil(ops.mul(bin_size, ops.steps(pooled, 1))), first)
    return _clip_cells(ops, lo, size), _clip_cells(ops, hi, size)


def psroi_pool_bins(ops, start, end, spatial_scale: float, pooled: int, size: int):
    """PSROIPooling's bins along one axis, as roi_pool_bins returns them, by R-FCN's own
    rounding: the roi runs from round(start) · scale to (round(end) + 1) · scale in map
    coordinates (fractional), its length at least 0.1; bin p spans floor(p · b + from) to
    ceil((p + 1) · b + from) with b = length / pooled (a float product, then a float sum:
    the CPU code; nvcc may fuse them in the GPU kernel), clipped to the map. A bin left with
    no cell pools 0; otherwise the mean of its cells."""
    first = ops.mul(c_round(ops, start), spatial_scale)
    after = ops.mul(ops.add(c_round(ops, end), 1.0), spatial_scale)
    length = ops.maximum(ops.sub(after, first), float(np.float32(0.1)))
    bin_size = ops.div(length, float(pooled))
    lo = ops.floor(ops.add(ops.mul(bin_size, ops.steps(pooled, 0)), first))
    hi = ops.ceil(ops.add(ops.mul(bin_size, ops.steps(pooled, 1)), first))
    return _clip_cells(ops, lo, size), _clip_cells(ops, hi, size)


def psroi_channels(output_dim: int, group_size: int) -> np.ndarray:
    """The input channel each PSROIPooling output (c, gh, gw) averages:
    (c · group_size + gh) · group_size + gw, as an output_dim × group_size² int64 array."""
    return np.arange(output_dim * group_size * group_size, dtype=np.int64).reshape(
        output_dim, group_size, group_size)
