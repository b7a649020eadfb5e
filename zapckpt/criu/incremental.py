"""Incremental dumps: on kernels that track soft-dirty pages, CRIU pre-dumps the pod's memory
while it runs, and the dump in the frozen window then writes only the pages written since
(`--prev-images-dir`, `--track-mem`); the rest are marked "in parent".

The store keeps every image set whole: before ingest, `flatten` copies the parent's pages into
the dump's own pages files and marks every page present again, so a checkpoint never depends
on another one (restore and branch work whatever is removed later), and the store's
deduplication shares the pages both sets hold. This runs after the thaw."""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from bisect import bisect_right
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zapckpt.common import proc
from zapckpt.criu.images import (
    IMG_COMMON_MAGIC,
    PAGE_SIZE,
    PAGEMAP_MAGIC,
    PE_PARENT,
    PE_PRESENT,
    ImageFormatError,
    read_pagemap,
)

PARENT_LINK = "parent"  # what CRIU names the link to --prev-images-dir


@functools.cache  # a property of the kernel and the CRIU binary: once per process
def dirty_tracking(binary: str) -> bool:
    """Whether this kernel tracks soft-dirty pages for CRIU; `criu check` exits 0 either way,
    its words tell."""
    res = proc.run([binary, "check", "--feature", "mem_dirty_track"], check=False)
    return res.returncode == 0 and "Dirty tracking is OFF" not in res.stdout + res.stderr


def wanted(binary: str, cache: Path | None = None) -> bool:
    """Pre-dump before every checkpoint where the kernel allows it, unless ZAP_PREDUMP=off.
    cache: a directory where the answer is kept for this boot and this CRIU binary, so that a
    `zap checkpoint` does not pay `criu check` (~50 ms) every time."""
    if os.environ.get("ZAP_PREDUMP", "auto").lower() in ("off", "0", "no"):
        return False
    return kept_for_boot(cache, "mem_dirty_track", binary, dirty_tracking)


def kept_for_boot(cache: Path | None, name: str, binary: str, check) -> bool:
    """check(binary), a property of this boot's kernel and this CRIU binary, kept in cache (a
    directory) so that a command does not pay `criu check` each time."""
    if cache is None:
        return check(binary)
    try:
        st = os.stat(binary)
        key = "|".join([Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.path.realpath(binary),
                        str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)])  # fmt: skip
    except OSError:
        return check(binary)
    path = cache / f"{name}.json"
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == key and isinstance(kept.get("on"), bool):
            return kept["on"]
    except (OSError, ValueError, AttributeError):
        pass
    on = check(binary)
    try:
        cache.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "on": on}))
        tmp.replace(path)
    except OSError:
        pass  # only the cache is lost
    return on


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _entry(vaddr: int, nr_pages: int, wide: bool) -> bytes:
    """A present pagemap_entry: vaddr (1), the page count (2; CRIU >= 4.2 also has it as a
    uint64 in 5, and then writes 0 in 2), flags (4)."""
    out = b"\x08" + _varint(vaddr)
    out += b"\x10" + _varint(0 if wide else nr_pages)
    out += b"\x20" + _varint(PE_PRESENT)
    if wide:
        out += b"\x28" + _varint(nr_pages)
    return out


class _Parent:
    """The present pages of one pagemap of the parent set, found by address."""

    def __init__(self, images: Path, name: str):
        pm = read_pagemap(images / name)
        self.data = _map(images / f"pages-{pm.pages_id}.img") if any(e.present for e in pm.entries) else memoryview(b"")
        self.starts: list[int] = []
        self.runs: list[tuple[int, int, int]] = []  # vaddr, pages, offset in the pages file
        for off, size, vaddr in pm.page_runs():
            self.starts.append(vaddr)
            self.runs.append((vaddr, size // PAGE_SIZE, off))

    def pages(self, vaddr: int, n: int) -> Iterator[memoryview]:
        """n pages from vaddr, which the parent must hold (a pre-dump holds every page)."""
        end = vaddr + n * PAGE_SIZE
        while vaddr < end:
            i = bisect_right(self.starts, vaddr) - 1
            if i < 0:
                raise ImageFormatError(f"page {vaddr:#x} is in neither the dump nor its parent")
            start, count, off = self.runs[i]
            stop = start + count * PAGE_SIZE
            if vaddr >= stop:
                raise ImageFormatError(f"page {vaddr:#x} is in neither the dump nor its parent")
            take = min(end, stop) - vaddr
            at = off + (vaddr - start)
            if at + take > len(self.data):
                raise ImageFormatError("the parent's pages file is shorter than its pagemap")
            yield self.data[at : at + take]
            vaddr += take


def _map(path: Path) -> memoryview:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)) if size else memoryview(b"")


def flatten(images: Path, parent: Path) -> int:
    """Make the incremental image set in images whole: every page marked "in parent" is copied
    from the parent set, in pagemap order; the link to the parent goes. Returns the number of
    pages copied. The new files are written 0600 beside the old ones and replace them by rename."""
    copied = 0
    for pm in sorted(images.glob("pagemap*.img")):
        pagemap = read_pagemap(pm)
        if not any(e.flags & PE_PARENT for e in pagemap.entries):
            continue
        if not (parent / pm.name).exists():
            raise ImageFormatError(f"{pm.name}: pages in parent, but the parent has no {pm.name}")
        old = _Parent(parent, pm.name)
        pages_path = images / f"pages-{pagemap.pages_id}.img"
        own = _map(pages_path) if pages_path.exists() else memoryview(b"")
        pos = 0
        body = bytearray()
        with _writer(pages_path) as out:
            for e in pagemap.entries:
                vaddr, n, size = e.vaddr, e.nr_pages, e.nr_pages * PAGE_SIZE
                if e.present:
                    if pos + size > len(own):
                        raise ImageFormatError(f"{pages_path.name} is shorter than its pagemap")
                    out.write(own[pos : pos + size])
                    pos += size
                elif e.flags & PE_PARENT:
                    for part in old.pages(vaddr, n):
                        out.write(part)
                    copied += n
                else:
                    raise ImageFormatError(f"{pm.name}: the entry at {vaddr:#x} is neither present nor in the parent")
                entry = _entry(vaddr, n, e.wide)
                body += struct.pack("<I", len(entry)) + entry
        with _writer(pm) as out:
            head = pagemap.head
            out.write(struct.pack("<III", IMG_COMMON_MAGIC, PAGEMAP_MAGIC, len(head)) + head + body)
    link = images / PARENT_LINK
    if link.is_symlink():
        link.unlink()
    return copied


@contextmanager
def _writer(path: Path) -> Iterator:
    """A file written beside path and renamed over it once complete (never half-replaced)."""
    tmp = path.with_name(path.name + ".flat")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
