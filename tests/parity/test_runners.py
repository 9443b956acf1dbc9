"""Runners, model preparation and its caches, the batch loader, and resuming a stopped run.

Known answers come from tests/parity/synthetic.py: the colour net ranks the classes of a
solid-colour image by float64 distances to its prototypes.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from senet.errors import UsageError
from senet.parity import loader as loader_module
from senet.parity.loader import Preprocessing, iterate_batches
from senet.parity.predictions import RECORD, PredictionLog
from senet.parity.runners import (OnnxRunner, WeightsMismatchError, file_sha256, prepare_model,
                                  resolve_device)
from senet.parity.verify import VerifyOptions, evaluate
from tests.parity.synthetic import (MEAN_BGR, P, colour_entry, colour_for, expected_counts,
                                    ranking, with_entries, write_colour_net, write_image)

COLOURS = [(8, 18, 25), (103, 114, 226), (92, 115, 223), (229, 242, 250), (127, 140, 149)]
CASES = [(0, 0), (448, 1), (489, 0), (360, 4), (170, 6), (999, 0), (555, 2), (0, 3),
         (448, 0), (489, 5), (360, 0), (170, 2), (999, 1)]


@pytest.fixture
def colour(tmp_path):
    """(caffemodel, its manifest entry 'colour_nn', a manifest that knows it)."""
    model = write_colour_net(tmp_path)
    entry = colour_entry(model)
    return model, entry, with_entries(entry)


def solid_batch(colours) -> np.ndarray:
    """What Caffe preprocessing makes of solid-colour images: the colour minus the mean."""
    x = np.asarray(colours, np.float32) - MEAN_BGR.astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(x[:, :, None, None], (len(colours), 3, 224, 224)))


def val_folder(root, cases=CASES):
    from senet.classes import class_order
    wnids = class_order("devkit")
    for k, (label, rank) in enumerate(cases):
        write_image(root / wnids[label] / f"{k:03d}.png", colour_for(label, rank))
    return root


# ---------------------------------------------------------------------------------- runners

def test_onnx_runner_ranks_like_the_known_distances(tmp_path, colour):
    model, entry, _ = colour
    prepared = prepare_model(model, entry, "onnxruntime", tmp_path / "cache")
    assert prepared.format == "onnx" and prepared.entry is entry
    runner = OnnxRunner(prepared.path, "cpu", 1000)
    scores = runner(solid_batch(COLOURS))
    assert scores.shape == (len(COLOURS), 1000)
    from senet.parity.metrics import top_k
    np.testing.assert_array_equal(top_k(scores), [ranking(c)[0][:5] for c in COLOURS])


def test_torch_runner_on_an_exported_program(tmp_path, colour):
    """A .pt2 made here with torch.export (the colour net written in torch) scores the known
    counts through the torch runner."""
    torch = pytest.importorskip("torch")
    model, entry, known = colour

    class ColourNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 1000)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(2.0 * P))
                self.fc.bias.copy_(torch.from_numpy(-(P ** 2).sum(axis=1)))

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(ColourNet().eval(), (torch.zeros(2, 3, 224, 224),),
                                  dynamic_shapes=({0: batch},))
    pt2 = tmp_path / "colour.pt2"
    torch.export.save(program, str(pt2))
    val = val_folder(tmp_path / "val")
    result = evaluate(VerifyOptions(model="colour_nn", weights=str(pt2), val=str(val),
                                    cache_dir=tmp_path / "cache", workers=0, batch_size=4,
                                    manifest=known))
    assert result.backend == "torch" and result.weights_format == "pt2"
    assert (result.counts.top1, result.counts.top5) == expected_counts(CASES)


def test_caffemodel_through_senets_pt2_writer(tmp_path, colour):
    pytest.importorskip("torch")
    model, _, known = colour
    val = val_folder(tmp_path / "val")
    result = evaluate(VerifyOptions(model="colour_nn", weights=str(model), val=str(val),
                                    cache_dir=tmp_path / "cache", workers=0, backend="torch",
                                    manifest=known))
    assert result.backend == "torch"
    assert (result.counts.top1, result.counts.top5) == expected_counts(CASES)


def test_device_choice_without_a_gpu():
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    assert resolve_device("auto", "onnxruntime") == "cpu"
    assert resolve_device("cpu", "onnxruntime") == "cpu"
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        resolve_device("cuda", "onnxruntime")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu", "onnxruntime")


# ------------------------------------------------------------------------ preparation, caches

def test_conversion_is_cached_by_content(tmp_path, colour):
    model, entry, _ = colour
    steps = []
    first = prepare_model(model, entry, "onnxruntime", tmp_path / "cache", step=steps.append)
    assert [s for s in steps if s.startswith("converting")], steps
    stamp = first.path.stat()
    copy = tmp_path / "renamed.caffemodel"
    shutil.copy(model, copy)
    steps.clear()
    # a conversion would say so and replace the file (a new inode, written atomically)
    again = prepare_model(copy, entry, "onnxruntime", tmp_path / "cache", step=steps.append)
    assert steps == []
    after = again.path.stat()
    assert again.path == first.path
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    assert again.sha256 == first.sha256


def test_cached_conversion_still_checks_the_fingerprint(tmp_path, colour):
    model, entry, _ = colour
    prepare_model(model, entry, "onnxruntime", tmp_path / "cache")
    from senet.manifest import lookup
    with pytest.raises(WeightsMismatchError, match="se_resnet50"):
        prepare_model(model, lookup("se_resnet50"), "onnxruntime", tmp_path / "cache")


def test_onnx_file_is_checked_by_its_metadata(tmp_path, colour):
    import onnx
    model, entry, _ = colour
    prepared = prepare_model(model, entry, "onnxruntime", tmp_path / "cache")
    proto = onnx.load(str(prepared.path))
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    assert prepare_model(bare, entry, "auto", tmp_path / "cache").entry is entry
    with pytest.raises(UsageError, match="--model"):
        prepare_model(bare, None, "auto", tmp_path / "cache")
    onnx.helper.set_model_props(proto, {"recognised_model": "se_resnet101"})
    tagged = tmp_path / "tagged.onnx"
    onnx.save(proto, str(tagged))
    with pytest.raises(WeightsMismatchError, match="se_resnet101"):
        prepare_model(tagged, entry, "auto", tmp_path / "cache")


def test_sha256_is_remembered(tmp_path):
    data = tmp_path / "w.onnx"
    data.write_bytes(b"abc")
    known = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert file_sha256(data, tmp_path / "cache") == known
    # Same path, size and mtime but other bytes: only a remembered digest can still say "abc".
    stat = data.stat()
    data.write_bytes(b"xyz")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(data, tmp_path / "cache") == known
    assert file_sha256(data) != known  # without the cache it is hashed


def test_output_without_the_model_class_count_is_a_mismatch(tmp_path, colour):
    model, entry, _ = colour
    prepared = prepare_model(model, entry, "onnxruntime", tmp_path / "cache")
    with pytest.raises(WeightsMismatchError, match="10 class scores"):
        OnnxRunner(prepared.path, "cpu", 10)


# ------------------------------------------------------------------------------------- loader

def test_preprocessing_colour_order_mean_and_scale(tmp_path):
    path = write_image(tmp_path / "c.png", (10, 20, 30))  # B, G, R
    bgr = Preprocessing(resize_shorter=8, crop=4, mean=(1.0, 2.0, 3.0), scale=0.5)(path)
    assert bgr.shape == (3, 4, 4)
    np.testing.assert_array_equal(bgr[:, 0, 0], [4.5, 9.0, 13.5])
    rgb = Preprocessing(resize_shorter=8, crop=4, mean=(3.0, 2.0, 1.0), scale=2.0,
                        color="RGB")(path)
    np.testing.assert_array_equal(rgb[:, 2, 3], [54.0, 36.0, 18.0])
    with pytest.raises(UsageError):
        Preprocessing(color="HSV")


def _batches(items, workers):
    return [(b.indices.tolist(), b.images.copy(), b.failed)
            for b in iterate_batches(items, Preprocessing(resize_shorter=8, crop=8), 3, workers)]


def test_loaders_agree_and_keep_order(tmp_path, monkeypatch):
    items = []
    for k in range(8):
        path = tmp_path / f"{k}.png"
        if k == 4:
            path.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        else:
            write_image(path, (k, 2 * k, 3 * k))
        items.append((100 + k, str(path)))
    with_workers = _batches(items, 2)
    in_process = _batches(items, 0)
    monkeypatch.setattr(loader_module, "_torch_available", lambda: False)
    threads = _batches(items, 2)
    for other in (in_process, threads):
        assert [b[0] for b in other] == [b[0] for b in with_workers]
        assert [b[2] for b in other] == [b[2] for b in with_workers]
        for a, b in zip(other, with_workers):
            np.testing.assert_array_equal(a[1], b[1])
    assert [b[0] for b in with_workers] == [[100, 101, 102], [103, 105], [106, 107]]
    (index, reason), = with_workers[1][2]
    assert index == 104 and "PNG" in reason
    np.testing.assert_array_equal(with_workers[0][1][2, :, 0, 0],
                                  np.array([2, 4, 6], np.float32) - [104, 117, 123])  # BGR


# ------------------------------------------------------------------------ predictions, resume

def test_prediction_log_ignores_a_cut_record(tmp_path):
    log = PredictionLog(tmp_path / "run", rank=0)
    log.append(np.array([3, 1]), np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]))
    log.close()
    part = tmp_path / "run" / "part-0.bin"
    with open(part, "ab") as f:
        f.write(b"\x07" * (RECORD.itemsize // 2))  # a crash in the middle of a record
    other = PredictionLog(tmp_path / "run", rank=1)
    other.append(np.array([9]), np.array([[0, 0, 0, 0, 1]]))
    found = PredictionLog(tmp_path / "run").load()
    assert sorted(found) == [1, 3, 9]
    np.testing.assert_array_equal(found[3], [1, 2, 3, 4, 5])
    again = PredictionLog(tmp_path / "run", rank=0)
    again.append(np.array([5]), np.array([[5, 5, 5, 5, 5]]))  # cuts the broken tail first
    again.close()
    assert part.stat().st_size == 3 * RECORD.itemsize
    assert sorted(PredictionLog(tmp_path / "run").load()) == [1, 3, 5, 9]


def test_interrupted_run_resumes_with_the_same_numbers(tmp_path, colour):
    model, _, known = colour
    val = val_folder(tmp_path / "val")
    cases = len(CASES)

    def options(cache, **kw):
        return VerifyOptions(model="colour_nn", weights=str(model), val=str(val),
                             cache_dir=cache, batch_size=4, workers=1, manifest=known, **kw)

    def stop_after_two(k):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(options(tmp_path / "cache"), on_batch=stop_after_two)
    resumed = evaluate(options(tmp_path / "cache"))
    assert resumed.computed == cases - 8  # two batches of 4 came from the cache
    whole = evaluate(options(tmp_path / "fresh"))
    assert whole.computed == cases
    for result in (resumed, whole):
        assert (result.counts.top1, result.counts.top5) == expected_counts(CASES)
        assert result.counts.images == cases
    np.testing.assert_array_equal(resumed.counts.to_vector(), whole.counts.to_vector())
    assert evaluate(options(tmp_path / "cache")).computed == 0
    assert evaluate(options(tmp_path / "cache", resume=False)).computed == cases
