"""Progress for work that takes a while: at a terminal, after PROGRESS_AFTER seconds, one status
line on stderr, rewritten in place (`zap: restore web@3: restoring processes (4 s)`), cleared
when the command ends. Operations only name their current step (step()); nothing is printed
when stderr is not a terminal, so scripts and pipes see exactly what they did before."""

from __future__ import annotations

import sys
import threading
import time

PROGRESS_AFTER = 2.0

_step = ""


def step(text: str) -> None:
    """What the running operation does now (cheap: called on every path, shown only at a terminal)."""
    global _step
    _step = text


class Ticker:
    def __init__(self, what: str, out=None, after: float = PROGRESS_AFTER):
        self.what, self.out, self.after = what, out or sys.stderr, after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    def __enter__(self) -> "Ticker":
        try:
            tty = self.out.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            self._write("\r\033[K")

    def _run(self) -> None:
        t0 = time.monotonic()
        if self._stop.wait(self.after):
            return
        while not self._stop.is_set():
            now = _step
            self._write(f"\r\033[Kzap: {self.what}{': ' + now if now else ''} ({time.monotonic() - t0:.0f} s)")
            self._shown = True
            self._stop.wait(0.5)

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass
