"""IR → IR passes. Each is optional and keeps the net's outputs equal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.graph import CaffeNet, Layer
from senet.converter.semantics import batchnorm_affine, fold_affine_into_conv, prototxt_float


def remove_splits(net: CaffeNet) -> CaffeNet:
    """Drop Split layers (Caffe inserts them when one blob feeds several layers): every use of a
    split top reads the split's bottom instead, so default outputs are real blobs, not copies."""
    alias: dict[str, str] = {}
    kept = []
    for layer in net.layers:
        layer.bottoms = [alias.get(b, b) for b in layer.bottoms]
        if layer.type == "Split":
            for top in layer.tops:
                alias[top] = layer.bottoms[0]
            continue
        kept.append(layer)
    net.layers = kept
    net.final_names = {caffe: alias.get(ssa, ssa) for caffe, ssa in net.final_names.items()}
    for top, source in alias.items():
        net.shapes.pop(top, None)
    return net


def _kept_blobs(net: CaffeNet, outputs: list[str] | None) -> set[str]:
    """SSA names a pass must keep computing: the outputs asked for, or the default ones."""
    return {ssa for _, ssa in net.output_pairs(outputs)}


def _sole_consumer(uses: dict[str, list[Layer]], blob: str, keep: set[str]) -> Layer | None:
    """The one layer reading `blob`, if exactly one does and the blob is not an output."""
    readers = uses.get(blob, [])
    return readers[0] if len(readers) == 1 and blob not in keep else None


def _without(net: CaffeNet, dropped: set[int], replaced: dict[int, Layer],
             gone: set[str]) -> CaffeNet:
    """A copy of `net` with layers (by index) dropped or replaced and blobs `gone` forgotten."""
    layers = [replaced.get(i, layer) for i, layer in enumerate(net.layers) if i not in dropped]
    return replace(net, layers=layers,
                   shapes={b: s for b, s in net.shapes.items() if b not in gone},
                   final_names={c: s for c, s in net.final_names.items() if s not in gone})


def fold_batchnorm(net: CaffeNet, outputs: list[str] | None = None,
                   dtype=np.float32) -> CaffeNet:
    """Convolution → BatchNorm [→ Scale] chains become one Convolution with a bias.

    Folded only where the convolution's output feeds that BatchNorm alone (and the
    BatchNorm's that per-channel Scale alone) and no blob of the chain but its last is in
    `outputs` (default: the net's default outputs), so every output keeps its value. The
    arithmetic is float64; the new weights are stored as `dtype`. The chain's last top names
    the result. Returns a new net; `net` is unchanged.
    """
    keep = _kept_blobs(net, outputs)
    uses = net.consumers()
    index = {id(layer): i for i, layer in enumerate(net.layers)}
    dropped: set[int] = set()
    replaced: dict[int, Layer] = {}
    gone: set[str] = set()
    for i, conv in enumerate(net.layers):
        if conv.type != "Convolution" or len(conv.bottoms) != 1 or len(conv.tops) != 1:
            continue
        bn = _sole_consumer(uses, conv.tops[0], keep)
        if bn is None or bn.type != "BatchNorm":
            continue
        channels = net.shapes[conv.tops[0]][1]
        chain = [bn]
        scale = _sole_consumer(uses, bn.tops[0], keep)
        if scale is not None and _is_channel_scale(net, scale, channels):
            chain.append(scale)
        a, b = batchnorm_affine(*bn.blobs[:3], prototxt_float(bn.param.batch_norm_param.eps))
        if len(chain) == 2:
            gamma = np.asarray(scale.blobs[0], np.float64).reshape(-1)
            beta = (np.asarray(scale.blobs[1], np.float64).reshape(-1)
                    if scale.param.scale_param.bias_term else 0.0)
            a, b = gamma * a, gamma * b + beta
        p = conv.param.convolution_param
        weight, bias = fold_affine_into_conv(conv.blobs[0], conv.blobs[1] if p.bias_term
                                             else None, a, b)
        param = pb.LayerParameter()
        param.CopyFrom(conv.param)
        param.convolution_param.bias_term = True
        top = chain[-1].tops[0]
        replaced[i] = replace(conv, param=param, tops=[top],
                              blobs=[weight.astype(dtype), bias.astype(dtype)])
        dropped.update(index[id(layer)] for layer in chain)
        gone.update([conv.tops[0]] + [layer.tops[0] for layer in chain[:-1]])
    return _without(net, dropped, replaced, gone)


def _is_channel_scale(net: CaffeNet, layer: Layer, channels: int) -> bool:
    """A Scale with a learned factor of one value per channel (its operand starts at axis 1
    and has C elements)."""
    if layer.type != "Scale" or len(layer.bottoms) != 1:
        return False
    ndim = len(net.shapes[layer.bottoms[0]])
    axis = layer.param.scale_param.axis
    return (axis + ndim if axis < 0 else axis) == 1 and layer.blobs[0].size == channels


def fuse_axpy_relu(net: CaffeNet, outputs: list[str] | None = None) -> CaffeNet:
    """An Axpy whose output feeds only a plain ReLU (negative_slope 0, in place or not)
    becomes one Axpy with ``fused_relu`` set, writing the ReLU's top. The Axpy's own output
    must not be in `outputs` (default: the net's default outputs). Returns a new net."""
    keep = _kept_blobs(net, outputs)
    uses = net.consumers()
    index = {id(layer): i for i, layer in enumerate(net.layers)}
    dropped: set[int] = set()
    replaced: dict[int, Layer] = {}
    gone: set[str] = set()
    for i, axpy in enumerate(net.layers):
        if axpy.type != "Axpy" or axpy.fused_relu:
            continue
        relu = _sole_consumer(uses, axpy.tops[0], keep)
        if relu is None or relu.type != "ReLU" or relu.param.relu_param.negative_slope != 0:
            continue
        replaced[i] = replace(axpy, tops=list(relu.tops), fused_relu=True)
        dropped.add(index[id(relu)])
        gone.add(axpy.tops[0])
    return _without(net, dropped, replaced, gone)
