"""senet: exact conversion of Caffe models to ONNX and PyTorch, no Caffe needed.

The public API (``senet.api``)::

    senet.load_caffe(model, prototxt=None, *, input_shape=None)  -> CaffeNet
    senet.convert(model, to="onnx", output=None, *, ...)         -> Path
    senet.to_torch(net_or_path, ...)                             -> torch.fx.GraphModule
    senet.verify(model=..., weights=..., val=..., ...)           -> Report
    senet.inspect(model, prototxt=None)                          -> str
    senet.load(path)    the module of a .safetensors file senet wrote

Importing senet does not import torch (the ONNX path never needs it) and changes nothing at
import time. The torch custom ops ``torch.ops.senet.*`` that converted modules and saved .pt2
programs call are registered by ``import senet.kernels``; every senet function that builds or
loads a module imports it, and a program that loads a bare .pt2 with ``torch.export.load``
imports it first.
"""

from __future__ import annotations

__version__ = "0.1.0"

from senet.api import convert, inspect, load_caffe, to_torch, verify  # noqa: E402


def load(path):
    """The torch.nn.Module saved by ``senet.convert(..., to="safetensors")`` (weights plus
    graph spec; nothing is unpickled), in eval mode."""
    from senet.converter.torch_io import load_safetensors

    return load_safetensors(path)


__all__ = ["convert", "inspect", "load", "load_caffe", "to_torch", "verify", "__version__"]
