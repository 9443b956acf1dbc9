"""A converted net as text: layers, blob shapes and parameters (``senet-convert --inspect``)."""

from __future__ import annotations

from senet.converter.graph import CaffeNet


def describe(net: CaffeNet, recognised: str | None = None) -> str:
    """A table of the net's layers with their output shapes and learned blobs, its inputs,
    outputs and parameter count; `recognised` names the published model it matches."""
    lines = [f"net: {net.name or '(unnamed)'}",
             "inputs: " + ", ".join(f"{n} {list(s)}" for n, s in net.inputs.items())]
    width = max([len(layer.name) for layer in net.layers] + [5])
    for layer in net.layers:
        shapes = " ".join(str(list(net.shapes[t])) for t in layer.tops)
        params = sum(b.size for b in layer.blobs)
        blob_shapes = " ".join("x".join(map(str, b.shape)) for b in layer.blobs)
        lines.append(f"  {layer.name:<{width}}  {layer.type:<12} -> {shapes}"
                     + (f"  params {params:,} ({blob_shapes})" if params else ""))
    lines.append("outputs: " + ", ".join(public for public, _ in net.output_pairs()))
    lines.append(f"parameters: {net.parameter_count():,} in "
                 f"{sum(1 for layer in net.layers if layer.blobs)} layers with blobs")
    lines.append("recognised model: " + (recognised or "none"))
    return "\n".join(lines)
