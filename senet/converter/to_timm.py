"""Export a published SENet Caffe model as a checkpoint for timm's legacy SENet models.

``export_timm(net, path, recognise(net))`` writes a safetensors file whose keys and shapes are
exactly the ``state_dict`` of ``timm.create_model(<timm name>)`` for SE-ResNet-50/101/152,
SE-ResNeXt-50/101 (32x4d) and SENet-154 (timm's ``legacy_*`` models), so it loads with
``strict=True``. Each Caffe
BatchNorm + Scale pair becomes one ``BatchNorm2d`` (gamma, beta, and the statistics divided by
Caffe's stored factor; a Caffe eps other than timm's 1e-5 is folded into ``running_var``), the
SE 1x1 convolutions become ``se_module.fc1/fc2`` and the classifier's rows are reordered from
the ILSVRC2012 devkit order the Caffe models use to timm's sorted-WNID order.

Input preprocessing (the paragraph the README quotes). The Caffe models expect
``x = P_BGR - (104, 117, 123)`` on pixels 0-255; timm feeds ``t = (P_RGB / 255 - mean) / std``
with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). By default the export
makes the stem convolution accept ``t``: its input channels are reversed to RGB and scaled by
``255 * std``, so per pixel it sees ``P - 255 * mean``, and the remaining constant -- the
convolution of the constant image ``255 * mean - (104, 117, 123)``, about (-0.47, -0.72, +0.68)
grey levels per BGR channel -- is subtracted from the first BatchNorm's ``running_mean``. Every
stem output whose window lies inside the image is then Caffe's (up to float32 rounding). Outputs
whose window overlaps the zero padding are not: Caffe pads the mean-subtracted image with 0,
i.e. with the pixel value (104, 117, 123), timm pads the normalised image with 0, i.e. with the
pixel value ``255 * mean`` = (123.7, 116.3, 103.5) RGB, while the folded offset assumes every tap
sees an image pixel; each padded tap contributes ``W * (255 * mean - caffe_mean)`` (under one
grey level) of difference. That touches the outer output rows and columns of the stem (rows and
columns 0, 1 and 111 of the 7x7/2 stem, row and column 0 of SENet-154's 3x3/2 stem) and spreads
a little from there; logits move slightly, predictions rarely. With ``exact=True``
(``--timm-exact``) the stem is only flipped to RGB and the checkpoint's ``pretrained_cfg`` sets
mean = (123, 117, 104) / 255 and std = (1/255, 1/255, 1/255): timm's normalisation then yields
exactly Caffe's ``P - (123, 117, 104)`` in RGB, zero padding means the same in both, and the
outputs equal Caffe's everywhere. Resampling is a separate matter in both modes: timm resizes
with PIL (antialiased bilinear) and crops at round((s - 224) / 2), the published evaluation with
OpenCV's INTER_LINEAR and floor((s - 224) / 2) (``senet.parity.images.preprocess``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from senet.classes import remap_table
from senet.converter.graph import CaffeNet, Layer
from senet.converter.semantics import batchnorm_statistics, spatial_param
from senet.errors import ConversionError
from senet.files import atomic_output

TIMM_BN_EPS = 1e-5
TIMM_MEAN = (0.485, 0.456, 0.406)  # RGB, timm's IMAGENET_DEFAULT_MEAN
TIMM_STD = (0.229, 0.224, 0.225)
SE_REDUCTION = 16
CLASS_ORDER_NOTE = ("classes in sorted-WNID order (class 0 = n01440764 tench), as timm and "
                    "torchvision's ImageFolder; the Caffe model's devkit-order rows were permuted")


# ----------------------------------------------------------------------------- timm's layout

@dataclass(frozen=True)
class TimmArchitecture:
    """The constructor arguments of one timm legacy SENet model."""

    block: str                  # "seresnet" (stride in conv1), "seresnext", "senet" (in conv2)
    depths: tuple[int, int, int, int]
    groups: int
    deep_stem: bool             # three 3x3 convolutions instead of one 7x7
    downsample_kernel: int      # of the projection shortcut in layer2..4 (layer1's is 1x1)


ARCHITECTURES = {
    "legacy_seresnet50": TimmArchitecture("seresnet", (3, 4, 6, 3), 1, False, 1),
    "legacy_seresnet101": TimmArchitecture("seresnet", (3, 4, 23, 3), 1, False, 1),
    "legacy_seresnet152": TimmArchitecture("seresnet", (3, 8, 36, 3), 1, False, 1),
    "legacy_seresnext50_32x4d": TimmArchitecture("seresnext", (3, 4, 6, 3), 32, False, 1),
    "legacy_seresnext101_32x4d": TimmArchitecture("seresnext", (3, 4, 23, 3), 32, False, 1),
    "legacy_senet154": TimmArchitecture("senet", (3, 8, 36, 3), 64, True, 3),
}


@dataclass(frozen=True)
class ConvMapping:
    """One timm convolution, the Caffe layer it comes from, and the geometry both must have."""

    key: str                    # timm module, e.g. "layer1.0.conv1"
    caffe: str                  # Caffe layer name, e.g. "conv2_1_1x1_reduce"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    bias: bool = False
    norm: str | None = None     # timm BatchNorm2d fed by this convolution (Caffe BN + Scale)

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)


def conv_mappings(arch: TimmArchitecture) -> list[ConvMapping]:
    """Every convolution of the timm model in state_dict order, with its Caffe source."""
    if arch.deep_stem:
        convs = [ConvMapping("layer0.conv1", "conv1_1/3x3_s2", 3, 64, 3, 2, norm="layer0.bn1"),
                 ConvMapping("layer0.conv2", "conv1_2/3x3", 64, 64, 3, norm="layer0.bn2"),
                 ConvMapping("layer0.conv3", "conv1_3/3x3", 64, 128, 3, norm="layer0.bn3")]
        inplanes = 128
    else:
        convs = [ConvMapping("layer0.conv1", "conv1/7x7_s2", 3, 64, 7, 2, norm="layer0.bn1")]
        inplanes = 64
    for stage, depth in enumerate(arch.depths):
        planes = 64 << stage
        out = 4 * planes
        for index in range(depth):
            stride = 2 if stage > 0 and index == 0 else 1
            if arch.block == "seresnet":
                mid1 = mid2 = planes
                stride1, stride2 = stride, 1
            elif arch.block == "seresnext":
                mid1 = mid2 = (planes * 4 // 64) * arch.groups
                stride1, stride2 = 1, stride
            else:
                mid1, mid2 = 2 * planes, 4 * planes
                stride1, stride2 = 1, stride
            timm = f"layer{stage + 1}.{index}"
            caffe = f"conv{stage + 2}_{index + 1}"
            convs += [
                ConvMapping(f"{timm}.conv1", f"{caffe}_1x1_reduce", inplanes, mid1, 1, stride1,
                            norm=f"{timm}.bn1"),
                ConvMapping(f"{timm}.conv2", f"{caffe}_3x3", mid1, mid2, 3, stride2, arch.groups,
                            norm=f"{timm}.bn2"),
                ConvMapping(f"{timm}.conv3", f"{caffe}_1x1_increase", mid2, out, 1,
                            norm=f"{timm}.bn3"),
                ConvMapping(f"{timm}.se_module.fc1", f"{caffe}_1x1_down", out,
                            out // SE_REDUCTION, 1, bias=True),
                ConvMapping(f"{timm}.se_module.fc2", f"{caffe}_1x1_up", out // SE_REDUCTION,
                            out, 1, bias=True),
            ]
            if index == 0:  # stride 2 or a channel change: timm's projection shortcut
                kernel = arch.downsample_kernel if stage > 0 else 1
                convs.append(ConvMapping(f"{timm}.downsample.0", f"{caffe}_1x1_proj", inplanes,
                                         out, kernel, stride, norm=f"{timm}.downsample.1"))
            inplanes = out
    return convs


def timm_layout(timm_name: str) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes of ``timm.create_model(timm_name)``, in order."""
    arch = ARCHITECTURES[timm_name]
    layout: dict[str, tuple[int, ...]] = {}
    features = 0
    for conv in conv_mappings(arch):
        layout[f"{conv.key}.weight"] = conv.weight_shape
        if conv.bias:
            layout[f"{conv.key}.bias"] = (conv.out_channels,)
        if conv.norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                layout[f"{conv.norm}.{name}"] = (conv.out_channels,)
            layout[f"{conv.norm}.num_batches_tracked"] = ()
        features = conv.out_channels
    layout["last_linear.weight"] = (1000, features)
    layout["last_linear.bias"] = (1000,)
    return layout


