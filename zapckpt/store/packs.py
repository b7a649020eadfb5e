"""Pack files: the chunks' bytes. A pack is a sequence of zstd frames (with checksums), each
holding up to GROUP chunks back to back; new chunks are compressed on worker threads while the
caller goes on hashing (a 256 KiB frame is large enough for zstd to run without the GIL). Packs
are written once, fsynced, and only ever replaced whole (gc.py)."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard

from catalog.chunks import NewChunk
from zapckpt.store import StoreError

GROUP = 64  # new chunks per zstd frame (256 KiB of pages)
WORKERS = 2  # compressing (and, reading, decompressing) threads
WRITE_BUFFER = 8 << 20  # pack writes: one syscall per 8 MiB, not per 4 KiB frame
MAX_FRAME = 1 << 30  # a frame is GROUP pages, or one whole small image
# zstd level 1: on page data (random, or runs of patterns) it stores as small as level 3 does
# here for half the CPU (bench/overhead.py: 64 MiB of fresh pages, 56 -> 17-49 ms)
LEVEL = 1


def new_pack_name() -> str:
    return f"{uuid.uuid4().hex}.pack"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


IOV_MAX = 1024  # buffers one writev takes


def write_all(fd: int, parts: list) -> None:
    """writev, at most IOV_MAX buffers at a time, finishing a short write the slow way."""
    for i in range(0, len(parts), IOV_MAX):
        batch = parts[i : i + IOV_MAX]
        done = os.writev(fd, batch)
        want = sum(len(x) for x in batch)
        if done < want:
            os.write(fd, b"".join(batch)[done:])


class PackWriter:
    """Writes one new pack. add() each new chunk in order; finish() returns where they went,
    with the pack flushed and fsynced. The caller removes the file if anything fails."""

    def __init__(self, path: Path, digest: bool = True):
        self.path = path
        self.size = 0
        # sha256 of the pack, for a remote store's copies to be checked against (a local store's
        # packs are never copied: not computed, ~0.7 ms a MiB)
        self._sha = hashlib.sha256() if digest else None
        self.chunks: list[NewChunk] = []
        self._file = open(path, "wb", buffering=WRITE_BUFFER)
        self._workers = ThreadPoolExecutor(WORKERS)
        self._local = threading.local()
        self._group: list[memoryview] = []
        self._members: list[tuple[bytes, int, int]] = []  # hash, start in frame, length
        self._start = 0
        self._in_flight: deque = deque()  # (future frame, members), in pack order

    def _compress(self, pieces: list[memoryview]) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        return cctx.compress(b"".join(pieces))

    def _drain(self, keep: int) -> None:
        while len(self._in_flight) > keep:
            fut, members = self._in_flight.popleft()
            frame = fut.result()
            self._file.write(frame)
            if self._sha is not None:
                self._sha.update(frame)
            self.chunks.extend(NewChunk(h, self.size, len(frame), start, n) for h, start, n in members)
            self.size += len(frame)

    def _flush_group(self) -> None:
        if self._group:
            self._in_flight.append((self._workers.submit(self._compress, self._group), self._members))
            self._group, self._members, self._start = [], [], 0
            self._drain(2 * WORKERS)

    def add(self, h: bytes, piece: memoryview) -> None:
        self._group.append(piece)
        self._members.append((h, self._start, len(piece)))
        self._start += len(piece)
        if len(self._group) >= GROUP:
            self._flush_group()

    def finish(self) -> list[NewChunk]:
        self._flush_group()
        self._drain(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        return self.chunks

    @property
    def digest(self) -> str | None:
        """sha256 of what was written (after finish: of the whole pack); None if not computed."""
        return self._sha.hexdigest() if self._sha is not None else None

    def close(self) -> None:
        self._workers.shutdown(cancel_futures=True)
        self._file.close()

    def __enter__(self) -> "PackWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameReader:
    """Reads and decompresses frames from mmapped packs. get() may run on worker threads:
    packs are opened beforehand by open(), on the calling thread."""

    def __init__(self, pack_path):
        self.maps: dict[str, mmap.mmap] = {}
        self.pack_path = pack_path
        self.local = threading.local()

    def open(self, pack: str) -> mmap.mmap:
        mm = self.maps.get(pack)
        if mm is None:
            try:
                with open(self.pack_path(pack), "rb") as f:
                    mm = self.maps[pack] = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            except (OSError, ValueError) as e:
                raise StoreError(f"pack {pack} is missing or unreadable ({e})") from None
        return mm

    def get(self, pack: str, off: int, ln: int, what: str) -> memoryview:
        mm = self.maps[pack] if pack in self.maps else self.open(pack)
        if off + ln > len(mm):
            raise StoreError(f"{what} lies past the end of pack {pack} (truncated)")
        dctx = getattr(self.local, "dctx", None)
        if dctx is None:
            dctx = self.local.dctx = zstandard.ZstdDecompressor()
        try:
            return memoryview(dctx.decompress(mm[off : off + ln], max_output_size=MAX_FRAME))
        except zstandard.ZstdError as e:
            raise StoreError(f"{what} in pack {pack} is damaged ({e})") from None

    def close(self) -> None:
        for mm in self.maps.values():
            mm.close()
        self.maps.clear()


def copy_frames(src: Path, dst: Path, frames: list[tuple[int, int]]) -> tuple[dict[int, int], str]:
    """Copy the frames (offset, length) of pack src, in order and each once, into a new pack
    dst (fsynced); returns old offset -> new offset, and the new pack's sha256."""
    where: dict[int, int] = {}
    offset = 0
    sha = hashlib.sha256()
    with open(src, "rb") as s, open(dst, "wb") as d:
        for off, ln in frames:
            if off not in where:
                frame = os.pread(s.fileno(), ln, off)
                d.write(frame)
                sha.update(frame)
                where[off] = offset
                offset += ln
        d.flush()
        os.fsync(d.fileno())
    return where, sha.hexdigest()
