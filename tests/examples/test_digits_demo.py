"""The bundled digits demo: its caffemodel converts, the converted model reproduces the manifest's
measured accuracy on the bundled held-out images exactly, and those images preprocess to exactly
the tensors the torch model was trained and evaluated on."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from senet.converter.load import load_net
from senet.converter.to_onnx import build_graph, write_model
from senet.manifest import fingerprint, lookup, package_path, recognise
from senet.parity.images import preprocess

PROTOTXT_NAME = "digits_se_demo.prototxt"


@pytest.fixture(scope="module")
def entry():
    return lookup("digits")


def _samples(entry):
    """(path, label) of every bundled held-out image, label = index of its folder in classes.

    senet.parity.data.discover only knows ILSVRC2012 WNID folders, so the loop is written here.
    """
    val_dir = package_path(entry.val_dir)
    samples = []
    for label, name in enumerate(entry.classes):
        samples.extend((path, label) for path in sorted((val_dir / name).glob("*.png")))
    return samples


def _blob(entry, path) -> np.ndarray:
    pre = entry.preprocessing
    return preprocess(path, resize_shorter=pre.resize_shorter, crop=pre.crop,
                      mean=pre.mean) * np.float32(pre.scale)


def test_manifest_entry_points_at_the_bundled_files(entry):
    assert entry.name == "digits_se_demo"
    assert entry.class_order == "explicit"
    assert entry.classes == tuple(f"d{k}" for k in range(10))
    weights, val_dir = package_path(entry.weights_path), package_path(entry.val_dir)
    assert weights.is_file() and weights.name == entry.file_name
    assert sorted(p.name for p in val_dir.iterdir() if p.is_dir()) == list(entry.classes)
    assert len(_samples(entry)) == 539
    published = lookup("se_resnet50")
    assert (published.weights_path, published.val_dir, published.classes) == (None, None, None)


def test_caffemodel_matches_its_prototxt_and_fingerprint(entry):
    weights = package_path(entry.weights_path)
    stored = load_net(str(weights))
    with_prototxt = load_net(str(weights), prototxt=str(weights.with_name(PROTOTXT_NAME)))
    assert fingerprint(stored) == fingerprint(with_prototxt) == entry.fingerprint
    assert recognise(stored) == entry
    assert tuple(stored.inputs["data"]) == entry.input_shape
    assert {layer.type for layer in stored.layers} >= {"Axpy", "BatchNorm", "Scale", "Pooling"}
    pool1 = next(layer for layer in stored.layers if layer.name == "pool1")
    assert stored.shapes[pool1.tops[0]][2:] == (16, 16)  # Caffe's ceil: floor would give 15
    factors = {float(layer.blobs[2][0]) for layer in stored.layers if layer.type == "BatchNorm"}
    assert factors == {4.0}  # the BatchNorm factor rule is exercised (f != 1)


def test_converted_accuracy_equals_the_manifest(entry, tmp_path):
    model, initializers = build_graph(load_net(str(package_path(entry.weights_path))))
    write_model(tmp_path / "digits.onnx", model, initializers)
    session = ort.InferenceSession(str(tmp_path / "digits.onnx"),
                                   providers=["CPUExecutionProvider"])
    samples = _samples(entry)
    batch = np.stack([_blob(entry, path) for path, _ in samples])
    labels = np.array([label for _, label in samples])
    (prob,) = session.run(None, {"data": batch})
    top5 = np.argsort(-prob, axis=1, kind="stable")[:, :5]
    top1_error = round(100.0 * float(np.mean(top5[:, 0] != labels)), 2)
    top5_error = round(100.0 * float(np.mean(~(top5 == labels[:, None]).any(axis=1))), 2)
    assert (top1_error, top5_error) == (entry.top1_error, entry.top5_error)
    assert entry.tolerance == 0.0


def test_images_are_exactly_the_training_tensors(entry):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from senet.examples.digits_se_demo import train

    assert entry.preprocessing.mean == (train.MEAN,) * 3
    assert entry.preprocessing.scale == train.SCALE
    assert entry.classes == train.CLASSES
    _, _, pixels, labels, indices = train.load_split()
    expected = train.network_input(pixels)
    by_name = {f"{train.CLASSES[y]}/{i:04d}.png": k
               for k, (y, i) in enumerate(zip(labels, indices))}
    samples = _samples(entry)
    assert len(samples) == len(by_name)
    for path, label in samples:
        k = by_name[f"{path.parent.name}/{path.name}"]
        assert label == labels[k]
        blob = _blob(entry, path)
        assert blob.shape == entry.input_shape[1:]
        np.testing.assert_array_equal(blob, expected[k])
