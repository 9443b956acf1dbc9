"""The one memory-format rule every implementation of the senet ops follows (fake included)."""

from __future__ import annotations

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout an N×C×H×W tensor is processed and returned in.

    channels_last when x is channels_last-contiguous and not NCHW-contiguous; NCHW otherwise
    (also for tensors contiguous in both, e.g. C == 1 or H == W == 1, and for any other strides,
    which are copied to NCHW first).
    """
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
