"""POSIX locks that a restore gives back by hand.

CRIU takes a restored process's POSIX locks again (prepare_file_locks) before it maps the
process's files (open_vmas), and its restorer then closes the descriptor it mapped each file
through; closing any descriptor of a file drops every POSIX lock the process holds on that file
(POSIX's rule). So a lock on a file the process also maps is gone after `criu restore` (seen
with CRIU 4.2.1: a read lock on a MAP_SHARED file was gone, one on an unmapped file kept).
SQLite in WAL mode maps its `-shm` file and locks it: after such a restore the next connection
believes it is alone, checkpoints the WAL and deletes it under the writer, which goes on writing
into the deleted file.

So a restore of an image set holding POSIX locks runs CRIU with --leave-stopped; before the tree
runs again, every lock the images hold that /proc/locks does not show is taken again inside its
process (system/inject.py runs the fcntl there), and only then are the processes resumed. A lock
that cannot be taken again fails the restore."""

from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

from zapckpt.common.errors import ZapError
from zapckpt.criu.images import FL_POSIX, FileLock, file_locks, stopped_tasks
from zapckpt.system import inject, procinfo

F_SETLK = 6
SYS_FCNTL = 72  # x86_64
EOF = -1


@dataclass(frozen=True)
class Held:
    """One line of /proc/locks: a POSIX lock a process holds."""

    pid: int
    dev: tuple[int, int]
    ino: int
    write: bool
    start: int
    end: int  # EOF: to the end of the file


def posix_locks(images: Path) -> list[FileLock]:
    return [lk for lk in file_locks(images) if lk.style == FL_POSIX]


def held_posix_locks(path: str = "/proc/locks") -> list[Held]:
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            # "1: POSIX  ADVISORY  READ 9110 00:28:265 128 128"; "1: -> POSIX ..." is a waiter
            if len(parts) < 8 or parts[1] != "POSIX":
                continue
            maj, mnr, ino = parts[5].split(":")
            end = EOF if parts[7] == "EOF" else int(parts[7])
            out.append(Held(pid=int(parts[4]), dev=(int(maj, 16), int(mnr, 16)), ino=int(ino),
                            write=parts[3] == "WRITE", start=int(parts[6]), end=end))  # fmt: skip
    return out


def _covered(lk: FileLock, host_pid: int, ino: int, held: list[Held]) -> bool:
    # By inode, not device: /proc/locks names the file system's device, stat a btrfs
    # subvolume's own; the inode of one of the process's own files is as good.
    end = EOF if lk.length == 0 else lk.start + lk.length - 1
    for h in held:
        if (h.pid, h.ino, h.write) != (host_pid, ino, lk.type == 1) or h.start > lk.start:
            continue
        if h.end == EOF or (end != EOF and h.end >= end):
            return True
    return False


def _thread(host_pid: int) -> int:
    """A live thread of the process to run the call in (its leader may have exited)."""
    for tid in [host_pid, *sorted(int(t) for t in os.listdir(f"/proc/{host_pid}/task"))]:
        st = procinfo.read_stat(tid)
        if st and st.state not in "ZX":
            return tid
    raise ZapError(f"process {host_pid} has no live thread")


def give_back(images: Path, init_pid: int) -> int:
    """Take again, inside each restored process of the tree (stopped), the POSIX locks it held
    at the dump and no longer holds; returns how many were taken again."""
    wanted = posix_locks(images)
    if not wanted:
        return 0
    hosts = procinfo.host_pids(init_pid)
    held = held_posix_locks()
    taken = 0
    for lk in wanted:
        host = hosts.get(lk.pid)
        if host is None:
            raise ZapError(f"process {lk.pid} of the pod, which held a lock, was not restored")
        try:
            st = os.stat(f"/proc/{host}/fd/{lk.fd}")
            path = os.readlink(f"/proc/{host}/fd/{lk.fd}")
        except OSError as e:
            raise ZapError(f"process {lk.pid} of the pod held a lock through descriptor {lk.fd}, "
                           f"which it no longer has after the restore ({e.strerror})") from None  # fmt: skip
        if _covered(lk, host, st.st_ino, held):
            continue
        flock = struct.pack("<hhxxxxqqixxxx", lk.type, os.SEEK_SET, lk.start, lk.length, 0)
        try:
            res, _ = inject.syscall(_thread(host), SYS_FCNTL, [lk.fd, F_SETLK, inject.DATA], flock)
        except inject.InjectError as e:
            raise ZapError(f"cannot give process {lk.pid} of the pod back its lock on {path}, which CRIU "
                           f"dropped: {e}") from None  # fmt: skip
        if res < 0:
            raise ZapError(f"cannot give process {lk.pid} of the pod back its lock on {path}, which CRIU "
                           f"dropped: {os.strerror(-res)} (another process holds a conflicting lock?)")  # fmt: skip
        taken += 1
    return taken


def resume(images: Path, init_pid: int) -> None:
    """Let a tree restored with --leave-stopped run, but the processes that were stopped when
    they were dumped (they stay stopped, as a plain restore leaves them)."""
    keep = stopped_tasks(images)
    procinfo.signal_all([h for inner, h in procinfo.host_pids(init_pid).items() if inner not in keep], signal.SIGCONT)
