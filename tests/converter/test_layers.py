"""Every supported layer, converted and run in onnxruntime, against the float64 NumPy reference
of Caffe's semantics (tests/reference), on small nets with seeded weights."""

from __future__ import annotations

import pytest

from tests.converter.harness import check_net
from tests.reference.prototxt_text import parse_prototxt
from tests.reference.random_weights import make_input, make_weights


def net_text(input_shapes: dict[str, tuple[int, ...]], body: str) -> str:
    inputs = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape) + " } } }\n"
        for name, shape in input_shapes.items())
    return 'name: "t"\n' + inputs + body


def run_case(tmp_path, input_shapes, body, outputs, seed=0, tol=1e-5):
    text = net_text(input_shapes, body)
    weights = make_weights(parse_prototxt(text), input_shapes, seed)
    inputs = {name: make_input(shape, seed + i + 1)
              for i, (name, shape) in enumerate(input_shapes.items())}
    return check_net(tmp_path, text, weights, inputs, outputs, tol)


CASES = {
    "conv_group_dilation_hw": ({"x": (2, 4, 11, 9)}, '''
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {
  num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 2 stride_w: 1
  dilation: 2 } }''', ["c"]),
    "conv_per_axis_lists_no_bias": ({"x": (1, 3, 10, 7)}, '''
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {
  num_output: 5 kernel_size: 3 kernel_size: 1 pad: 1 pad: 0 stride: 2 stride: 1
  bias_term: false } }''', ["c"]),
    "depthwise_conv": ({"x": (1, 4, 8, 8)}, '''
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {
  num_output: 4 group: 4 kernel_size: 3 pad: 1 } }''', ["c"]),
    "batchnorm_scale_inplace_relu": ({"x": (2, 3, 5, 5)}, '''
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "c" top: "c" }''', ["c"]),
    "scale_axis_num_axes": ({"x": (2, 3, 4, 5)}, '''
layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { axis: 1 num_axes: 2 bias_term: true } }''',
                            ["s"]),
    "scale_all_axes": ({"x": (2, 3, 4, 5)}, '''
layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { axis: -2 num_axes: -1 } }''', ["s"]),
    "scale_two_bottoms_axis0": ({"x": (2, 3, 4, 4)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE global_pooling: true } }
layer { name: "sig" type: "Sigmoid" bottom: "p" top: "p" }
layer { name: "r" type: "Reshape" bottom: "p" top: "r" reshape_param { shape { dim: 0 dim: 0 } } }
layer { name: "s" type: "Scale" bottom: "x" bottom: "r" top: "s" scale_param { axis: 0 bias_term: true } }''',
                                ["s"]),
    "bias_learned_and_two_bottoms": ({"x": (2, 3, 4, 4), "b": (2, 3)}, '''
layer { name: "b1" type: "Bias" bottom: "x" top: "b1" }
layer { name: "b2" type: "Bias" bottom: "b1" bottom: "b" top: "b2" bias_param { axis: 0 } }''', ["b2"]),
    "activations": ({"x": (2, 3, 4, 4)}, '''
layer { name: "lr" type: "ReLU" bottom: "x" top: "lr" relu_param { negative_slope: 0.1 } }
layer { name: "pr" type: "PReLU" bottom: "x" top: "pr" }
layer { name: "ps" type: "PReLU" bottom: "x" top: "ps" prelu_param { channel_shared: true } }
layer { name: "sg" type: "Sigmoid" bottom: "x" top: "sg" }
layer { name: "th" type: "TanH" bottom: "x" top: "th" }
layer { name: "sq" type: "Power" bottom: "sg" top: "sq" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "dr" type: "Dropout" bottom: "x" top: "dr" dropout_param { dropout_ratio: 0.3 } }''',
                    ["lr", "pr", "ps", "sg", "th", "sq", "dr"]),
    "max_pool_ceil_odd": ({"x": (1, 2, 13, 11)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }''',
                          ["p"]),
    "max_pool_pad_ceil": ({"x": (1, 2, 10, 9)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }''',
                          ["p"]),
    "ave_pool_pad_ceil": ({"x": (1, 2, 10, 9)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }''',
                          ["p"]),
    "ave_pool_ceil_no_pad": ({"x": (1, 2, 8, 7)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }''',
                             ["p"]),
    "pool_hw_and_floor": ({"x": (1, 2, 9, 12)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE kernel_h: 2 kernel_w: 3
  stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 } }
layer { name: "f" type: "Pooling" bottom: "x" top: "f" pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR } }''',
                           ["p", "f"]),
    "global_pools": ({"x": (2, 3, 5, 7)}, '''
layer { name: "a" type: "Pooling" bottom: "x" top: "a" pooling_param { pool: AVE global_pooling: true } }
layer { name: "m" type: "Pooling" bottom: "x" top: "m" pooling_param { pool: MAX global_pooling: true } }''',
                     ["a", "m"]),
    "eltwise_ops": ({"x": (2, 3, 4, 4), "y": (2, 3, 4, 4), "z": (2, 3, 4, 4)}, '''
layer { name: "s" type: "Eltwise" bottom: "x" bottom: "y" bottom: "z" top: "s" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 } }
layer { name: "p" type: "Eltwise" bottom: "x" bottom: "y" bottom: "z" top: "p" eltwise_param { operation: PROD } }
layer { name: "m" type: "Eltwise" bottom: "x" bottom: "y" top: "m" eltwise_param { operation: MAX } }''',
                    ["s", "p", "m"]),
    "axpy": ({"s": (2, 3, 1, 1), "x": (2, 3, 5, 4), "y": (2, 3, 5, 4)}, '''
layer { name: "a" type: "Axpy" bottom: "s" bottom: "x" bottom: "y" top: "a" }''', ["a"]),
    "inner_product_axes": ({"x": (2, 3, 4, 5)}, '''
layer { name: "f" type: "InnerProduct" bottom: "x" top: "f" inner_product_param { num_output: 7 } }
layer { name: "g" type: "InnerProduct" bottom: "x" top: "g" inner_product_param { num_output: 6 axis: 2 bias_term: false } }
layer { name: "t" type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 4 axis: -1 transpose: true } }''',
                           ["f", "g", "t"]),
    "softmax_axes": ({"x": (2, 3, 4, 5)}, '''
layer { name: "a" type: "Softmax" bottom: "x" top: "a" }
layer { name: "b" type: "Softmax" bottom: "x" top: "b" softmax_param { axis: -2 } }''', ["a", "b"]),
    "concat_slice_split": ({"x": (2, 3, 4, 4), "y": (2, 5, 4, 4)}, '''
layer { name: "c" type: "Concat" bottom: "x" bottom: "y" top: "c" }
layer { name: "c2" type: "Concat" bottom: "x" bottom: "x" top: "c2" concat_param { axis: 2 } }
layer { name: "sl" type: "Slice" bottom: "c" top: "s1" top: "s2" top: "s3" slice_param { slice_point: 1 slice_point: 6 } }
layer { name: "eq" type: "Slice" bottom: "c2" top: "e1" top: "e2" slice_param { axis: 2 } }
layer { name: "sp" type: "Split" bottom: "s3" top: "d1" top: "d2" }
layer { name: "sum" type: "Eltwise" bottom: "d1" bottom: "d2" top: "sum" }''',
                           ["c", "c2", "s1", "s2", "e1", "e2", "sum"]),
    "reshape_flatten_permute": ({"x": (2, 3, 4, 6)}, '''
layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 8 } } }
layer { name: "r2" type: "Reshape" bottom: "x" top: "r2" reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 } }
layer { name: "f" type: "Flatten" bottom: "x" top: "f" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "p" type: "Permute" bottom: "x" top: "p" permute_param { order: 0 order: 2 order: 3 order: 1 } }''',
                                ["r", "r2", "f", "p"]),
    "lrn_both_regions": ({"x": (1, 6, 7, 7)}, '''
layer { name: "a" type: "LRN" bottom: "x" top: "a" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "w" type: "LRN" bottom: "x" top: "w" lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL } }''',
                         ["a", "w"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_reference(tmp_path, case):
    input_shapes, body, outputs = CASES[case]
    run_case(tmp_path, input_shapes, body, outputs)


def test_pool_last_window_check_applies_to_both_axes_when_one_is_padded(tmp_path):
    # Caffe drops a last window starting past the input on every axis once any axis has
    # padding: H=5, k=1, s=3 with only pad_w gives 2 rows, not ceil((5-1)/3)+1 = 3.
    ours = run_case(tmp_path, {"x": (1, 2, 5, 6)}, '''
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_h: 1
  kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 1 } }''', ["p"])
    assert ours["p"].shape[2] == 2
