"""Caffe's arithmetic rules (converter/semantics.py), each against numbers worked out by hand
from Caffe's C++ (pooling_layer.cpp, base_conv_layer.cpp, batch_norm_layer.cpp,
reshape_layer.cpp, inner_product_layer.cpp, blob.hpp)."""

from __future__ import annotations

import numpy as np
import pytest

from senet.converter import caffe_pb2 as pb
from senet.converter import semantics as sem
from senet.errors import ShapeError


# ----------------------------------------------------------------------------- axes

@pytest.mark.parametrize("axis, ndim, want", [(0, 4, 0), (3, 4, 3), (-1, 4, 3), (-4, 4, 0)])
def test_canonical_axis(axis, ndim, want):
    assert sem.canonical_axis(axis, ndim, "l") == want


@pytest.mark.parametrize("axis", [4, -5])
def test_canonical_axis_out_of_range(axis):
    with pytest.raises(ShapeError):
        sem.canonical_axis(axis, 4, "l")


# ----------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("size, kernel, pad, stride, dilation, want", [
    (224, 7, 3, 2, 1, 112),   # (224 + 6 - 7) / 2 + 1 = 111.5 → 111 + 1
    (11, 3, 2, 2, 2, 6),      # extent 2·2 + 1 = 5: (11 + 4 - 5) / 2 + 1
    (5, 3, 0, 1, 1, 3),
    (6, 3, 0, 2, 1, 2),       # (6 - 3) / 2 = 1.5 rounds down
])
def test_conv_output_size(size, kernel, pad, stride, dilation, want):
    assert sem.conv_output_size(size, kernel, pad, stride, dilation) == want


def _conv(**fields) -> pb.ConvolutionParameter:
    p = pb.ConvolutionParameter()
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(p, name).extend(value)
        else:
            setattr(p, name, value)
    return p


@pytest.mark.parametrize("fields, name, n, default, want", [
    ({"kernel_size": [3]}, "kernel_size", 2, 0, (3, 3)),          # one value for every axis
    ({"kernel_size": [3, 2]}, "kernel_size", 2, 0, (3, 2)),       # one per axis
    ({"kernel_size": [3, 2, 1]}, "kernel_size", 3, 0, (3, 2, 1)),
    ({"kernel_h": 3, "kernel_w": 2}, "kernel_size", 2, 0, (3, 2)),
    ({}, "kernel_size", 2, 0, (0, 0)),                            # missing: the default
    ({}, "stride", 3, 1, (1, 1, 1)),
    ({"stride": [2]}, "stride", 2, 1, (2, 2)),
    ({"stride_h": 2}, "stride", 2, 1, (2, 0)),                    # stride_w unset is 0
    ({"pad_h": 1, "pad_w": 0}, "pad", 2, 0, (1, 0)),
    ({"pad": [1, 2]}, "pad", 2, 0, (1, 2)),
    ({}, "dilation", 2, 1, (1, 1)),
    ({"dilation": [2]}, "dilation", 2, 1, (2, 2)),
])
def test_spatial_param_of_a_convolution(fields, name, n, default, want):
    assert sem.spatial_param(_conv(**fields), name, n, default, "l") == want


@pytest.mark.parametrize("fields, name, n", [
    ({"kernel_h": 3, "kernel_w": 3}, "kernel_size", 3),  # _h/_w only in 2-D
    ({"kernel_size": [3, 2]}, "kernel_size", 3),         # neither one nor one per axis
    ({"stride": [1, 2, 1]}, "stride", 2),
])
def test_spatial_param_rejects(fields, name, n):
    with pytest.raises(ShapeError):
        sem.spatial_param(_conv(**fields), name, n, 0, "l")


@pytest.mark.parametrize("fields, name, default, want", [
    ({"kernel_size": 3}, "kernel_size", 0, (3, 3)),
    ({"kernel_h": 2, "kernel_w": 3}, "kernel_size", 0, (2, 3)),
    ({"kernel_size": 5, "kernel_h": 2, "kernel_w": 3}, "kernel_size", 0, (2, 3)),
    ({}, "kernel_size", 0, (0, 0)),
    ({}, "stride", 1, (1, 1)),
    ({"stride": 2}, "stride", 1, (2, 2)),
    ({"stride_h": 3, "stride_w": 2}, "stride", 1, (3, 2)),
    ({"pad": 1}, "pad", 0, (1, 1)),
    ({"pad_w": 1}, "pad", 0, (0, 1)),
])
def test_spatial_param_of_a_pooling(fields, name, default, want):
    p = pb.PoolingParameter(**fields)
    assert sem.spatial_param(p, name, 2, default, "l") == want


# ----------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("size, kernel, pad, stride, ceil, want", [
    (6, 3, 0, 2, True, 3),      # ceil((6 - 3) / 2) + 1 = 2 + 1
    (6, 3, 0, 2, False, 2),     # floor((6 - 3) / 2) + 1 = 1 + 1
    (112, 3, 0, 2, True, 56),   # ceil(109 / 2) + 1 = 55 + 1
    (112, 3, 0, 2, False, 55),
    (7, 3, 0, 2, True, 3),      # (7 - 3) / 2 exact: both modes agree
    (7, 3, 0, 2, False, 3),
    (5, 2, 1, 2, True, 3),      # ceil(5 / 2) + 1 = 4, but (4-1)·2 = 6 >= 5 + 1: last dropped
    (6, 3, 1, 2, True, 4),      # ceil(5 / 2) + 1 = 4, (4-1)·2 = 6 < 6 + 1: kept
    (4, 1, 0, 2, True, 3),      # unpadded: no clipping, although (3-1)·2 = 4 >= 4
])
def test_pool_output_size(size, kernel, pad, stride, ceil, want):
    assert sem.pool_output_size(size, kernel, pad, stride, ceil_mode=ceil) == want


def test_pool_output_size_clips_when_the_other_axis_is_padded():
    # Caffe tests pad_h || pad_w: this axis is unpadded, ceil((4 - 1) / 2) + 1 = 3 and
    # (3-1)·2 = 4 >= 4 + 0, so the last window goes
    assert sem.pool_output_size(4, 1, 0, 2, True, any_pad=True) == 2
    assert sem.pool_output_size(4, 1, 0, 2, True, any_pad=False) == 3


@pytest.mark.parametrize("size, kernel, pad, stride, out, pad_end", [
    (6, 3, 0, 2, 3, 1),    # windows [0,3) [2,5) [4,7): one cell past the input
    (5, 2, 1, 2, 3, 0),    # windows [-1,1) [1,3) [3,5): none past it
    (6, 3, 1, 2, 4, 2),    # windows [-1,2) [1,4) [3,6) [5,8): two cells past the input
])
def test_pool_geometry(size, kernel, pad, stride, out, pad_end):
    g = sem.pool_geometry(size, kernel, pad, stride, True)
    assert (g.output, g.pad_end) == (out, pad_end)


def test_ave_pool_divisors_clip_to_the_padded_input():
    # height 6, k 3, s 2, p 1: windows start -1, 1, 3, 5 and end at min(start + 3, 6 + 1):
    # 2, 4, 6, 7 → 3, 3, 3, 2 cells. Width 5: starts -1, 1, 3 end at min(start + 3, 5 + 1):
    # 2, 4, 6 → 3, 3, 3 cells
    gh = sem.pool_geometry(6, 3, 1, 2, True)
    gw = sem.pool_geometry(5, 3, 1, 2, True)
    want = np.array([[9, 9, 9], [9, 9, 9], [9, 9, 9], [6, 6, 6]], dtype=np.float64)
    np.testing.assert_array_equal(sem.ave_pool_divisors(gh, gw), want)


# ----------------------------------------------------------------------------- batch norm

def test_batchnorm_statistics_divide_by_the_factor():
    mean, var = sem.batchnorm_statistics(np.array([2.0, 4.0]), np.array([6.0, 8.0]),
                                         np.array([2.0]))
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(var, [3.0, 4.0])


def test_batchnorm_factor_zero_means_zero_statistics():
    mean, var = sem.batchnorm_statistics(np.array([2.0, 4.0]), np.array([6.0, 8.0]),
                                         np.array([0.0]))
    np.testing.assert_array_equal(mean, [0.0, 0.0])
    np.testing.assert_array_equal(var, [0.0, 0.0])


def test_batchnorm_affine():
    # mean 1, var 3, eps 1: a = 1 / sqrt(3 + 1) = 0.5, b = -1 · 0.5
    a, b = sem.batchnorm_affine(np.array([2.0]), np.array([6.0]), np.array([2.0]), 1.0)
    np.testing.assert_array_equal(a, [0.5])
    np.testing.assert_array_equal(b, [-0.5])


def test_fold_affine_into_conv():
    weight = np.array([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])  # 2 output channels
    w, b = sem.fold_affine_into_conv(weight, np.array([1.0, -1.0]), np.array([2.0, 0.5]),
                                     np.array([10.0, 20.0]))
    np.testing.assert_array_equal(w, [[[[2.0, 4.0]]], [[[1.5, 2.0]]]])
    np.testing.assert_array_equal(b, [12.0, 19.5])


def test_prototxt_float_is_the_written_decimal():
    assert sem.prototxt_float(np.float32(0.1)) == 0.1
    assert sem.prototxt_float(1e-5) == 1e-5


# ----------------------------------------------------------------------------- reshape / flatten

@pytest.mark.parametrize("dims, axis, num_axes, want", [
    ([0, -1], 0, -1, (2, 60)),           # 0 copies dim 0, -1 takes the rest
    ([0, 0, -1], 0, -1, (2, 3, 20)),
    ([-1], 1, 2, (2, 12, 5)),            # only axes 1 and 2 are replaced
    ([6, -1], 0, -1, (6, 20)),
    ([1, 1], -1, 0, (2, 3, 4, 5, 1, 1)),  # axis -1: after the last axis
    ([0], 1, 1, (2, 3, 4, 5)),
])
def test_reshape_output(dims, axis, num_axes, want):
    assert sem.reshape_output((2, 3, 4, 5), dims, axis, num_axes, "l") == want


@pytest.mark.parametrize("dims", [[-1, -1], [7, -1], [2, 3, 4, 6], [0, 0, 0, 0, 0]])
def test_reshape_output_rejects(dims):
    with pytest.raises(ShapeError):
        sem.reshape_output((2, 3, 4, 5), dims, 0, -1, "l")


@pytest.mark.parametrize("axis, want", [(1, (1, 60)), (2, (2, 20)), (-1, (3, 5)), (0, (0, 120))])
def test_inner_product_flattens_from_its_axis(axis, want):
    assert sem.inner_product_fan_in((2, 3, 4, 5), axis, "l") == want


@pytest.mark.parametrize("axis, end_axis, want", [
    (1, -1, (2, 60)), (1, 2, (2, 12, 5)), (0, 0, (2, 3, 4, 5)),
])
def test_flatten_output(axis, end_axis, want):
    assert sem.flatten_output((2, 3, 4, 5), axis, end_axis, "l") == want


def test_scale_param_shape_and_broadcast():
    assert sem.scale_param_shape((2, 3, 4, 5), 1, 1, "l") == (3,)
    assert sem.scale_param_shape((2, 3, 4, 5), 1, -1, "l") == (3, 4, 5)
    assert sem.broadcast_shape_for((3,), 4, 1) == (3, 1, 1)


@pytest.mark.parametrize("size, points, tops, want", [
    (10, [2, 7], 3, [2, 5, 3]), (9, [], 3, [3, 3, 3]),
])
def test_slice_points(size, points, tops, want):
    assert sem.slice_points(size, points, tops, "l") == want
