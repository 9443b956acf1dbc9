"""senet::axpy and senet::global_avg_pool as torch.library ops (CPU path): values, layouts,
opcheck, gradcheck, torch.compile, torch.export, argument errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import senet.kernels as kernels
from senet.errors import ShapeError

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class SEBlockTail(torch.nn.Module):
    """The SE-block tail the converter emits: squeeze, excite, rescale + residual + ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = torch.nn.Conv2d(channels, channels // 2, 1)
        self.expand = torch.nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x, residual):
        squeezed = kernels.global_avg_pool(x)
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(squeezed))))
        return kernels.axpy(scale, x, residual, relu=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (3, 5, 13, 17), (3, 4, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_values_and_layout(reference, shape, dtype, layout):
    scale, x, y = reference.make_inputs(shape, dtype, LAYOUTS[layout])
    for relu in (False, True):
        out = kernels.axpy(scale, x, y, relu)
        reference.assert_axpy_matches(out, scale, x, y, relu)
        assert out.stride() == x.stride()
    pooled = kernels.global_avg_pool(x)
    reference.assert_gap_matches(pooled, x)
    expected = torch.empty(pooled.shape, memory_format=kernels.memory_format_of(x))
    assert pooled.stride() == expected.stride()


def test_half_precision_accumulates_in_fp32():
    # a bf16 running sum of 4096 values of 1 + 2**-7 stalls near 512 (its ulp there is 4)
    x = torch.full((1, 1, 64, 64), 1 + 2**-7, dtype=torch.bfloat16)
    assert kernels.global_avg_pool(x).item() == 1 + 2**-7
    x_channels_last = x.contiguous(memory_format=torch.channels_last)
    assert kernels.global_avg_pool(x_channels_last).item() == 1 + 2**-7


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck(reference, dtype, layout):
    scale, x, y = reference.make_inputs((2, 3, 5, 4), dtype, LAYOUTS[layout])
    for relu in (False, True):
        args = (scale.requires_grad_(), x.requires_grad_(), y.requires_grad_(), relu)
        torch.library.opcheck(torch.ops.senet.axpy.default, args)
    torch.library.opcheck(torch.ops.senet.global_avg_pool.default, (x.detach().requires_grad_(),))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck(reference, relu, layout):
    scale, x, y = reference.make_inputs((2, 3, 4, 5), torch.float64, LAYOUTS[layout])
    # keep the ReLU argument away from its kink, where finite differences are meaningless
    y = torch.where((torch.addcmul(y, scale, x)).abs() < 1e-3, y + 0.1, y)
    inputs = tuple(t.detach().requires_grad_() for t in (scale, x, y))
    assert torch.autograd.gradcheck(lambda s, a, b: kernels.axpy(s, a, b, relu), inputs)
    assert torch.autograd.gradgradcheck(lambda s, a, b: kernels.axpy(s, a, b, relu), inputs)
    pooled_input = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(kernels.global_avg_pool, (pooled_input,))
    assert torch.autograd.gradgradcheck(kernels.global_avg_pool, (pooled_input,))


def test_grads_match_aten(reference):
    scale, x, y = reference.make_inputs((2, 4, 3, 3), torch.float32, torch.channels_last)
    ours = [t.detach().requires_grad_() for t in (scale, x, y)]
    theirs = [t.detach().requires_grad_() for t in (scale, x, y)]
    kernels.global_avg_pool(kernels.axpy(*ours, relu=True)).square().sum().backward()
    torch.relu(torch.addcmul(theirs[2], theirs[0], theirs[1])).mean((2, 3), keepdim=True) \
        .square().sum().backward()
    for mine, aten in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, aten.grad)


def _gated_residual(x, residual):
    # the ops between compiled ATen code (sigmoid, add): inductor must schedule around them
    scale = torch.sigmoid(kernels.global_avg_pool(x))
    return kernels.axpy(scale, x, residual + 1.0, relu=True)


def test_torch_compile_equals_eager(reference):
    _, x, residual = reference.make_inputs((2, 8, 7, 7), torch.float32, torch.channels_last)
    eager = _gated_residual(x, residual)
    compiled = torch.compile(_gated_residual, fullgraph=True)(x, residual)
    torch.testing.assert_close(compiled, eager)
    assert compiled.stride() == eager.stride()


def test_torch_export_keeps_the_ops(reference):
    torch.manual_seed(0)
    module = SEBlockTail(8).eval()
    _, x, residual = reference.make_inputs((2, 8, 7, 7), torch.float32)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (x, residual),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert torch.ops.senet.axpy.default in targets
    assert torch.ops.senet.global_avg_pool.default in targets
    _, x3, residual3 = reference.make_inputs((3, 8, 7, 7), torch.float32, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x3, residual3), module(x3, residual3))


def test_argument_errors():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ShapeError, match="scale must be 2×3×1×1"):
        kernels.axpy(torch.zeros(1, 3, 1, 1), x, x)
    with pytest.raises(ShapeError, match="y has shape"):
        kernels.axpy(torch.zeros(2, 3, 1, 1), x, x[:, :, :2])
    with pytest.raises(TypeError, match="one dtype"):
        kernels.axpy(torch.zeros(2, 3, 1, 1, dtype=torch.float64), x, x)
    with pytest.raises(ShapeError, match="N×C×H×W"):
        kernels.global_avg_pool(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="float16"):
        kernels.global_avg_pool(torch.zeros(1, 1, 2, 2, dtype=torch.int32))


def test_cuda_path_falls_back_to_aten_without_triton(reference, monkeypatch):
    # the CUDA kernels' entry points, called with CPU tensors as if Triton were missing
    from senet.kernels import ops, triton_kernels

    monkeypatch.setattr(triton_kernels, "HAVE_TRITON", False)
    monkeypatch.setattr(ops, "_triton_missing_warned", False)
    scale, x, y = reference.make_inputs((2, 3, 4, 5), torch.float32, torch.channels_last)
    with pytest.warns(RuntimeWarning, match="Triton is not installed"):
        out = ops._axpy_cuda(scale, x, y, True)
    reference.assert_axpy_matches(out, scale, x, y, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        reference.assert_gap_matches(ops._global_avg_pool_cuda(x), x)


def test_import_does_not_load_triton():
    import subprocess
    import sys

    code = "import sys, senet.kernels; sys.exit('triton' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
