"""An operation that reports before it is over: `zap restore` and `zap branch` say the pod runs
as soon as it does, while its memory is still coming in and the state it replaced is still
being stored. The command's process forks; the parent waits until the child says it has taken
over, reports, and exits; the child goes on in the background with everything the operation
held (its locks, its intent record, its staging directories: inherited, so never released in
between) and releases it when it is done.

The child is in a session of its own, its standard streams on /dev/null, holding no client's
descriptor (the zap server's worker registers its connection: forget_on_detach)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

_client_fds: list[int] = []
_in_background = False


def forget_on_detach(fd: int) -> None:
    """A descriptor of the client's (the zap server's connection) that a detached child must
    not keep open."""
    _client_fds.append(fd)


def in_background() -> bool:
    return _in_background


class Handover:
    """The child's side: say it has taken over (ready) or that it could not (failed)."""

    def __init__(self, fd: int):
        self.fd = fd

    def ready(self) -> None:
        self._say(b"1")

    def failed(self, message: str) -> None:
        self._say(b"0" + message.encode(errors="replace"))

    def _say(self, word: bytes) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, word)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def go(report: Callable[[], None], before_fork: Callable[[], None] | None = None, log: Path | None = None) -> Handover:
    """Fork. In the parent: wait for the child's word, then report() and exit 0 (or print the
    child's error and exit 1), without unwinding anything (the child holds it now). In the
    child: returns the Handover, detached from the terminal, its standard error on log (where
    an unexpected error's traceback lands) or /dev/null."""
    global _in_background
    r, w = os.pipe2(os.O_CLOEXEC)
    if before_fork is not None:
        before_fork()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(w)
        word = b""
        while chunk := os.read(r, 4096):
            word += chunk
        if word == b"1":
            report()
            code = 0
        else:
            msg = word[1:].decode(errors="replace") if word else "the background part of the operation died"
            print(f"zap: error: {msg}", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(r)
    _in_background = True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    try:
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) if log else devnull
    except OSError:
        err = devnull
    os.dup2(err, 2)
    if err != devnull:
        os.close(err)
    os.close(devnull)
    for fd in _client_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    return Handover(w)
