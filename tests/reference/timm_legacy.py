"""A small, independent re-implementation of timm's legacy SENet models and eval transform.

timm cannot be installed beside this torch (it needs torchvision), so this module rebuilds, in
plain torch, what ``timm.create_model("legacy_seresnet50")`` & co. compute at eval time, with
the same module names (so a checkpoint for timm loads here with ``strict=True``):

* ``layer0``: conv1 7x7/2 (pad 3) + bn1 + relu1, or for SENet-154 three 3x3 convolutions
  (64/2, 64, 128, pad 1) each with bn/relu; then ``pool0`` = MaxPool2d(3, 2, ceil_mode=True).
* ``layer1..4``: bottlenecks with conv1 (1x1), conv2 (3x3, pad 1, grouped), conv3 (1x1), each
  followed by BatchNorm2d (eps 1e-5); ``se_module`` = global mean -> fc1 (1x1 conv, bias) ->
  ReLU -> fc2 (1x1 conv, bias) -> sigmoid, multiplied into the branch; the shortcut
  (``downsample`` = conv + BatchNorm2d on the first block of a stage) is added, then ReLU.
  SE-ResNet strides in conv1, SE-ResNeXt and SENet-154 in conv2. Widths: SE-ResNet
  planes/planes/4·planes, SE-ResNeXt (32x4d) 2·planes/2·planes/4·planes with 32 groups,
  SENet-154 2·planes/4·planes/4·planes with 64 groups. SENet-154's stage 2-4 shortcuts are
  3x3 convolutions (pad 1), all others 1x1.
* global average pool, dropout (inactive at eval), ``last_linear``.

``eval_transform`` is timm's default ImageNet eval pipeline for these models (crop_pct 0.875,
bilinear): PIL resize of the shorter side to 256, centre crop 224 at round((s - 224) / 2),
RGB / 255, (x - mean) / std.

Nothing here imports ``senet``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["create", "eval_transform", "MODELS"]

# name -> (block kind, blocks per stage, groups, SENet-154 stem and shortcuts)
MODELS = {
    "legacy_seresnet50": ("resnet", (3, 4, 6, 3), 1, False),
    "legacy_seresnet101": ("resnet", (3, 4, 23, 3), 1, False),
    "legacy_seresnet152": ("resnet", (3, 8, 36, 3), 1, False),
    "legacy_seresnext50_32x4d": ("resnext", (3, 4, 6, 3), 32, False),
    "legacy_seresnext101_32x4d": ("resnext", (3, 4, 23, 3), 32, False),
    "legacy_senet154": ("senet", (3, 8, 36, 3), 64, True),
}


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class Bottleneck(nn.Module):
    def __init__(self, kind: str, inplanes: int, planes: int, groups: int, stride: int,
                 downsample: nn.Module | None):
        super().__init__()
        if kind == "resnet":
            widths, strides = (planes, planes), (stride, 1)
        elif kind == "resnext":
            width = math.floor(planes * 4 / 64) * groups
            widths, strides = (width, width), (1, stride)
        else:
            widths, strides = (2 * planes, 4 * planes), (1, stride)
        out = 4 * planes
        self.conv1 = nn.Conv2d(inplanes, widths[0], 1, stride=strides[0], bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=strides[1], padding=1,
                               groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.conv3 = nn.Conv2d(widths[1], out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se_module = SEModule(out)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.se_module(self.bn3(self.conv3(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class LegacySENet(nn.Module):
    def __init__(self, kind: str, depths, groups: int, deep_stem: bool, num_classes=1000):
        super().__init__()
        if deep_stem:
            stem = [("conv1", nn.Conv2d(3, 64, 3, 2, 1, bias=False)), ("bn1", nn.BatchNorm2d(64)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(64, 64, 3, 1, 1, bias=False)), ("bn2", nn.BatchNorm2d(64)),
                    ("relu2", nn.ReLU()),
                    ("conv3", nn.Conv2d(64, 128, 3, 1, 1, bias=False)),
                    ("bn3", nn.BatchNorm2d(128)), ("relu3", nn.ReLU())]
            inplanes = 128
        else:
            stem = [("conv1", nn.Conv2d(3, 64, 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(64)),
                    ("relu1", nn.ReLU())]
            inplanes = 64
        self.layer0 = nn.Sequential(OrderedDict(stem))
        self.pool0 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for stage, depth in enumerate(depths):
            planes = 64 * 2 ** stage
            stride = 1 if stage == 0 else 2
            kernel = 3 if deep_stem and stage > 0 else 1
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, 4 * planes, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm2d(4 * planes))
            blocks = [Bottleneck(kind, inplanes, planes, groups, stride, downsample)]
            blocks += [Bottleneck(kind, 4 * planes, planes, groups, 1, None)
                       for _ in range(depth - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            inplanes = 4 * planes
        self.last_linear = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.pool0(self.layer0(x))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.last_linear(x.mean(dim=(2, 3)))


def create(name: str) -> LegacySENet:
    """The model in eval mode (random initial weights; load a state_dict into it)."""
    kind, depths, groups, deep_stem = MODELS[name]
    return LegacySENet(kind, depths, groups, deep_stem).eval()


def eval_transform(path, mean, std, size: int = 224, crop_pct: float = 0.875) -> np.ndarray:
    """timm's eval preprocessing of one image file -> float32 3 x size x size (RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        short = math.floor(size / crop_pct)
        w, h = image.size
        if w <= h:
            new = (short, int(short * h / w))
        else:
            new = (int(short * w / h), short)
        image = image.resize(new, Image.BILINEAR)
        top = int(round((new[1] - size) / 2.0))
        left = int(round((new[0] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(std, np.float32).reshape(3, 1, 1)
    return (pixels - mean) / std
