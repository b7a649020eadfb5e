"""Idle priority for background work (the watch supervisor's ingest, compression and pruning):
the pod keeps its cores and its disk. Per thread, as Linux keeps both: threads started inside
inherit it (the store's compressing workers), and the caller gets its own priority back."""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from typing import Iterator

IDLE_NICE = 19
_SYS_IOPRIO_GET, _SYS_IOPRIO_SET = 252, 251  # x86_64
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_CLASS_IDLE = 3

_libc = ctypes.CDLL(None, use_errno=True)


def _ioprio(tid: int) -> int:
    return _libc.syscall(_SYS_IOPRIO_GET, _IOPRIO_WHO_PROCESS, tid)


def _set_ioprio(tid: int, value: int) -> None:
    if _libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, tid, value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioprio_set: {os.strerror(err)}")


@contextmanager
def idle() -> Iterator[None]:
    """Run the block at nice 19 and in the idle I/O class, on this thread."""
    tid = threading.get_native_id()
    nice, io = os.getpriority(os.PRIO_PROCESS, tid), _ioprio(tid)
    os.setpriority(os.PRIO_PROCESS, tid, IDLE_NICE)
    _set_ioprio(tid, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, nice)  # root may raise it again
        if io >= 0:
            _set_ioprio(tid, io)
