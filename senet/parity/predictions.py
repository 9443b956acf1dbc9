"""The predictions cache that lets an interrupted evaluation resume where it stopped.

One folder per run key (model weights sha256 + dataset listing digest + preprocessing + backend,
see ``run_key``). Inside, each process appends fixed-size binary records — sample index (int64)
and its top-5 class indices (int32 x 5) — to its own ``part-<rank>.bin`` after every batch, with
one ``write`` on a file opened ``O_APPEND`` and an ``fsync``. A record cut short by a crash is
recognised by the file length and ignored, so the cache is never read half-written.
Records are keyed by the sample's index in the full sorted listing, so a later run with another
``--limit`` or another number of processes reuses them.

Unreadable images are not cached: they are tried again on the next run (they are few, and the
file may have been repaired).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from senet.files import atomic_output
from senet.parity.metrics import TOP_K

RECORD = np.dtype([("index", "<i8"), ("top", "<i4", (TOP_K,))])


def run_key(parts: dict) -> str:
    """A short stable digest of the JSON-serialisable ``parts``."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def listing_digest(samples, root: str | os.PathLike) -> str:
    """Digest of a dataset listing: each sample's path relative to ``root``, label and file
    size, in order (a moved folder keeps its digest; a replaced file changes it)."""
    h = hashlib.sha256()
    for sample in samples:
        path = Path(sample.path)
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{os.path.relpath(path, root)}|{sample.label}|{size}\n".encode())
    return h.hexdigest()[:32]


class PredictionLog:
    """Append-only top-5 predictions of one run (``folder``), written by process ``rank``."""

    def __init__(self, folder: str | os.PathLike, rank: int = 0, meta: dict | None = None):
        self.folder = Path(folder)
        self.rank = rank
        self.folder.mkdir(parents=True, exist_ok=True)
        if meta is not None and rank == 0:
            with atomic_output(self.folder / "meta.json") as tmp:
                Path(tmp).write_text(json.dumps(meta, indent=1, sort_keys=True))
        self._fd: int | None = None

    def load(self) -> dict[int, np.ndarray]:
        """Every complete record of every process's file: {sample index: top-5}."""
        found: dict[int, np.ndarray] = {}
        for part in sorted(self.folder.glob("part-*.bin")):
            data = part.read_bytes()
            usable = len(data) - len(data) % RECORD.itemsize
            records = np.frombuffer(data[:usable], dtype=RECORD)
            for index, top in zip(records["index"].tolist(), records["top"]):
                found[index] = top
        return found

    def append(self, indices: np.ndarray, top: np.ndarray) -> None:
        """Append one batch's predictions durably (one write, then fsync)."""
        if len(indices) == 0:
            return
        records = np.empty(len(indices), RECORD)
        records["index"] = indices
        records["top"] = top
        if self._fd is None:
            # Not senet.files.atomic_output: the part file is a log that grows batch by batch
            # and must survive a crash between batches; whole records make it safe to read.
            path = self.folder / f"part-{self.rank}.bin"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _drop_partial_tail(self._fd)
        data = records.tobytes()
        written = os.write(self._fd, data)
        if written != len(data):  # a short write: cut it off so the file stays whole records
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(f"short write to the predictions cache in {self.folder}")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _drop_partial_tail(fd: int) -> None:
    """Truncate a record left incomplete by an earlier crash, so new records stay aligned."""
    size = os.fstat(fd).st_size
    if size % RECORD.itemsize:
        os.ftruncate(fd, size - size % RECORD.itemsize)

