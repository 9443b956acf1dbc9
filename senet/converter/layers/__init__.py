"""Layer converters, one module per family, registered by Caffe type string.

A converter states, for its Caffe type(s): how many bottoms and tops it takes, the shapes of the
blobs it expects, the shapes it produces, and how it is emitted as ONNX nodes and as torch.fx
nodes. Adding a Caffe layer means adding one class here and nothing else. Users register
converters for a fork's layers the same way::

    from senet.converter import register, LayerConverter

    @register("MyLayer")
    class MyLayer(LayerConverter): ...
"""

from __future__ import annotations

from senet.converter.graph import Layer, Shape
from senet.errors import ShapeError

_REGISTRY: dict[str, "LayerConverter"] = {}


class LayerConverter:
    """Base class: override what the layer needs; defaults describe a 1-in 1-out layer
    without blobs that keeps its input shape."""

    min_bottoms = 1
    max_bottoms: int | None = 1
    min_tops = 1
    max_tops: int | None = 1
    # True for a layer whose tops' sizes depend on the values it reads (detections, proposals):
    # infer_shapes then gives Caffe's setup shapes, and every value computed from those tops
    # has sizes known only at run time (CaffeNet.data_dependent_values).
    data_dependent = False
    # True for a layer whose tops are the same for every image of the batch (PriorBox's
    # boxes depend on shapes only): their axis 0 is no batch axis (CaffeNet.batch_blobs).
    batch_independent = False

    def blob_shapes(self, layer: Layer, in_shapes: list[Shape]) -> list[Shape]:
        """Shapes of the learned blobs the layer needs, in Caffe's order."""
        return []

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape]) -> list[Shape]:
        return [in_shapes[0]] * len(layer.tops)

    def keeps_batch(self, layer: Layer, in_shapes: list[Shape], out_shapes: list[Shape],
                    batch: int) -> bool:
        """Whether the layer gives Caffe's result for any batch size, axis 0 of its bottoms
        and tops being the batch (see CaffeNet.batch_fixed_by). Default: every bottom and
        top has axis 0 of size `batch`. A layer whose weights or axes span axis 0 says
        False."""
        return all(len(s) > 0 and s[0] == batch for s in (*in_shapes, *out_shapes))

    def to_onnx(self, layer: Layer, g) -> None:  # g: senet.converter.to_onnx.OnnxGraph
        raise NotImplementedError(f"{type(self).__name__} has no ONNX emitter")

    def to_torch(self, layer: Layer, ctx) -> None:  # ctx: senet.converter.to_torch.TorchGraph
        """Emit fx nodes defining every top (torch is imported by the emitter, not here)."""
        raise NotImplementedError(f"{type(self).__name__} has no torch emitter")

    def check_arity(self, layer: Layer) -> None:
        nb, nt = len(layer.bottoms), len(layer.tops)
        if nb < self.min_bottoms or (self.max_bottoms is not None and nb > self.max_bottoms):
            raise ShapeError(f"{layer.type} takes {_range(self.min_bottoms, self.max_bottoms)} "
                             f"bottom(s), got {nb}", layer=layer.name)
        if nt < self.min_tops or (self.max_tops is not None and nt > self.max_tops):
            raise ShapeError(f"{layer.type} gives {_range(self.min_tops, self.max_tops)} "
                             f"top(s), got {nt}", layer=layer.name)


def _range(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"at least {lo}"
    return str(lo) if lo == hi else f"{lo} to {hi}"


BVLC = "BVLC Caffe"


def register(*caffe_types: str, origin: str = BVLC):
    """Class decorator registering a LayerConverter for Caffe layer type strings; `origin`
    names the Caffe (fork) whose C++ the converter reproduces (README's layer table shows it)."""
    def decorate(cls):
        instance = cls()
        instance.origin = origin
        for t in caffe_types:
            if t in _REGISTRY:
                raise RuntimeError(f"Caffe layer type '{t}' is registered twice")
            _REGISTRY[t] = instance
        return cls
    return decorate


def layer_table() -> str:
    """README's table of supported layer types, made from the registry: type, where its
    semantics come from, the family module, and which emitters it has."""
    def has(converter, emitter):
        return "yes" if getattr(type(converter), emitter) is not getattr(LayerConverter,
                                                                            emitter) else "no"
    lines = ["| Caffe type | semantics of | family | ONNX | torch |", "|---|---|---|---|---|"]
    for caffe_type in sorted(_REGISTRY, key=str.lower):
        converter = _REGISTRY[caffe_type]
        family = type(converter).__module__.rsplit(".", 1)[-1]
        lines.append(f"| {caffe_type} | {converter.origin} | {family} | "
                     f"{has(converter, 'to_onnx')} | {has(converter, 'to_torch')} |")
    return "\n".join(lines) + "\n"


def converter_for(caffe_type: str) -> LayerConverter | None:
    """The converter registered under a key: a Caffe type, or "Python module.layer"."""
    return _REGISTRY.get(caffe_type)


def python_layer_key(param) -> str:
    """How a Python layer is named and registered: "Python module.layer"."""
    return f"Python {param.python_param.module}.{param.python_param.layer}"


def converter_of(param) -> LayerConverter | None:
    """The converter of a layer (its LayerParameter): for a Python layer the one registered
    for its module.layer, else one registered for all Python layers; else by type."""
    if param.type == "Python" and python_layer_key(param) in _REGISTRY:
        return _REGISTRY[python_layer_key(param)]
    return _REGISTRY.get(param.type)


# Importing the families registers them.
from senet.converter.layers import (  # noqa: E402,F401
    activation, axpy, conv, crop, dense, eltwise, index, norm, pool, recurrent, reduce,
    structure,
    depthwise, detection, fork_activation, fork_norm, proposal, resize, roi, shuffle,
    anchors, ssd_norm,
)
