"""Caffe → ONNX / PyTorch conversion: reading, IR, passes and emitters."""

from senet.converter.layers import LayerConverter, register

__all__ = ["LayerConverter", "register"]
