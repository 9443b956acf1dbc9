"""senet: exact conversion of the published SENet Caffe models to ONNX and PyTorch, no Caffe needed."""

__version__ = "0.1.0"
