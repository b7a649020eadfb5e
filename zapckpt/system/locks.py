"""Advisory locks (flock) so two zap commands never work on the same pod at once."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zapckpt.common.errors import Busy



def default_wait() -> float:
    """ZAP_LOCK_TIMEOUT, read when a lock is taken (a command of the zap server has its own)."""
    return float(os.environ.get("ZAP_LOCK_TIMEOUT", "60"))


@contextmanager
def locked(path: Path, what: str, wait: float | None = None, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on path; wait up to `wait` seconds, then fail clearly."""
    wait = default_wait() if wait is None else wait
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(f"{what} is busy: another zap command is working on it (waited {wait:g}s)")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
