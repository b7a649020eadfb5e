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


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _ClearFirst:
    """sys.stdout / sys.stderr while a status line may be shown: the first thing the command
    prints to the terminal ends the status line, so the result starts on a clean line."""

    def __init__(self, stream, ticker: "Ticker"):
        self._stream, self._ticker, self._tty = stream, ticker, _isatty(stream)

    def write(self, text: str) -> int:
        if self._tty and text:
            self._ticker.finish()
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Ticker:
    def __init__(self, what: str, out=None, after: float = PROGRESS_AFTER):
        self.what, self.out, self.after = what, out or sys.stderr, after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False
        self._lock = threading.Lock()
        self._saved: tuple | None = None

    def __enter__(self) -> "Ticker":
        if _isatty(self.out):
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _ClearFirst(sys.stdout, self), _ClearFirst(sys.stderr, self)
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def finish(self) -> None:
        """Stop ticking and clear the status line (once the command has something to say)."""
        self._stop.set()
        with self._lock:
            if self._shown:
                self._write("\r\033[K")
                self._shown = False

    def __exit__(self, *exc) -> None:
        self.finish()
        if self._thread is not None:
            self._thread.join()
        self.finish()  # a line the thread wrote while we joined it
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved

    def _run(self) -> None:
        t0 = time.monotonic()
        if self._stop.wait(self.after):
            return
        while not self._stop.is_set():
            now = _step
            with self._lock:
                if self._stop.is_set():
                    return
                self._write(f"\r\033[Kzap: {self.what}{': ' + now if now else ''} ({time.monotonic() - t0:.0f} s)")
                self._shown = True
            self._stop.wait(0.5)

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass
