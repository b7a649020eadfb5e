"""CRIU's page-server protocol, answered by zap: in a lazy restore, CRIU's lazy-pages daemon
(`criu lazy-pages --page-server --ps-socket FD`) asks for the pages of the restored processes,
first those they fault on, then all the others, and zap sends them from wherever it keeps them
(the image store's packs: store/pages.py writes where each page is). docs/lazy-restore.md has
the protocol as CRIU 4 speaks it.

PageMaps: which page of which pages image holds each page of each process, from the pagemap
images; which runs are lazy (anonymous private memory: served) and which CRIU restores itself
(written into the pages file before the restore).
PageServer: zap-pages (pageserver.c), the server itself, a process of its own started on an
index of the pages; this module writes the index's processes part and watches it."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from zapckpt.common.errors import ZapError
from zapckpt.criu.images import MAP_NORESERVE, PAGE_SIZE, PE_LAZY, ImageFormatError, read_pagemap, vmas

TASK_PAGEMAP = re.compile(r"pagemap-(\d+)\.img")


class ProtocolError(Exception):
    pass


class Pages(Protocol):
    pack_fds: dict[str, int]

    def write_index(self, target: Path) -> list[str]: ...


@dataclass
class TaskPages:
    """The present runs of one process's pagemap: addresses, their first page in the pages file,
    lengths in pages, and whether CRIU leaves them to the lazy-pages daemon."""

    pages: str  # the pages-N.img file
    vaddr: np.ndarray
    first: np.ndarray
    count: np.ndarray
    lazy: np.ndarray


class PageMaps:
    def __init__(self, images: Path):
        self.tasks: dict[int, TaskPages] = {}
        self.eager: dict[str, list[tuple[int, int]]] = {}  # pages file -> runs CRIU restores itself
        for path in sorted(images.glob("pagemap-*.img")):
            try:
                pm = read_pagemap(path)
            except (OSError, ImageFormatError) as e:
                raise ImageFormatError(f"{path.name}: {e}") from None
            name = f"pages-{pm.pages_id}.img"
            m = TASK_PAGEMAP.fullmatch(path.name)
            runs = []
            off = 0
            for e in pm.entries:
                if e.present:
                    runs.append((e.vaddr, off, e.nr_pages, bool(m) and bool(e.flags & PE_LAZY)))
                    off += e.nr_pages
            self.eager.setdefault(name, []).extend((first, n) for _v, first, n, lazy in runs if not lazy and n)
            if m:
                cols = list(zip(*runs)) if runs else [(), (), (), ()]
                self.tasks[int(m.group(1))] = TaskPages(name, np.array(cols[0], dtype=np.uint64),
                                                        np.array(cols[1], dtype=np.int64), np.array(cols[2], dtype=np.int64),
                                                        np.array(cols[3], dtype=bool))  # fmt: skip

    def premap_refused(self, images: Path) -> str | None:
        """Why CRIU's lazy restore would fail here, or None. It maps every private memory area of
        the tree, writable, before it restores (an eager restore maps them in place, as they
        were): an area the kernel will not commit to (MariaDB reserves 8 TiB of address space)
        makes that mmap fail. Judged by the kernel's own overcommit rule."""
        mode = _read_int("/proc/sys/vm/overcommit_memory", 0)
        if mode == 1:
            return None
        mem = _meminfo()
        total = 0
        for path in sorted(images.glob("mm-*.img")):
            for v in vmas(path):
                if v.private and not v.flags & MAP_NORESERVE:
                    size = v.end - v.start
                    total += size
                    if mode == 0 and size > (mem.get("MemTotal", 0) + mem.get("SwapTotal", 0)) << 10:
                        return f"it reserves {size >> 30} GiB of address space in one area (more than this machine's memory)"
        if mode == 2 and total > (mem.get("CommitLimit", 0) - mem.get("Committed_AS", 0)) << 10:
            return "its private memory areas exceed what this kernel will commit to (vm.overcommit_memory=2)"
        return None

    @property
    def lazy_pages(self) -> int:
        return int(sum(t.count[t.lazy].sum() for t in self.tasks.values()))

    def pages_files(self) -> set[str]:
        return set(self.eager) | {t.pages for t in self.tasks.values()}

    def locate(self, task: int, vaddr: int, n: int) -> tuple[str, int, int]:
        """(pages file, first page, how many of the n asked for lie in that run) of a lazy
        range of a process."""
        t = self.tasks.get(task)
        if t is None:
            raise ProtocolError(f"pages asked for process {task}, which the image set does not have")
        i = int(np.searchsorted(t.vaddr, np.uint64(vaddr), side="right")) - 1
        if i < 0:
            raise ProtocolError(f"no page of process {task} at {vaddr:#x}")
        inner = (vaddr - int(t.vaddr[i])) // PAGE_SIZE
        if (vaddr - int(t.vaddr[i])) % PAGE_SIZE or inner >= int(t.count[i]) or not t.lazy[i]:
            raise ProtocolError(f"no lazy page of process {task} at {vaddr:#x}")
        return t.pages, int(t.first[i]) + inner, min(n, int(t.count[i]) - inner)


