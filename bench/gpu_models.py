"""Images/s of converted SENets beside timm's legacy models, same device, same run.

    python bench/gpu_models.py [--batch 64] [--device cuda] [--models se_resnet50,senet154]
                               [--tf32 off|default] [--cudnn-benchmark]

Called by bench/gpu_check.py. The converted models come from the deploy prototxts shipped in the
package (random weights: throughput does not depend on values); timm's come from
timm.create_model(<legacy name>) when timm is importable. Formats: eager fp32 NCHW, fp32
channels_last, bf16 channels_last. `--tf32 off` makes fp32 convolutions true fp32; `default`
keeps PyTorch's defaults (cuDNN convolutions in TF32), as ANCHORS.md's timm figures were taken.
`--cudnn-benchmark` sets torch.backends.cudnn.benchmark = True (cuDNN times its algorithms per
shape) for both implementations.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = (("fp32 NCHW", torch.float32, torch.contiguous_format),
           ("fp32 channels_last", torch.float32, torch.channels_last),
           ("bf16 channels_last", torch.bfloat16, torch.channels_last))


def converted_module(name: str, fold: bool = True):
    """senet's torch module for a published model, with seeded random weights."""
    import senet
    from senet.converter.load import load_net
    from senet.converter.to_torch import to_torch
    from senet.manifest import lookup

    entry = lookup(name)
    net = load_net(prototxt=str(Path(senet.__file__).parent / entry.architecture),
                   weights_optional=True)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            layer.blobs = [np.zeros(c, np.float32), np.ones(c, np.float32),
                           np.ones(1, np.float32)]
        else:
            layer.blobs = [(rng.standard_normal(b.shape) * 0.02).astype(np.float32)
                           for b in layer.blobs]
    return to_torch(net, outputs=["classifier"], fold=fold)


def timm_module(name: str):
    try:
        import timm
    except ImportError:
        return None
    from senet.manifest import lookup

    return timm.create_model(lookup(name).timm_name, pretrained=False)


def images_per_second(module, batch: int, dtype, layout, device: str, iters: int) -> float:
    module = module.to(device=device, dtype=dtype, memory_format=layout).eval()
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype).contiguous(
        memory_format=layout)
    with torch.inference_mode():
        for _ in range(3):
            module(x)
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                module(x)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            import time
            t = time.perf_counter()
            for _ in range(iters):
                module(x)
            seconds = time.perf_counter() - t
    return batch * iters / seconds


def check_against_cpu(module_factory, device: str) -> float:
    """Relative max difference of the converted model on `device` vs float64 on the CPU."""
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    ref = module_factory().double().eval()
    ours = module_factory().to(device).eval()
    with torch.inference_mode():
        expected = ref(x)
        got = ours(x.float().to(device)).double().cpu()
    return float((got - expected).abs().max() / expected.abs().max())


def bench_models(names, batch: int, device: str, iters: int, tf32: str = "off",
                 cudnn_benchmark: bool = False) -> list[list[str]]:
    if tf32 == "off":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    print(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
          f"cudnn {torch.backends.cudnn.allow_tf32}; "
          f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
    rows = []
    for name in names:
        error = check_against_cpu(lambda: converted_module(name), device)
        print(f"{name}: converted fp32 on {device} vs float64 CPU: max rel diff {error:.2e}")
        candidates = [("senet (folded)", lambda: converted_module(name)),
                      ("timm legacy", lambda: timm_module(name))]
        for label, factory in candidates:
            cells = [name, label]
            for _, dtype, layout in FORMATS:
                module = factory()
                if module is None:
                    cells.append("n/a")
                    continue
                cells.append(f"{images_per_second(module, batch, dtype, layout, device, iters):,.0f}")
                del module
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(cells)
            print("  " + " | ".join(cells), flush=True)
    return rows


def print_rows(rows, batch):
    header = ["model", "implementation"] + [f[0] for f in FORMATS]
    print(f"\nimages/s, batch {batch}, 224x224, random weights")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="se_resnet50,senet154")
    parser.add_argument("--tf32", choices=["off", "default"], default="off")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True for both implementations")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_models: no CUDA device here")
        return 0
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    rows = bench_models(args.models.split(","), args.batch, args.device, args.iters, args.tf32,
                        args.cudnn_benchmark)
    print_rows(rows, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
