"""Writing and hashing files: what every output format and the parity runner share."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from senet.errors import ConversionError, SenetError


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read through one reused 4 MiB buffer (hashlib releases the GIL for
    each chunk; mapping the file instead would add its size to this process's memory)."""
    h = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


class BackgroundSha256:
    """SHA-256 of a file computed on another core while the caller works (hashlib releases the
    GIL): hashing a 440 MB model takes about as long as converting it, and the digest is
    needed only when the output's header is written. ``result()`` waits for it; a file the
    thread could not read is hashed again in the caller, which then raises the OSError."""

    def __init__(self, path: str | os.PathLike):
        self._path = path
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = sha256_file(self._path)
        except OSError:
            pass

    def result(self) -> str:
        self._thread.join()
        return self._digest if self._digest is not None else sha256_file(self._path)


@contextmanager
def atomic_output(path: str | os.PathLike, what: str | None = None,
                  error: type[SenetError] = ConversionError) -> Iterator[str]:
    """Yields a temporary path beside `path`, renamed to `path` (with the usual 0666-minus-umask
    mode) when the block completes and removed when it fails: no partial output is ever left.
    OSErrors become one-line `error`s naming the file (and `what` it is, e.g. "report")."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        # the suffix keeps the extension: torch.export.save warns about other names
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}",
                                   dir=folder)
    except OSError as exc:
        problem = f"cannot write {what}" if what else f"cannot write to {folder}"
        raise error(f"{problem}: {exc.strerror or exc}", where=str(path)) from None
    os.close(fd)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a model file is for sharing
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            problem = f"cannot write {what}" if what else "cannot write"
            raise error(f"{problem}: {exc.strerror or exc}", where=str(path)) from None
        raise