@dataclass
class Stats:
    requests: int = 0
    pages: int = 0
    faults: int = 0
    busy_s: float = 0.0  # answering (the rest of the time it waits for the daemon)


class PageServer:
    """zap-pages (pageserver.c), the page server of one lazy restore: a process of its own (a
    request costs it microseconds, and it goes on untouched when zap's command forks into its
    background half). Its index is written into `index` (a staging directory's: root's alone)."""

    def __init__(self, index: Path, maps: PageMaps, pages: "Pages", working_set: list[tuple[int, int]] = ()):
        self.index, self.maps = index, maps
        names = pages.write_index(index)
        number = {n: i for i, n in enumerate(names)}
        out = bytearray()
        for task, t in sorted(maps.tasks.items()):
            runs = [(int(v), int(f), int(c)) for v, f, c, lz in zip(t.vaddr, t.first, t.count, t.lazy) if lz and c]
            out += struct.pack("<QII", task, number[t.pages], len(runs))
            out += b"".join(struct.pack("<QQQ", *r) for r in runs)
        (index / "tasks").write_bytes(bytes(out))
        ahead = bytearray()
        for task, vaddr in working_set:
            try:
                name, first, _n = maps.locate(task, vaddr, 1)
            except ProtocolError:
                continue
            ahead += struct.pack("<II", number[name], first)
        if ahead:
            (index / "ahead").write_bytes(bytes(ahead))
        self.pack_fds = tuple(pages.pack_fds.values())
        self.proc: subprocess.Popen | None = None
        self.pidfd = -1

    def start(self, sock: socket.socket) -> None:
        err = os.open(self.index / "err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen([binary(), str(self.index), str(sock.fileno())], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, pass_fds=(sock.fileno(), *self.pack_fds),
                                         start_new_session=True)  # fmt: skip
        finally:
            os.close(err)
        self.pidfd = os.pidfd_open(self.proc.pid)

    @property
    def gone(self) -> bool:
        """It has exited (a pidfd turns readable then, whoever its parent is now)."""
        return self.pidfd < 0 or bool(select.select([self.pidfd], [], [], 0)[0])

    @property
    def error(self) -> str | None:
        """Why it stopped serving, once it has: what it said, or None (the daemon said it was done)."""
        if not self.gone:
            return None
        try:
            said = (self.index / "err").read_text(errors="replace").strip()
        except OSError:
            said = ""
        if said:
            return said.splitlines()[-1]
        if not (self.index / "stats").exists():
            return "zap's page server was killed"
        return None

    @property
    def lost(self) -> bool:
        """It stopped because the daemon went away (the daemon's exit status says more)."""
        return bool(self.error and "went away" in self.error)

    @property
    def faults(self) -> int:
        """Faults answered so far (live)."""
        try:
            with open(self.index / "live", "rb") as f:
                return struct.unpack("<QQ", f.read(16))[1]
        except (OSError, struct.error):
            return 0

    @property
    def stats(self) -> Stats:
        try:
            r, p, f, us = (int(x) for x in (self.index / "stats").read_text().split())
            return Stats(r, p, f, us / 1e6)
        except (OSError, ValueError):
            return Stats()

    @property
    def working_set(self) -> list[tuple[int, int]]:
        """The pages faulted on, first faults first: (pagemap id, address)."""
        try:
            raw = (self.index / "faults").read_bytes()
        except OSError:
            return []
        return [struct.unpack_from("<IQ", raw, i) for i in range(0, len(raw) - 11, 12)]

    def kill(self) -> None:
        if self.proc is not None and not self.gone:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=0)  # ours to reap, if we are still its parent
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def binary() -> str:
    """ZAP_PAGES, else zap-pages beside the zap command (scripts/install.sh builds it)."""
    path = os.environ.get("ZAP_PAGES") or os.path.join(sys.prefix, "libexec", "zap-pages")
    if not os.access(path, os.X_OK):
        raise ZapError(f"zap's page server {path} is missing: run `make install` (or set ZAP_LAZY=0)")
    return path


def _read_int(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0]) if v.split() else 0
    except (OSError, ValueError):
        pass
    return out
