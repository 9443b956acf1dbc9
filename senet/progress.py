"""Progress reporting on stderr: a bar when stderr is a terminal, step lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._start = time.perf_counter()

    def step(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self._start
            print(f"[{elapsed:6.2f}s] {message}", file=self.stream, flush=True)

    def bar(self, label: str):
        """A callback (done, total) drawing a bar on a terminal; silent elsewhere."""
        def update(done: int, total: int) -> None:
            if self.quiet or not self.tty or total <= 0:
                return
            width = 30
            filled = width * done // total
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{done}/{total}{end}")
            self.stream.flush()
        return update
