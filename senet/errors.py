"""One exception family for everything a user can get wrong.

Each error carries what went wrong, where (file, byte offset or line, layer name) and an optional
hint, and the exit status both programs give it (``exit_code``; README's table of exit codes).
The programs print ``str(error)`` on one line and exit with that code; nothing else should ever
reach the user as a traceback.

1 means the input under test is wrong: a model file that cannot be read or converted, weights
that are not the model they claim to be. 2 means the run could not be set up: bad usage, a
missing or unreadable data set. senet-verify's gate failing (a clean run outside tolerance) is
a result, not an error, and also exits 1.
"""

from __future__ import annotations


class SenetError(Exception):
    """Base of every error senet raises on purpose."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, layer: str | None = None,
                 hint: str | None = None):
        self.what = what
        self.where = where
        self.layer = layer
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}:")
        if self.layer:
            parts.append(f"layer '{self.layer}':")
        parts.append(self.what)
        text = " ".join(parts)
        if self.hint:
            text += f" ({self.hint})"
        return text


class CaffeFormatError(SenetError):
    """A .caffemodel or .prototxt that cannot be read as a Caffe net."""


class UnsupportedLayerError(SenetError):
    """One or more layer types without a converter; all of them are listed at once."""


class ShapeError(SenetError):
    """Blob shapes that do not fit a layer's rules (or a prototxt/caffemodel mismatch)."""


class GraphError(SenetError):
    """A net whose wiring is broken: a bottom nothing produces, an unknown output name."""


class ConversionError(SenetError):
    """An output could not be written (unwritable path, emitter failure on valid input)."""


class ModelFileError(SenetError):
    """A file senet wrote (.safetensors with its graph spec) that cannot be read back."""


class UsageError(SenetError):
    """Bad command-line usage; exit status 2."""

    exit_code = 2


class DatasetError(SenetError):
    """An evaluation data set that cannot be read (missing folder, labels, images, reports);
    exit status 2, like usage: the check could not be set up."""

    exit_code = 2
