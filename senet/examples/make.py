"""Write tiny_senet.caffemodel: seeded weights for tiny_senet.prototxt, via senet's own writer.

Deterministic: the same bytes on every machine (tests/test_examples.py checks that).
Run: python -m senet.examples.make
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from senet.converter.caffe_writer import write_caffemodel
from senet.converter.prototxt import read_prototxt
from senet.converter.load import load_net

HERE = Path(__file__).parent
PROTOTXT = HERE / "tiny_senet.prototxt"
CAFFEMODEL = HERE / "tiny_senet.caffemodel"


def example_weights(seed: int = 20251126) -> dict[str, list[np.ndarray]]:
    """Seeded float32 weights of the right shapes; BatchNorm stored with a factor f != 1 as
    Caffe's moving averages are (mean·f, var·f, f)."""
    rng = np.random.default_rng(seed)
    net = load_net(prototxt=str(PROTOTXT), weights_optional=True)
    weights = {}
    for layer in net.layers:
        blobs = []
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            f = np.float32(rng.uniform(0.5, 2.0))
            blobs = [rng.normal(0, 0.5, c) * f, rng.uniform(0.5, 2.0, c) * f, np.array([f])]
        elif layer.type == "Scale":
            c = layer.blobs[0].shape
            blobs = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)]
        else:
            for b in layer.blobs:
                fan_in = int(np.prod(b.shape[1:])) if b.ndim > 1 else 1
                blobs.append(rng.normal(0, np.sqrt(2.0 / fan_in) if b.ndim > 1 else 0.1,
                                        b.shape))
        if blobs:
            weights[layer.name] = [np.asarray(b, np.float32) for b in blobs]
    return weights


def write_example(path: Path = CAFFEMODEL) -> Path:
    structure = read_prototxt(PROTOTXT)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    write_caffemodel(path, net, example_weights())
    return path


if __name__ == "__main__":
    print(write_example())
