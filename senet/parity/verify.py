"""The parity run: weights + validation folder -> counts, errors and the verdict against Table 1.

``evaluate(options)`` resolves the model (manifest entry, weights file, bundled demo data),
prepares a runnable file (converting a .caffemodel once, cached by its sha256), lists the
validation set in its deterministic order, and scores it batch by batch while workers decode
ahead. Every batch's top-5 predictions are appended to the predictions cache, so an interrupted
run resumes where it stopped. Under torchrun each rank scores a shard and the counts are summed;
only rank 0 prints.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from senet.errors import DatasetError, UsageError
from senet.manifest import Manifest, lookup, package_path
from senet.parity import distributed
from senet.parity.loader import Preprocessing, iterate_batches
from senet.parity.metrics import Counts, Gate, judge, top_k
from senet.parity.predictions import PredictionLog, listing_digest, run_key
from senet.parity.runners import choose_backend, open_runner, prepare_model, resolve_device
from senet.parity.runners import weights_format

DEFAULT_CACHE = Path("~/.cache/senet")


@dataclass
class VerifyOptions:
    model: str | None = None
    weights: str | None = None
    prototxt: str | None = None
    weights_dir: str | os.PathLike = DEFAULT_CACHE
    cache_dir: str | os.PathLike = DEFAULT_CACHE
    val: str | None = None  # the validation folder
    labels: str | None = None
    label_order: str = "sorted"
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None  # None: one per spare core
    threads: int | None = None  # inference threads (None: the runtime's default)
    limit: int | None = None
    allow_unreadable: bool = False
    resume: bool = True
    manifest: Manifest | None = None  # the models to know (None: the shipped manifest)


@dataclass
class Evaluation:
    """What a parity run measured (on rank 0: summed over all ranks)."""

    entry: object
    classes: list[str]
    counts: Counts
    gate: Gate
    unreadable: list[tuple[str, str]]
    weights: Path
    weights_format: str
    weights_sha256: str
    backend: str
    device: str
    val_dir: Path
    images_listed: int
    images_selected: int
    listing_digest: str
    preprocessing: dict
    computed: int  # images run through the model this time (the rest came from the cache)
    seconds: float
    world_size: int = 1
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- resolving inputs

def entry_classes(entry) -> list[str] | None:
    """An explicit class list (folder names in output order), when the entry has one."""
    classes = getattr(entry, "classes", None)
    return [str(c) for c in classes] if classes else None


def resolve_weights(options: VerifyOptions, entry) -> Path:
    if options.weights:
        return Path(options.weights).expanduser()
    if entry is None:
        raise UsageError("say which model to check: --model NAME and/or --weights FILE")
    bundled = getattr(entry, "weights_path", None)
    if bundled:
        return package_path(bundled)
    folder = Path(options.weights_dir).expanduser()
    expected = folder / entry.file_name
    if not expected.is_file():
        raise UsageError(f"no weights for {entry.name}: expected {entry.file_name} in {folder}",
                         hint="download it there, or pass --weights-dir DIR or --weights FILE")
    return expected


def resolve_val_dir(options: VerifyOptions, entry) -> Path:
    if options.val:
        return Path(options.val).expanduser()
    bundled = getattr(entry, "val_dir", None)
    if bundled:
        return package_path(bundled)
    raise UsageError("--val-dir is required", hint="the ImageNet validation folder: one folder "
                     "per WNID, or ILSVRC2012_val_*.JPEG files, or any folder with --labels")


def discover_class_folders(val_dir: Path, classes: list[str]):
    """Samples of a folder holding one sub-folder per class name (label = position in
    ``classes``), sorted by relative path."""
    from senet.parity.data import IMAGE_SUFFIXES, Sample
    if not val_dir.is_dir():
        raise DatasetError("validation folder does not exist" if not val_dir.exists()
                           else "validation path is not a folder", where=str(val_dir))
    index = {name: k for k, name in enumerate(classes)}
    found, unknown = [], []
    for child in sorted(val_dir.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir():
            if child.suffix.lower() in IMAGE_SUFFIXES:
                unknown.append(child.name)
            continue
        if child.name not in index:
            unknown.append(child.name + "/")
            continue
        for current, dirs, files in os.walk(child, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend((Path(current) / f, index[child.name]) for f in files
                         if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if unknown:
        raise DatasetError(f"{len(unknown)} entries are not class folders of this model: "
                           f"{', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}",
                           where=str(val_dir), hint="expected folders " + ", ".join(classes[:5])
                           + (", ..." if len(classes) > 5 else ""))
    if not found:
        raise DatasetError("no images found", where=str(val_dir))
    found.sort(key=lambda item: item[0].relative_to(val_dir).as_posix())
    return [Sample(path, label) for path, label in found]


def list_samples(options: VerifyOptions, entry, val_dir: Path) -> tuple[list, list[str]]:
    """(every labelled image in order, class names in the model's output order)."""
    from senet.classes import class_order
    from senet.parity import data
    classes = entry_classes(entry)
    if classes is not None:
        if options.labels:
            raise UsageError(f"--labels is for ImageNet models; {entry.name} reads class folders")
        return discover_class_folders(val_dir, classes), classes
    order = entry.class_order
    return data.discover(val_dir, options.labels, options.label_order, order), \
        class_order(order)


def default_workers(local_world: int) -> int:
    """Decode processes per model process: the cores left after one for inference, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(32, (cores or 2) // max(1, local_world) - 1))


# ------------------------------------------------------------------------------------ the run

def evaluate(options: VerifyOptions, step=None, progress=None, on_batch=None) -> Evaluation:
    """Score the validation set; on rank 0 the result covers every rank.

    ``step(message)``: status lines; ``progress(done, total, seconds)``: after each batch;
    ``on_batch(k)``: called after batch k (1-based) is cached (tests interrupt runs with it).
    """
    if options.limit is not None and options.limit < 1:
        raise UsageError(f"--limit must be a positive number of images, got {options.limit}")
    entry = lookup(options.model, options.manifest) if options.model else None
    weights = resolve_weights(options, entry)
    backend = choose_backend(options.backend, weights_format(weights))
    group = distributed.from_env()
    device = resolve_device(options.device, backend, group.local_rank)
    group = distributed.join(group, device)
    try:
        return _evaluate(options, entry, weights, backend, device, group, step, progress,
                         on_batch)
    finally:
        distributed.leave(group)


def _evaluate(options, entry, weights, backend, device, group, step, progress, on_batch):
    started = time.perf_counter()
    cache_dir = Path(options.cache_dir).expanduser()
    # With the model known, the data set is listed first: a wrong folder fails at once, not
    # after converting a large caffemodel.
    dataset = _dataset(options, entry, step) if entry is not None else None
    prepared = None
    if group.is_main:  # rank 0 converts first; the others then find the cached file
        prepared = prepare_model(weights, entry, backend, cache_dir, options.prototxt, step,
                                 options.manifest)
    distributed.barrier(group)
    if prepared is None:
        prepared = prepare_model(weights, entry, backend, cache_dir, options.prototxt,
                                 manifest=options.manifest)
    entry = prepared.entry
    val_dir, samples, classes = dataset or _dataset(options, entry, step)
    selected = samples[:options.limit] if options.limit else samples
    preprocessing = Preprocessing.of(entry)
    digest = listing_digest(samples, val_dir)
    key_parts = {"weights_sha256": prepared.sha256, "listing": digest, "classes": len(classes),
                 "preprocessing": preprocessing.describe(), "backend": backend,
                 "device": device.split(":")[0], "runnable": prepared.format}
    log = PredictionLog(cache_dir / "predictions" / run_key(key_parts), group.rank,
                        meta=dict(key_parts, model=entry.name, weights=str(weights),
                                  val_dir=str(val_dir)))
    mine = group.shard(len(selected))
    known = log.load() if options.resume else {}
    predictions = {i: known[i] for i in mine if i in known}
    pending = [(i, str(selected[i].path)) for i in mine if i not in predictions]
    if step and group.world > 1:
        step(f"rank 0 of {group.world}: this process scores {len(mine)} of {len(selected)} "
             "images (the progress below is its share)")
    if step and predictions:
        step(f"resuming: {len(predictions)} of {len(mine)} images already scored")

    workers = options.workers if options.workers is not None else \
        default_workers(group.local_world)
    run = _Scoring(prepared, device, len(classes),
                   options.threads or _threads_per_rank(group, device), log, predictions)
    run.score(iterate_batches(pending, preprocessing, options.batch_size, workers), step,
              progress, on_batch, len(pending))

    counts = Counts(len(classes))
    if predictions:
        order = sorted(predictions)
        counts.add(np.array([selected[i].label for i in order]),
                   np.stack([predictions[i] for i in order]))
    counts.unreadable = len(run.unreadable)
    vector = distributed.sum_vector(group, np.append(counts.to_vector(), run.computed))
    counts = Counts.from_vector(vector[:-1], len(classes))
    failed = [(str(selected[i].path), reason)
              for part in distributed.gather(group, run.unreadable) for i, reason in part]
    gate = judge(counts, entry.top1_error, entry.top5_error, entry.tolerance,
                 options.allow_unreadable)
    return Evaluation(entry=entry, classes=classes, counts=counts, gate=gate,
                      unreadable=sorted(failed), weights=weights,
                      weights_format=prepared.source_format, weights_sha256=prepared.sha256,
                      backend=backend, device=device, val_dir=val_dir,
                      images_listed=len(samples), images_selected=len(selected),
                      listing_digest=digest, preprocessing=preprocessing.describe(),
                      computed=int(vector[-1]), seconds=time.perf_counter() - started,
                      world_size=group.world,
                      extra={"rank": group.rank, "loop_seconds": run.loop_seconds,
                             "load_seconds": run.load_seconds, "workers": workers})


def _dataset(options: VerifyOptions, entry, step) -> tuple[Path, list, list[str]]:
    val_dir = resolve_val_dir(options, entry)
    if step:
        step(f"listing {val_dir}")
    return (val_dir, *list_samples(options, entry, val_dir))


class _Scoring:
    """The batch loop: model on each batch, top-5 appended to the cache, unreadable kept."""

    def __init__(self, prepared, device, num_classes, threads, log, predictions):
        self.prepared, self.device, self.num_classes, self.threads = \
            prepared, device, num_classes, threads
        self.log, self.predictions = log, predictions
        self.unreadable: list[tuple[int, str]] = []
        self.computed = 0
        self.load_seconds = self.loop_seconds = 0.0

    def score(self, batches, step, progress, on_batch, total: int) -> None:
        started = time.perf_counter()
        try:
            # The first batch is asked for before the model is loaded: the decode workers
            # start (fork) before the inference runtime starts its threads.
            first = next(batches, None)
            if first is None:
                return
            if step:
                backend = "onnxruntime" if self.prepared.format == "onnx" else "torch"
                step(f"loading {self.prepared.path.name} ({backend}, {self.device})")
            load_started = time.perf_counter()
            runner = open_runner(self.prepared, self.device, self.num_classes, self.threads)
            run_started = time.perf_counter()
            self.load_seconds = run_started - load_started
            for k, batch in enumerate(_chain(first, batches), 1):
                self.unreadable.extend(batch.failed)
                if len(batch.indices):
                    top = top_k(runner(batch.images))
                    self.log.append(batch.indices, top)
                    self.predictions.update(zip(batch.indices.tolist(), top))
                    self.computed += len(batch.indices)
                if progress:
                    progress(self.computed + len(self.unreadable), total,
                             time.perf_counter() - run_started)
                if on_batch:
                    on_batch(k)
        finally:
            self.log.close()
            batches.close()
            self.loop_seconds = time.perf_counter() - started - self.load_seconds


def _chain(first, rest):
    yield first
    yield from rest


def _threads_per_rank(group: distributed.Group, device: str) -> int | None:
    """Several CPU ranks on one machine share its cores instead of each taking all of them."""
    if group.local_world <= 1 or not device.startswith("cpu"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // group.local_world)


class RateMeter:
    """Progress on stderr with images/s: a redrawn line on a terminal, else a line every 10 s."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self._last = -1e9

    def __call__(self, done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        finished = done >= total
        if not self.tty and not finished and seconds - self._last < self.every:
            return
        self._last = seconds
        width = 30
        filled = width * done // total if total else width
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images "
                f"{rate:7.1f} img/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
