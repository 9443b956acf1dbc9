"""senet: exact conversion of the published SENet Caffe models to ONNX and PyTorch, no Caffe needed.

Importing senet does not import torch (the CLI's ONNX path never needs it). The custom ops
``torch.ops.senet.axpy`` and ``torch.ops.senet.global_avg_pool``, which converted modules and
saved .pt2 programs call, are registered as soon as torch is imported: at once if it already
is, otherwise right after ``import torch`` completes. Without torch installed nothing happens.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"


def load(path):
    """The torch.nn.Module saved by ``senet.converter.torch_io.save_safetensors`` (weights
    plus graph spec; nothing is unpickled), in eval mode."""
    from senet.converter.torch_io import load_safetensors

    return load_safetensors(path)


def register_torch_ops() -> bool:
    """Register senet's torch custom ops now; False when torch is not installed."""
    try:
        import senet.kernels  # noqa: F401
    except ImportError as error:
        if error.name != "torch" and not str(error.name).startswith("torch."):
            raise
        return False
    return True


class _RegisterOpsAfterTorchImport:
    """A meta path finder that registers the ops once torch's own import has finished.

    It answers only for ``torch``, removes itself first (so it acts once), lets the other
    finders locate torch, and wraps that loader's exec_module.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        _remove_hook()
        import importlib.util

        spec = importlib.util.find_spec("torch")
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        load_torch = loader.exec_module

        def exec_module(module):
            load_torch(module)
            _register_after_torch()

        loader.exec_module = exec_module
        return spec


def _register_after_torch() -> None:
    try:
        register_torch_ops()
    except Exception as error:  # a broken extra must not break `import torch`
        import warnings

        warnings.warn(f"senet: registering torch.ops.senet failed: {error}", RuntimeWarning,
                      stacklevel=2)


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOpsAfterTorchImport)]


if "torch" in sys.modules:
    _register_after_torch()
elif not any(isinstance(f, _RegisterOpsAfterTorchImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOpsAfterTorchImport())
