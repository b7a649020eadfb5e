"""Reading CRIU's image files (what zap needs of them, without CRIU's protobuf definitions).

Image framing (criu/image.c, criu/protobuf.c): a u32 magic (IMG_COMMON_MAGIC, or
IMG_SERVICE_MAGIC for service images such as stats), the image's own u32 magic, then entries,
each a little-endian u32 length followed by that many bytes of protobuf."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306
PAGEMAP_MAGIC = 0x56084025
INVENTORY_MAGIC = 0x58313116
FILES_MAGIC = 0x56303138
FD_INETSK = 4  # fdinfo.proto fd_types
FD_UNIXSK = 5
TCP_LISTEN = 10  # the kernel's TCP state numbers, as CRIU stores them
SOCK_DGRAM = 2
PAGE_SIZE = 4096

# PagemapEntry.flags (images/pagemap.proto)
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2


class ImageFormatError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ImageFormatError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> dict[int, object]:
    """Minimal protobuf decoding: varints and length-delimited fields (last one wins)."""
    out: dict[int, object] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            out[num], i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            out[num] = buf[i : i + n]
            i += n
        elif wt == 5:
            i += 4
        elif wt == 1:
            i += 8
        else:
            raise ImageFormatError(f"unsupported protobuf wire type {wt}")
    return out


def entries(data: bytes, magic: int, head: int | None = IMG_COMMON_MAGIC) -> Iterator[bytes]:
    """The protobuf entries of one image file, after checking its two magics (one for the
    inventory, which has no head magic: head=None)."""
    if len(data) < 8:
        raise ImageFormatError("image too short")
    if head is None:
        (m1,) = struct.unpack_from("<I", data, 0)
        if m1 != magic:
            raise ImageFormatError(f"unexpected magic {m1:#x}")
        i = 4
    else:
        m1, m2 = struct.unpack_from("<II", data, 0)
        if (m1, m2) != (head, magic):
            raise ImageFormatError(f"unexpected magic {m1:#x}/{m2:#x}")
        i = 8
    while i < len(data):
        if i + 4 > len(data):
            raise ImageFormatError("truncated entry header")
        (n,) = struct.unpack_from("<I", data, i)
        i += 4
        if i + n > len(data):
            raise ImageFormatError("truncated entry")
        yield data[i : i + n]
        i += n


@dataclass
class DumpStats:
    freezing_ms: float | None = None
    frozen_ms: float | None = None
    memdump_ms: float | None = None
    memwrite_ms: float | None = None
    pages_scanned: int | None = None
    pages_skipped_parent: int | None = None  # an incremental dump: left in the pre-dump
    pages_written: int | None = None


def read_dump_stats(images: Path) -> DumpStats:
    """CRIU's own timings from stats-dump (microseconds in the image). frozen_time runs from the
    moment the whole tree is stopped until it is resumed, post-dump hook included."""
    try:
        entry = next(entries((images / "stats-dump").read_bytes(), STATS_MAGIC, IMG_SERVICE_MAGIC))
        dump = fields(entry).get(1)
        f = fields(dump) if isinstance(dump, bytes) else {}
    except (OSError, ImageFormatError, StopIteration):
        return DumpStats()
    ms = lambda k: f[k] / 1000.0 if k in f else None  # noqa: E731
    return DumpStats(freezing_ms=ms(1), frozen_ms=ms(2), memdump_ms=ms(3), memwrite_ms=ms(4), pages_scanned=f.get(5),
                     pages_skipped_parent=f.get(6), pages_written=f.get(7))  # fmt: skip


@dataclass(frozen=True)
class PagemapEntry:
    vaddr: int
    nr_pages: int
    flags: int
    wide: bool = False  # CRIU >= 4.2's layout: the count in field 5 (a uint64), 0 in field 2

    @property
    def present(self) -> bool:
        """Its pages are in the pages-N.img file (not in a parent image, not lazy)."""
        return bool(self.flags & PE_PRESENT)


@dataclass(frozen=True)
class Pagemap:
    pages_id: int
    entries: list[PagemapEntry]
    head: bytes = b""  # the head entry as stored, for writing the image again (incremental.py)

    def page_runs(self) -> Iterator[tuple[int, int, int]]:
        """(offset in pages-<pages_id>.img, length, vaddr) of each present run, in file order.
        The image store cuts page data at these boundaries, so a region that appears or
        disappears between two dumps does not shift the chunks of every region after it."""
        off = 0
        for e in self.entries:
            if e.present:
                n = e.nr_pages * PAGE_SIZE
                yield off, n, e.vaddr
                off += n


def read_pagemap(path: Path) -> Pagemap:
    it = entries(path.read_bytes(), PAGEMAP_MAGIC)
    try:
        raw_head = next(it)
    except StopIteration:
        raise ImageFormatError(f"{path.name}: no pagemap head") from None
    head = fields(raw_head)
    out = []
    for raw in it:
        f = fields(raw)
        # flags absent in old images: then in_parent (field 3) decides, else present.
        flags = f.get(4)
        if flags is None:
            flags = PE_PARENT if f.get(3) else PE_PRESENT
        # CRIU >= 4.2 writes the page count as a uint64 in field 5 (compat_nr_pages, field 2,
        # is then 0); older CRIUs only have field 2.
        out.append(PagemapEntry(vaddr=f.get(1, 0), nr_pages=f.get(5) or f.get(2, 0), flags=flags, wide=bool(f.get(5))))
    return Pagemap(pages_id=int(head.get(1, 0)), entries=out, head=raw_head)


def dump_run_id(images: Path) -> str | None:
    """The run id of the CRIU dump (inventory's dump_criu_run_id): CRIU names its network-lock
    table after it, `inet CRIU-<id>`."""
    try:
        entry = next(entries((images / "inventory.img").read_bytes(), INVENTORY_MAGIC, head=None))
    except (FileNotFoundError, StopIteration, ImageFormatError):
        return None
    raw = fields(entry).get(13)
    return raw.decode() if isinstance(raw, bytes) else None


def _file_entries(images: Path, fd_type: int, field: int) -> Iterator[dict[int, object]]:
    """The decoded sub-entries (e.g. the inet or unix socket part) of every file of one type in
    files.img."""
    try:
        data = (images / "files.img").read_bytes()
    except FileNotFoundError:
        return
    for raw in entries(data, FILES_MAGIC):
        f = fields(raw)
        sub = f.get(field)
        if f.get(1) == fd_type and isinstance(sub, bytes):
            yield fields(sub)


def listening_ports(images: Path) -> list[str]:
    """The TCP ports listened on and the UDP ports bound by the dumped processes, as
    "PORT/tcp" and "PORT/udp"."""
    out = set()
    for sk in _file_entries(images, FD_INETSK, 4):
        port = sk.get(7, 0)
        if sk.get(4) == SOCK_DGRAM and port:
            out.add(f"{port}/udp")
        elif sk.get(6) == TCP_LISTEN:
            out.add(f"{port}/tcp")
    return sorted(out)


def bound_unix_sockets(images: Path) -> list[str]:
    """The absolute paths the dumped unix sockets are bound to, as the processes named them
    (for a chrooted process: relative to its root)."""
    out = set()
    for sk in _file_entries(images, FD_UNIXSK, 16):
        name = sk.get(11)
        if isinstance(name, bytes) and name.startswith(b"/"):
            out.add(name.split(b"\0", 1)[0].decode(errors="surrogateescape"))
    return sorted(out)
