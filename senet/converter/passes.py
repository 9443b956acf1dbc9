"""IR → IR passes. Each is optional and keeps the net's outputs equal."""

from __future__ import annotations

from senet.converter.graph import CaffeNet


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