# ----------------------------------------------------------------------------- conversion

def timm_state_dict(net: CaffeNet, entry, exact: bool = False
                    ) -> tuple[str, dict[str, np.ndarray], dict]:
    """(timm model name, state_dict as NumPy arrays in timm's order, pretrained_cfg).

    ``entry`` is the published model the net was recognised as (``senet.manifest.recognise``:
    a ModelEntry, or None). Raises ConversionError (one line) for a net that is not one of the
    six published SENets timm has, or whose layers do not have the geometry timm's model gives
    them."""
    if entry is None:
        raise ConversionError("a timm checkpoint needs one of the published SE-ResNet-50/101/"
                              "152, SE-ResNeXt-50/101 or SENet-154 models; this net's "
                              "architecture fingerprint matches none of them")
    if entry.timm_name not in ARCHITECTURES:
        title = entry.aliases[0] if entry.aliases else entry.name
        raise ConversionError(f"timm has no counterpart of {title} (its legacy SENets are "
                              "SE-ResNet-50/101/152, SE-ResNeXt-50/101 and SENet-154)")
    pre = entry.preprocessing
    if pre.color != "BGR":
        raise ConversionError(f"{entry.name}: unexpected input colour order {pre.color}")
    layers = {layer.name: layer for layer in net.layers}
    consumers = net.consumers()
    convs = conv_mappings(ARCHITECTURES[entry.timm_name])

    state: dict[str, np.ndarray] = {}
    for k, conv in enumerate(convs):
        layer = _conv_layer(layers, conv)
        weight = layer.blobs[0]  # float32, copied unchanged (no float64 copy of 115M weights)
        if k == 0:
            if layer.bottoms[0] not in net.inputs:
                raise ConversionError("is not fed by the net's input", layer=layer.name)
            weight, offset = _stem_for_timm(np.asarray(weight, np.float64), pre.mean,
                                            pre.scale, exact)
        state[f"{conv.key}.weight"] = weight
        if conv.bias:
            state[f"{conv.key}.bias"] = layer.blobs[1]
        if conv.norm:
            gamma, beta, mean, var = _batchnorm_scale(layer, consumers)
            if k == 0:
                mean = mean - offset  # conv(timm input) = conv(Caffe input) - offset inside
            state[f"{conv.norm}.weight"] = gamma
            state[f"{conv.norm}.bias"] = beta
            state[f"{conv.norm}.running_mean"] = mean
            state[f"{conv.norm}.running_var"] = var
            state[f"{conv.norm}.num_batches_tracked"] = np.array(0, np.int64)
    classifier = _classifier(layers)
    rows = remap_table("sorted", entry.class_order)  # timm row j = Caffe row rows[j]
    state["last_linear.weight"] = np.asarray(classifier.blobs[0])[rows]
    state["last_linear.bias"] = np.asarray(classifier.blobs[1]).reshape(-1)[rows]

    # float64 arithmetic (stem, BatchNorm statistics) is rounded to float32 once, here.
    state = {key: (value if value.dtype == np.int64 else np.ascontiguousarray(value, np.float32))
             for key, value in state.items()}
    _check_layout(state, timm_layout(entry.timm_name), entry.timm_name)
    return entry.timm_name, state, pretrained_cfg(entry.timm_name, pre.mean, pre.scale, exact)


