"""Deferring Ctrl-C: an operation that has started changing things finishes (or undoes itself
on failure) before zap exits, so an interrupted zap never leaves a pod frozen or half-done."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {sig: signal.signal(sig, lambda n, _f: received.append(n)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if received:
        print("zap: interrupt received during the operation; it was completed first", file=sys.stderr)
