"""Reference forward of the region-of-interest poolings: Fast/Faster R-CNN's ROIPooling
(rbgirshick/caffe-fast-rcnn roi_pooling_layer.cpp) and R-FCN's PSROIPooling
(daijifeng001/caffe-rfcn psroi_pooling_layer.cpp, Forward_cpu and the .cu kernel).

Loops over rois, channels and bins follow the C++. The bin geometry is integer results of
float arithmetic: Caffe runs these nets in float, so the geometry here is computed in float32
whatever the requested dtype (a float64 geometry moves bin edges at ties and changes the
result wholesale, not by rounding); the pooled values stay in the requested dtype.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math

import numpy as np

from .caffe_forward import FLT_MAX, _name, _param, register_layer
from .prototxt_text import get

F = np.float32


def _c_round(v: np.float32) -> int:
    """C's round(): halfway cases away from zero (not NumPy's half to even). A float32 plus
    0.5 is exact in double, so floor(|v| + 0.5) has no rounding of its own."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _rois(layer, bottoms):
    x, rois = bottoms
    if x.ndim != 4 or rois.size % 5 or rois.shape[0] * 5 != rois.size:
        raise ValueError(f"{_name(layer)}: needs N×C×H×W data and R×5 rois")
    rois = rois.reshape(-1, 5)
    for r in rois:
        if not 0 <= int(r[0]) < x.shape[0]:  # C++ int conversion truncates
            raise ValueError(f"{_name(layer)}: roi batch index {r[0]} out of range")
    return x, rois


def _roi_pooling(layer, bottoms, params):
    p = _param(layer, "roi_pooling_param")
    ph_n, pw_n = int(get(p, "pooled_h", 0)), int(get(p, "pooled_w", 0))
    scale = F(get(p, "spatial_scale", 1.0))
    if ph_n <= 0 or pw_n <= 0:
        raise ValueError(f"{_name(layer)}: pooled_h and pooled_w must be > 0")
    x, rois = _rois(layer, bottoms)
    _, c_n, height, width = x.shape
    top = np.full((rois.shape[0], c_n, ph_n, pw_n), -FLT_MAX, x.dtype)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        start_w, start_h, end_w, end_h = (_c_round(F(roi[k]) * scale) for k in (1, 2, 3, 4))
        roi_h = max(end_h - start_h + 1, 1)
        roi_w = max(end_w - start_w + 1, 1)
        bin_h = F(roi_h) / F(ph_n)
        bin_w = F(roi_w) / F(pw_n)
        for c in range(c_n):
            plane = x[b, c]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hs = int(math.floor(F(ph) * bin_h))
                    ws = int(math.floor(F(pw) * bin_w))
                    he = int(math.ceil(F(ph + 1) * bin_h))
                    we = int(math.ceil(F(pw + 1) * bin_w))
                    hs = min(max(hs + start_h, 0), height)
                    he = min(max(he + start_h, 0), height)
                    ws = min(max(ws + start_w, 0), width)
                    we = min(max(we + start_w, 0), width)
                    if he <= hs or we <= ws:
                        top[n, c, ph, pw] = 0
                        continue
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if plane[h, w] > top[n, c, ph, pw]:
                                top[n, c, ph, pw] = plane[h, w]
    return [top]


def _psroi_pooling(layer, bottoms, params):
    p = _param(layer, "psroi_pooling_param")
    scale = F(get(p, "spatial_scale", 1.0))
    out_dim, group = int(get(p, "output_dim", 0)), int(get(p, "group_size", 0))
    if out_dim <= 0 or group <= 0:
        raise ValueError(f"{_name(layer)}: output_dim and group_size must be > 0")
    x, rois = _rois(layer, bottoms)
    _, channels, height, width = x.shape
    if channels != out_dim * group * group:
        raise ValueError(f"{_name(layer)}: {channels} channels != output_dim·group_size²")
    dt = x.dtype.type
    top = np.zeros((rois.shape[0], out_dim, group, group), x.dtype)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        start_w = F(_c_round(F(roi[1]))) * scale
        start_h = F(_c_round(F(roi[2]))) * scale
        end_w = F(_c_round(F(roi[3])) + 1.0) * scale
        end_h = F(_c_round(F(roi[4])) + 1.0) * scale
        roi_w = max(F(end_w - start_w), F(0.1))
        roi_h = max(F(end_h - start_h), F(0.1))
        bin_h = F(roi_h / F(group))
        bin_w = F(roi_w / F(group))
        for ctop in range(out_dim):
            for ph in range(group):
                for pw in range(group):
                    # float product, then float sum (the CPU code; nvcc may fuse them)
                    hs = int(math.floor(F(F(ph) * bin_h) + start_h))
                    ws = int(math.floor(F(F(pw) * bin_w) + start_w))
                    he = int(math.ceil(F(F(ph + 1) * bin_h) + start_h))
                    we = int(math.ceil(F(F(pw + 1) * bin_w) + start_w))
                    hs, he = min(max(hs, 0), height), min(max(he, 0), height)
                    ws, we = min(max(ws, 0), width), min(max(we, 0), width)
                    if he <= hs or we <= ws:
                        continue  # the top stays 0
                    c = (ctop * group + ph) * group + pw
                    total = dt(0)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            total += x[b, c, h, w]
                    top[n, ctop, ph, pw] = total / dt((he - hs) * (we - ws))
    return [top]


register_layer("ROIPooling", _roi_pooling)
register_layer("PSROIPooling", _psroi_pooling)
