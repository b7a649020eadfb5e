"""Reading CRIU's image files (what zap needs of them, without CRIU's protobuf definitions).

Image framing (criu/image.c, criu/protobuf.c): a u32 magic (IMG_COMMON_MAGIC, or
IMG_SERVICE_MAGIC for service images such as stats), the image's own u32 magic, then entries,
each a little-endian u32 length followed by that many bytes of protobuf."""

from __future__ import annotations

import os
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
FILE_LOCKS_MAGIC = 0x54323616
PSTREE_MAGIC = 0x50273030
CORE_MAGIC = 0x55053847
REMAP_FPATH_MAGIC = 0x59133954
MM_MAGIC = 0x57492820
FD_REG = 1
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


def _put_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Every field in order, (number, wire type, value: an int for varints, the bytes otherwise),
    for rewriting one field and encoding the rest unchanged (encode)."""
    out: list[tuple[int, int, object]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = buf[i : i + n], i + n
        else:
            raise ImageFormatError(f"unsupported protobuf wire type {wt}")
        out.append((num, wt, v))
    return out


def encode(fields_: list[tuple[int, int, object]]) -> bytes:
    out = bytearray()
    for num, wt, v in fields_:
        out += _put_varint(num << 3 | wt)
        if wt == 0:
            out += _put_varint(v)  # type: ignore[arg-type]
        elif wt == 2:
            out += _put_varint(len(v)) + v  # type: ignore[arg-type,operator]
        else:
            out += v  # type: ignore[operator]
    return bytes(out)


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


@dataclass(frozen=True)
class UnixSocket:
    ino: int  # the socket's own inode (sockfs), as sock_diag names it
    name: bytes  # the address it was bound to ("" for none; a leading NUL: abstract)
    name_dir: str | None  # where a relative name was bound
    deleted: bool  # its socket file was unlinked (CRIU restores it as a ghost)


def unix_sockets(images: Path) -> list[UnixSocket]:
    out = []
    for sk in _file_entries(images, FD_UNIXSK, 16):
        name = sk.get(11, b"")
        nd = sk.get(14)
        out.append(UnixSocket(ino=int(sk.get(2, 0)), name=name if isinstance(name, bytes) else b"",
                              name_dir=nd.decode(errors="surrogateescape") if isinstance(nd, bytes) else None,
                              deleted=bool(sk.get(15))))  # fmt: skip
    return out


def rename_unix_sockets(images: Path, renames: dict[bytes, bytes]) -> int:
    """Rewrite files.img so that the unix sockets bound to each old name are bound to its new
    (absolute) name at restore; returns how many entries changed."""
    path = images / "files.img"
    data = path.read_bytes()
    out = bytearray(data[:8])
    changed = 0
    for raw in entries(data, FILES_MAGIC):
        f = raw_fields(raw)
        for k, (num, wt, v) in enumerate(f):
            if num != 16 or wt != 2 or not any(n == 1 and val == FD_UNIXSK for n, _, val in f):
                continue
            sk = raw_fields(v)  # type: ignore[arg-type]
            name = next((val for n, _, val in sk if n == 11), None)
            if name in renames:
                sk = [(n, w, renames[name] if n == 11 else val) for n, w, val in sk if n != 14]
                f[k] = (num, wt, encode(sk))
                raw = encode(f)
                changed += 1
        out += struct.pack("<I", len(raw)) + raw
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(bytes(out))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    return changed


def bound_unix_sockets(images: Path) -> list[str]:
    """The absolute paths the dumped unix sockets are bound to, as the processes named them
    (for a chrooted process: relative to its root)."""
    out = set()
    for sk in _file_entries(images, FD_UNIXSK, 16):
        name = sk.get(11)
        if isinstance(name, bytes) and name.startswith(b"/"):
            out.add(name.split(b"\0", 1)[0].decode(errors="surrogateescape"))
    return sorted(out)


@dataclass(frozen=True)
class FileLock:
    """One entry of filelocks.img: a lock a dumped process held, through descriptor fd."""

    style: int  # FL_POSIX, FL_FLOCK, FL_OFD, FL_LEASE
    type: int  # F_RDLCK 0, F_WRLCK 1
    pid: int  # inside the pod
    fd: int
    start: int
    length: int  # 0: to the end of the file


FL_POSIX = 1
TASK_STOPPED = 3  # core.proto task_state (compel's task states)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def file_locks(images: Path) -> list[FileLock]:
    """The file locks the dumped processes held (`--file-locks`), as CRIU recorded them."""
    try:
        data = (images / "filelocks.img").read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for raw in entries(data, FILE_LOCKS_MAGIC):
        f = fields(raw)
        out.append(FileLock(style=int(f.get(1, 0)), type=int(f.get(2, 0)), pid=int(f.get(3, 0)),
                            fd=int(f.get(4, 0)), start=_signed64(int(f.get(5, 0))), length=_signed64(int(f.get(6, 0)))))  # fmt: skip
    return out


def stopped_tasks(images: Path) -> set[int]:
    """Pids (inside the pod) of the processes that were stopped (SIGSTOP, a job-control stop)
    when they were dumped: a restore leaves them stopped."""
    out = set()
    try:
        tree = list(entries((images / "pstree.img").read_bytes(), PSTREE_MAGIC))
    except FileNotFoundError:
        return out
    for raw in tree:
        pid = int(fields(raw).get(1, 0))
        try:
            core = fields(next(entries((images / f"core-{pid}.img").read_bytes(), CORE_MAGIC)))
        except (FileNotFoundError, StopIteration):
            continue
        tc = core.get(3)
        if isinstance(tc, bytes) and fields(tc).get(1) == TASK_STOPPED:
            out.add(pid)
    return out


def link_remaps(images: Path) -> list[str]:
    """The hard links `--link-remap` made for files the processes hold whose name was unlinked
    but whose inode lives on under another (glibc's sem_open); paths as CRIU saw them. A dump
    that leaves the tasks running removes them again; one with --leave-stopped leaves them
    until a restore."""
    try:
        data = (images / "remap-fpath.img").read_bytes()
    except FileNotFoundError:
        return []
    ids = {int(f.get(2, 0)) for f in map(fields, entries(data, REMAP_FPATH_MAGIC)) if f.get(3, 0) == 0}
    out = []
    for raw in entries((images / "files.img").read_bytes(), FILES_MAGIC):
        f = fields(raw)
        reg = f.get(3)
        if f.get(1) == FD_REG and f.get(2) in ids and isinstance(reg, bytes):
            name = fields(reg).get(6)
            if isinstance(name, bytes):
                out.append(name.decode(errors="surrogateescape"))
    return out


# VmaEntry.status (criu/include/image.h), mmap flags
VMA_FILE_PRIVATE = 1 << 6
VMA_ANON_PRIVATE = 1 << 9
MAP_NORESERVE = 0x4000


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    flags: int  # mmap flags
    status: int  # CRIU's VMA_* bits

    @property
    def private(self) -> bool:
        return bool(self.status & (VMA_FILE_PRIVATE | VMA_ANON_PRIVATE))


def vmas(path: Path) -> list[Vma]:
    """The memory areas of one dumped process (mm-<pid>.img)."""
    entry = next(entries(path.read_bytes(), MM_MAGIC), None)
    if entry is None:
        return []
    out = []
    for num, wt, raw in raw_fields(entry):
        if num == 14 and wt == 2:
            f = fields(raw)  # type: ignore[arg-type]
            out.append(Vma(int(f.get(1, 0)), int(f.get(2, 0)), int(f.get(6, 0)), int(f.get(7, 0))))
    return out
