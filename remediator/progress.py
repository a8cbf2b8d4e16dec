"""Progress lines for long waits.

On a terminal, transient lines are overwritten in place and kept lines stay; elsewhere (CI logs)
kept lines are always written and transient ones at most every ``min_interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """``progress(text)`` shows a transient line; ``progress(text, keep=True)`` a lasting one."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 20.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last_print = 0.0
        self._open = False

    def __call__(self, text: str, keep: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + (text if keep else text[:160]) + ("\n" if keep else ""))
            self._open = not keep
        else:
            now = time.monotonic()
            if keep or now - self._last_print >= self.min_interval:
                self.stream.write(text + "\n")
                self._last_print = now
        self.stream.flush()

    def done(self) -> None:
        if self._open:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._open = False