def _conv_layer(layers: dict[str, Layer], conv: ConvMapping) -> Layer:
    layer = layers.get(conv.caffe)
    if layer is None or layer.type != "Convolution":
        raise ConversionError(f"the net has no Convolution '{conv.caffe}' (timm's {conv.key})")
    p = layer.param.convolution_param
    kernel = spatial_param(p, "kernel_size", 2, 0, layer.name)
    stride = spatial_param(p, "stride", 2, 1, layer.name)
    pad = spatial_param(p, "pad", 2, 0, layer.name)
    dilation = spatial_param(p, "dilation", 2, 1, layer.name)
    got = (kernel, stride, pad, dilation, int(p.group), bool(p.bias_term))
    want = ((conv.kernel,) * 2, (conv.stride,) * 2, (conv.pad,) * 2, (1, 1), conv.groups,
            conv.bias)
    if got != want or tuple(layer.blobs[0].shape) != conv.weight_shape:
        raise ConversionError(
            f"kernel/stride/pad/dilation/group/bias {got} and weights "
            f"{list(layer.blobs[0].shape)} differ from timm's {conv.key} {want} "
            f"{list(conv.weight_shape)}", layer=layer.name)
    return layer


def _only_consumer(layer: Layer, consumers, kind: str) -> Layer:
    users = consumers.get(layer.tops[0], [])
    if len(users) != 1 or users[0].type != kind:
        found = ", ".join(f"{u.name} ({u.type})" for u in users) or "nothing"
        raise ConversionError(f"feeds {found}; timm's model needs exactly one {kind} here",
                              layer=layer.name)
    return users[0]


