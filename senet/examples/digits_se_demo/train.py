"""Train the digits SE-ResNet demo and write it in Caffe format with senet's own writer.

Deterministic: running it twice on the same machine and library versions writes the same
bytes (fixed split, seeds, one thread, deterministic algorithms, fixed epochs).

Writes, beside this file (or under ``--out DIR``):
  * ``digits_se_demo.caffemodel``: ``digits_se_demo.prototxt``'s net with the trained weights;
  * ``val/d0/NNNN.png`` ... ``val/d9/NNNN.png``: the held-out images, 32 x 32 grayscale PNG,
    one folder per class in output order (NNNN: the image's index in ``load_digits()``).
Then it converts the caffemodel with senet, runs the ONNX model with onnxruntime on the PNG
files (senet's preprocessing), checks that it reproduces the torch model, and prints the
measured accuracy and the manifest fields.

Run: ``python -m senet.examples.digits_se_demo.train`` (needs torch and scikit-learn).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = Path(__file__).parent
PROTOTXT = HERE / "digits_se_demo.prototxt"
CAFFEMODEL_NAME = "digits_se_demo.caffemodel"

CLASSES = tuple(f"d{k}" for k in range(10))
"""Class folder names in output order: output k is digit k, folder ``d{k}``."""
SIZE = 32
MEAN = 78.0  # about the mean pixel of the training split (77.9); the same for all three channels
SCALE = 0.015625  # 1/64: a power of two, so (pixel - MEAN) * SCALE is exact in float32
SPLIT_SEED = 0
TEST_FRACTION = 0.3
TRAIN_SEED = 20251126
EPOCHS = 24
BATCH = 32
BN_FACTOR = 4.0  # Caffe stores BatchNorm's running sums (mean·f, var·f, f); f = 4 is exact
BN_EPS = 1e-5  # batch_norm_param eps in the prototxt


# ---------------------------------------------------------------------------------------------
# data


def digit_pixels(images: np.ndarray) -> np.ndarray:
    """scikit-learn's 8 x 8 digits (0..16) -> uint8 N x 32 x 32 (0..255), nearest upscaling."""
    levels = np.asarray(images).astype(np.int64)
    pixels = ((levels * 255 + 8) // 16).astype(np.uint8)  # 16 -> 255, 8 -> 128
    factor = SIZE // levels.shape[-1]
    return pixels.repeat(factor, axis=1).repeat(factor, axis=2)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split: per class, a seeded permutation; the first 30 % (rounded) are held out.

    NumPy's legacy RandomState is used on purpose: its stream is frozen across NumPy versions.
    """
    rng = np.random.RandomState(SPLIT_SEED)
    train, test = [], []
    for k in range(len(CLASSES)):
        members = np.flatnonzero(labels == k)
        order = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * TEST_FRACTION))
        test.extend(order[:n_test])
        train.extend(order[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def load_split():
    """(train pixels, train labels, test pixels, test labels, test indices); pixels uint8
    N x 32 x 32, indices into ``sklearn.datasets.load_digits()``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    pixels = digit_pixels(digits.images)
    train, test = split_indices(labels)
    return pixels[train], labels[train], pixels[test], labels[test], test


def network_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x H x W -> float32 N x 3 x H x W, what the net sees: BGR (three equal channels),
    (pixel - MEAN) * SCALE, the same arithmetic as senet.parity.images.preprocess then scale."""
    blob = np.subtract(pixels, np.float32(MEAN), dtype=np.float32) * np.float32(SCALE)
    return np.repeat(blob[:, None], 3, axis=1)


# ---------------------------------------------------------------------------------------------
# the net: one torch module per Caffe layer (names in the comments)


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm + Scale: Caffe layers NAME, NAME/bn, NAME/scale."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return self.bn(self.conv(x))


class SEBottleneck(nn.Module):
    """NAME_1x1 -> ReLU -> NAME_3x3; squeeze-excitation (NAME/squeeze, NAME/down, ReLU, NAME/up,
    Sigmoid) and Axpy: ``scale * branch + shortcut`` (Caffe layer NAME), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int = 4):
        super().__init__()
        self.conv_1x1 = ConvBN(cin, cout, 1)
        self.conv_3x3 = ConvBN(cout, cout, 3, stride)
        self.proj = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.down = nn.Conv2d(cout, cout // reduction, 1)
        self.up = nn.Conv2d(cout // reduction, cout, 1)

    def forward(self, x):
        branch = self.conv_3x3(torch.relu(self.conv_1x1(x)))
        squeeze = branch.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.up(torch.relu(self.down(squeeze))))
        shortcut = x if self.proj is None else self.proj(x)
        return torch.relu(scale * branch + shortcut)


class DigitsSENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = ConvBN(3, 16, 3)
        # Caffe rounds pooling sizes up: 32 -> ceil((32 - 3) / 2) + 1 = 16 (floor: 15).
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.res2 = SEBottleneck(16, 16, 1)
        self.res3 = SEBottleneck(16, 32, 2)
        self.classifier = nn.Linear(32, len(CLASSES))

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.res3(self.res2(x))
        return self.classifier(x.mean(dim=(2, 3)))  # pool_global, classifier (prob: softmax)


# ---------------------------------------------------------------------------------------------
# training


def train(x: torch.Tensor, y: torch.Tensor, log=print) -> DigitsSENet:
    torch.manual_seed(TRAIN_SEED)
    model = DigitsSENet()
    order = torch.Generator().manual_seed(TRAIN_SEED)
    steps = EPOCHS * -(-len(x) // BATCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        total = 0.0
        for batch in torch.randperm(len(x), generator=order).split(BATCH):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        log(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {total / len(x):.4f}")
    return model.eval()


# ---------------------------------------------------------------------------------------------
# export to Caffe


def _blobs(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32, copy=True)


def _conv_bn_blobs(name: str, m: ConvBN) -> dict[str, list[np.ndarray]]:
    f = np.float32(BN_FACTOR)
    return {
        name: [_blobs(m.conv.weight)],
        f"{name}/bn": [_blobs(m.bn.running_mean) * f, _blobs(m.bn.running_var) * f,
                       np.array([f], np.float32)],
        f"{name}/scale": [_blobs(m.bn.weight), _blobs(m.bn.bias)],
    }


def caffe_blobs(model: DigitsSENet) -> dict[str, list[np.ndarray]]:
    """{Caffe layer name: blobs in Caffe's canonical shapes} for digits_se_demo.prototxt."""
    blobs = _conv_bn_blobs("conv1", model.conv1)
    for name, block in (("res2", model.res2), ("res3", model.res3)):
        blobs.update(_conv_bn_blobs(f"{name}_1x1", block.conv_1x1))
        blobs.update(_conv_bn_blobs(f"{name}_3x3", block.conv_3x3))
        if block.proj is not None:
            blobs.update(_conv_bn_blobs(f"{name}_proj", block.proj))
        blobs[f"{name}/down"] = [_blobs(block.down.weight), _blobs(block.down.bias)]
        blobs[f"{name}/up"] = [_blobs(block.up.weight), _blobs(block.up.bias)]
    blobs["classifier"] = [_blobs(model.classifier.weight), _blobs(model.classifier.bias)]
    return blobs


def write_caffemodel(path: Path, model: DigitsSENet) -> Path:
    from senet.converter import caffe_writer
    from senet.converter.prototxt import read_prototxt

    structure = read_prototxt(PROTOTXT)
    net = structure.net
    net.layer.extend(raw.param for raw in structure.layers)
    caffe_writer.write_caffemodel(path, net, caffe_blobs(model))
    return path


def write_images(val_dir: Path, pixels: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray) -> list[Path]:
    """One grayscale PNG per held-out image: ``val_dir/d{label}/{index:04d}.png``."""
    for name in CLASSES:
        folder = val_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.png"):
            stale.unlink()
    paths = []
    for image, label, index in zip(pixels, labels, indices):
        path = val_dir / CLASSES[label] / f"{index:04d}.png"
        Image.fromarray(image).save(path, format="PNG", optimize=False)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# measuring the converted model


def onnx_scores(caffemodel: Path, paths: list[Path], onnx_path: Path
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert with senet, preprocess each PNG with senet, run onnxruntime:
    (N x 3 x 32 x 32 input, N x 10 logits, N x 10 probabilities)."""
    import onnxruntime as ort

    from senet.converter.load import load_net
    from senet.converter.to_onnx import build_graph, write_model
    from senet.parity.images import preprocess

    model, initializers = build_graph(load_net(str(caffemodel)), outputs=["classifier", "prob"])
    write_model(onnx_path, model, initializers)
    batch = np.stack([preprocess(p, resize_shorter=SIZE, crop=SIZE, mean=(MEAN,) * 3)
                      for p in paths]) * np.float32(SCALE)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return (batch, *session.run(None, {"data": batch}))


def errors_percent(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5) error in percent, rounded to 2 decimals."""
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    top1_err = 100.0 * np.mean(top5[:, 0] != labels)
    top5_err = 100.0 * np.mean(~(top5 == labels[:, None]).any(axis=1))
    return round(float(top1_err), 2), round(float(top5_err), 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder for the caffemodel and val/ (default: beside this file)")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    train_px, train_y, test_px, test_y, test_idx = load_split()
    print(f"train {len(train_y)}, held out {len(test_y)}; training pixel mean "
          f"{train_px.mean():.2f} (MEAN = {MEAN})")
    x_train = torch.from_numpy(network_input(train_px))
    start = time.perf_counter()
    model = train(x_train, torch.from_numpy(train_y))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(network_input(test_px))).numpy()

    args.out.mkdir(parents=True, exist_ok=True)
    caffemodel = write_caffemodel(args.out / CAFFEMODEL_NAME, model)
    paths = write_images(args.out / "val", test_px, test_y, test_idx)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_input, onnx_logits, onnx_prob = onnx_scores(caffemodel, paths,
                                                         Path(scratch) / "demo.onnx")
    if not np.array_equal(onnx_input, network_input(test_px)):
        raise SystemExit("the PNG files do not preprocess to the training tensors")

    gap = float(np.abs(onnx_logits - torch_logits).max())
    torch_err, onnx_err = errors_percent(torch_logits, test_y), errors_percent(onnx_logits, test_y)
    prob_err = errors_percent(onnx_prob, test_y)  # what senet-verify ranks: the default output
    print(f"training: {seconds:.1f} s for {EPOCHS} epochs")
    print(f"held-out top-1 accuracy: torch {100 - torch_err[0]:.2f} %, "
          f"senet ONNX {100 - onnx_err[0]:.2f} %; max |logit difference| {gap:.2e}")
    if gap > 1e-4 or not torch_err == onnx_err == prob_err:
        raise SystemExit("the converted model does not reproduce the torch model")
    print(f"manifest: top1_error: {onnx_err[0]}  top5_error: {onnx_err[1]}")


if __name__ == "__main__":
    main()
