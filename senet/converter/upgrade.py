"""Upgrade pre-2015 Caffe layers (V1 `layers`, V0 nested `layer`) to today's LayerParameter."""

from __future__ import annotations

from senet.converter import caffe_pb2 as pb
from senet.converter.prototxt import FORK_V1_TYPE
from senet.errors import CaffeFormatError

_V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V1 parameter fields that exist under the same name in LayerParameter.
_SHARED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "convolution_param", "data_param",
    "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "image_data_param", "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "transform_param", "loss_param",
    "window_data_param", "hdf5_output_param", "contrastive_loss_param", "hinge_loss_param",
    "infogain_loss_param",
)

# Fork V1 parameters (DeepLab v1, PSPNet) that LayerParameter has under the same name.
_FORK_SHARED_PARAMS = ("interp_param", "mat_write_param")

_V0_TYPE_NAMES = {
    "conv": "Convolution", "innerproduct": "InnerProduct", "pool": "Pooling", "relu": "ReLU",
    "lrn": "LRN", "dropout": "Dropout", "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss",
    "concat": "Concat", "data": "Data", "flatten": "Flatten", "split": "Split",
    "sigmoid": "Sigmoid", "tanh": "TanH", "accuracy": "Accuracy", "padding": "Padding",
    "images": "ImageData", "hdf5_data": "HDF5Data", "euclidean_loss": "EuclideanLoss",
}


def upgrade_v1_layer(v1: pb.V1LayerParameter, where: str) -> pb.LayerParameter:
    """LayerParameter equivalent of a V1 layer (blobs are handled by the caller)."""
    if v1.HasField("layer"):
        return _upgrade_v0(v1, where)
    out = pb.LayerParameter(name=v1.name)
    type_name = pb.V1LayerParameter.LayerType.Name(v1.type) if v1.type else "NONE"
    fork = [p[len(FORK_V1_TYPE):] for p in v1.param if p.startswith(FORK_V1_TYPE)]
    if fork:
        out.type = _fork_type_string(fork[0])
    elif type_name == "NONE":
        raise CaffeFormatError("V1 layer without a type", where=where, layer=v1.name or None)
    else:
        out.type = _V1_TYPE_NAMES.get(type_name, type_name)
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.loss_weight.extend(v1.loss_weight)
    for name in _SHARED_PARAMS + _FORK_SHARED_PARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    return out


def _fork_type_string(enum_name: str) -> str:
    """A fork's V1 enum name as the type string the fork's own upgrade gives it, which is
    BVLC's spelling rule: IMAGE_SEG_DATA -> ImageSegData, CROP -> Crop."""
    return "".join(word.capitalize() for word in enum_name.split("_"))


def _upgrade_v0(v1: pb.V1LayerParameter, where: str) -> pb.LayerParameter:
    v0 = v1.layer
    out = pb.LayerParameter(name=v0.name or v1.name)
    kind = v0.type
    if kind not in _V0_TYPE_NAMES:
        raise CaffeFormatError(f"V0 layer type '{kind}' cannot be upgraded", where=where,
                               layer=out.name)
    out.type = _V0_TYPE_NAMES[kind]
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if kind == "conv":
        p = out.convolution_param
        p.num_output = v0.num_output
        p.bias_term = v0.biasterm
        p.kernel_size.append(v0.kernelsize)
        if v0.pad:
            p.pad.append(v0.pad)
        if v0.stride != 1:
            p.stride.append(v0.stride)
        p.group = v0.group
    elif kind == "innerproduct":
        out.inner_product_param.num_output = v0.num_output
        out.inner_product_param.bias_term = v0.biasterm
    elif kind == "pool":
        p = out.pooling_param
        p.pool = v0.pool
        p.kernel_size = v0.kernelsize
        p.stride = v0.stride
        p.pad = v0.pad
    elif kind == "lrn":
        p = out.lrn_param
        p.local_size, p.alpha, p.beta, p.k = v0.local_size, v0.alpha, v0.beta, v0.k
    elif kind == "dropout":
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif kind == "concat":
        out.concat_param.concat_dim = v0.concat_dim
    return out