def _batchnorm_scale(conv: Layer, consumers) -> tuple[np.ndarray, ...]:
    """gamma, beta, running_mean, running_var (float64) of the BatchNorm + Scale after `conv`,
    with a Caffe eps other than timm's folded into the variance: var + eps_caffe - eps_timm."""
    bn = _only_consumer(conv, consumers, "BatchNorm")
    scale = _only_consumer(bn, consumers, "Scale")
    if len(scale.bottoms) != 1:
        raise ConversionError("takes its scale from a second bottom; timm's BatchNorm2d "
                              "has learned parameters", layer=scale.name)
    mean, var = batchnorm_statistics(*bn.blobs[:3])
    eps = np.float64(np.float32(bn.param.batch_norm_param.eps))
    if eps != np.float64(np.float32(TIMM_BN_EPS)):
        var = var + (eps - TIMM_BN_EPS)
    channels = mean.shape[0]
    gamma = np.asarray(scale.blobs[0], np.float64).reshape(-1)
    beta = (np.asarray(scale.blobs[1], np.float64).reshape(-1)
            if scale.param.scale_param.bias_term else np.zeros(channels))
    if gamma.shape != (channels,) or beta.shape != (channels,):
        raise ConversionError(f"scales {gamma.shape[0]} channels, its BatchNorm has {channels}",
                              layer=scale.name)
    return gamma, beta, mean, var


def _stem_for_timm(weight: np.ndarray, caffe_mean, caffe_scale: float, exact: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(RGB stem weights, per-output offset to subtract from the BatchNorm mean).

    Caffe's input is x = scale * (P_BGR - caffe_mean). Exact: the weights are only flipped to
    RGB (timm's cfg then makes t = x in RGB order). Default: timm's t = (P/255 - mean) / std
    gives P = 255 * (std * t + mean), so x = scale*255*std * t + scale*(255*mean - caffe_mean):
    the weights take the factor, the constant's convolution is the returned offset."""
    rgb = weight[:, ::-1]
    if exact:
        return rgb, np.zeros(weight.shape[0])
    gain = caffe_scale * 255.0 * np.asarray(TIMM_STD)
    constant_rgb = caffe_scale * (255.0 * np.asarray(TIMM_MEAN)
                                  - np.asarray(caffe_mean, np.float64)[::-1])
    offset = np.einsum("ochw,c->o", rgb, constant_rgb)
    return rgb * gain[None, :, None, None], offset


def _classifier(layers: dict[str, Layer]) -> Layer:
    layer = layers.get("classifier")
    if layer is None or layer.type != "InnerProduct" or len(layer.blobs) != 2:
        raise ConversionError("the net has no InnerProduct 'classifier' with a bias")
    if layer.param.inner_product_param.transpose:
        raise ConversionError("stores its weights transposed", layer=layer.name)
    return layer


def _check_layout(state: dict[str, np.ndarray], layout: dict[str, tuple[int, ...]],
                  timm_name: str) -> None:
    wrong = [f"{k} {list(state[k].shape) if k in state else 'missing'} (timm: {list(s)})"
             for k, s in layout.items() if k not in state or state[k].shape != s]
    wrong += [f"{k} (not in timm)" for k in state if k not in layout]
    if wrong:
        raise ConversionError(f"the checkpoint would not load into {timm_name}: "
                              + "; ".join(wrong[:4]))


def pretrained_cfg(timm_name: str, caffe_mean, caffe_scale: float, exact: bool) -> dict:
    """timm's pretrained_cfg (field names of timm's PretrainedCfg) for the exported weights."""
    if exact:  # timm's (P/255 - mean)/std then equals Caffe's scale * (P - caffe_mean), in RGB
        mean = tuple(float(m) / 255.0 for m in reversed(tuple(caffe_mean)))
        std = (1.0 / (255.0 * caffe_scale),) * 3
    else:
        mean, std = TIMM_MEAN, TIMM_STD
    return {
        "architecture": timm_name,
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": list(mean),
        "std": list(std),
        "num_classes": 1000,
        "pool_size": [7, 7],
        "first_conv": "layer0.conv1",
        "classifier": "last_linear",
        "origin_url": "https://github.com/hujie-frank/SENet",
        "notes": [CLASS_ORDER_NOTE],
    }


# ----------------------------------------------------------------------------- writing

def export_timm(net: CaffeNet, path: str | os.PathLike, entry, exact: bool = False) -> dict:
    """Write the timm checkpoint of `net`, recognised as `entry` (see timm_state_dict), to
    `path` (safetensors, written to a temporary file in the same folder and renamed when
    complete) and return its pretrained_cfg, which is also stored as JSON in the file's
    metadata ("pretrained_cfg")."""
    from safetensors.numpy import save_file

    timm_name, state, cfg = timm_state_dict(net, entry, exact)
    metadata = {
        "format": "pt",
        "timm_model": timm_name,
        "pretrained_cfg": json.dumps(cfg),
        "class_order": "sorted",
        "input": "caffe-exact" if exact else "timm-imagenet",
    }
    with atomic_output(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return cfg
