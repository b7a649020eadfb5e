"""CRIU's page-server protocol, answered by zap: in a lazy restore, CRIU's lazy-pages daemon
(`criu lazy-pages --page-server --ps-socket FD`) asks for the pages of the restored processes,
first those they fault on, then all the others, and zap sends them from wherever it keeps them
(the image store: store/pages.py). docs/lazy-restore.md has the protocol as CRIU 4 speaks it.

PageMaps: which page of which pages image holds each page of each process, from the pagemap
images; which runs are lazy (anonymous private memory: served here) and which CRIU restores
itself (written into the pages file before the restore).
PageServer: one connection, one thread answering requests in order; pause() stops it at a
request boundary (before a fork), resume() starts it again (in the copy that goes on)."""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from zapckpt.common.errors import ZapError
from zapckpt.criu.images import MAP_NORESERVE, PAGE_SIZE, PE_LAZY, ImageFormatError, read_pagemap, vmas

# {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id} in the host's layout (criu/page-xfer.c)
HEADER = struct.Struct("=I4xQQQ")
PS_IOV_ADD_F = 6
PS_IOV_GET = 7
PS_IOV_CLOSE = 0x1023
PS_IOV_FORCE_CLOSE = 0x1024
PS_CMD_BITS = 16
PE_PRESENT = 1 << 2
STATUS = struct.Struct("=i")
MAX_IOV = 1000  # slices per sendmsg (the kernel takes at most 1024)
PREFETCH_PAGES = 1024  # decompressed ahead of the daemon's background requests (4 MiB)
WORKING_SET_MAX = 1 << 16  # faulted pages remembered for the next restore
TASK_PAGEMAP = re.compile(r"pagemap-(\d+)\.img")


class ProtocolError(Exception):
    pass


class Pages(Protocol):
    def read(self, name: str, first: int, n: int) -> list[memoryview]: ...
    def prefetch(self, name: str, first: int, n: int) -> None: ...


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
    working_set: list[tuple[int, int]] = field(default_factory=list)  # (process, address), first faults first


class PageServer:
    def __init__(self, sock: socket.socket, maps: PageMaps, pages: Pages, on_failure: Callable[[str], None]):
        self.sock, self.maps, self.pages, self.on_failure = sock, maps, pages, on_failure
        self.stats = Stats()
        self.closed = threading.Event()  # the daemon said it is done (or the connection ended)
        self.error: str | None = None
        self.lost = False  # the daemon went away mid-way
        self._seen: set[tuple[int, int]] = set()
        self._gate = threading.Lock()  # held while a request is answered
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def start(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="zap-page-server", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop answering, between two requests (those that arrive meanwhile wait in the socket)."""
        if self._thread is None:
            return
        with self._gate:
            os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    resume = start

    def close(self) -> None:
        """The thread joined, the connection closed (the daemon is done, or is to stop)."""
        if self._thread is not None:
            self.pause()
        try:
            self.sock.close()
        except OSError:
            pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        head = bytearray(HEADER.size)
        try:
            while not self.closed.is_set():
                ready = {fd for fd, _ev in poller.poll()}
                if self._wake_r in ready:
                    return
                with self._gate:
                    if self.sock.recv_into(head, HEADER.size, socket.MSG_WAITALL) < HEADER.size:
                        self.closed.set()  # the daemon went away: its exit status says how
                        return
                    self._answer(*HEADER.unpack(head))
        except (BrokenPipeError, ConnectionError) as e:
            self.lost = True  # the daemon is gone: its exit status says why (the keeper tells)
            self.fail(f"the connection to CRIU's lazy-pages daemon broke ({e.strerror or e})")
        except Exception as e:  # noqa: BLE001 - any failure ends the serving, and the pod (on_failure)
            self.fail(str(e) if isinstance(e, (ProtocolError, ZapError)) else f"{type(e).__name__}: {e}")

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
            self.on_failure(why)
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the daemon stops at once
        except OSError:
            pass

    def _answer(self, cmd: int, nr: int, vaddr: int, dst: int) -> None:
        op = cmd & ((1 << PS_CMD_BITS) - 1)
        if op in (PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE):
            self.sock.sendall(STATUS.pack(0))
            self.closed.set()
            return
        if op != PS_IOV_GET:
            raise ProtocolError(f"unexpected page-server command {cmd:#x} from the lazy-pages daemon")
        name, first, n = self.maps.locate(dst, vaddr, nr)
        data = self.pages.read(name, first, n)
        _send(self.sock, [HEADER.pack(PS_IOV_ADD_F | (PE_PRESENT << PS_CMD_BITS), n, vaddr, dst), *data])
        st = self.stats
        st.requests += 1
        st.pages += n
        if nr == 1:  # a fault (background requests ask for 16 pages and more)
            st.faults += 1
            if len(st.working_set) < WORKING_SET_MAX and (dst, vaddr) not in self._seen:
                self._seen.add((dst, vaddr))
                st.working_set.append((dst, vaddr))
        else:
            self.pages.prefetch(name, first + n, min(PREFETCH_PAGES, 2 * n))


def _send(sock: socket.socket, parts: list) -> None:
    """sendmsg of every part, in batches the kernel takes, finishing short sends."""
    for i in range(0, len(parts), MAX_IOV):
        batch = [memoryview(p).cast("B") for p in parts[i : i + MAX_IOV]]
        while batch:
            sent = sock.sendmsg(batch)
            while batch and sent >= len(batch[0]):
                sent -= len(batch[0])
                batch.pop(0)
            if batch and sent:
                batch[0] = batch[0][sent:]


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
