"""Reading image sets back: a whole set into a directory for CRIU (materialize), or ranges of one
file for the history view (ImageReader). zstd's checksums catch damaged frames."""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from catalog.chunks import ChunkIndex, ChunkLocation
from zapckpt.store import StoreError
from zapckpt.store.packs import WORKERS, FrameReader, write_all

if TYPE_CHECKING:
    from zapckpt.store.layout import StoreLayout

READ_AHEAD = 4 * WORKERS  # frames being decompressed ahead of the writer
WRITE_BATCH = 4 << 20  # bytes per writev


def materialize(store: StoreLayout, s: Session, checkpoint_id: str, target: Path) -> int:
    """Reassemble the image set into target (tmpfs, 0600 files); returns the bytes written."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    index = ChunkIndex(s)
    files = index.files(checkpoint_id)
    loc = index.locations({i for _, _, ids in files for i in ids})
    frames = FrameReader(store.pack_path)
    packs = {c.pack for c in loc.values()}
    with store.fetched(index.pack_digests(packs)):  # a remote store's packs: here, checked, mapped
        for pack in sorted(packs):
            frames.open(pack)
    total = 0
    try:
        with ThreadPoolExecutor(WORKERS) as workers, ThreadPoolExecutor(1) as writer:
            for name, raw, ids in files:
                try:
                    where = [loc[cid] for cid in ids]
                except KeyError as e:
                    raise StoreError(f"{name}: chunk {e.args[0]} is missing from the index") from None
                total += _write_file(target / name, name, ids, where, frames, workers, writer)
                if (target / name).stat().st_size != raw:
                    raise StoreError(f"{name} reassembled to the wrong size")
    finally:
        frames.close()
    return total


def _write_file(path: Path, name: str, ids: array, where: list[ChunkLocation], frames: FrameReader,
                workers: ThreadPoolExecutor, writer: ThreadPoolExecutor) -> int:  # fmt: skip
    # Frames are decompressed ahead on worker threads (zstd runs without the GIL), in the order
    # this file first needs them; each is dropped after its last use.
    last_use: dict[tuple[str, int], int] = {}
    order: list[ChunkLocation] = []
    for i, c in enumerate(where):
        if (c.pack, c.offset) not in last_use:
            order.append(c)
        last_use[(c.pack, c.offset)] = i
    ahead: deque = deque()
    ready: dict[tuple[str, int], memoryview] = {}
    nxt = 0

    def top_up() -> None:
        nonlocal nxt
        while nxt < len(order) and len(ahead) < READ_AHEAD:
            c = order[nxt]
            frames.open(c.pack)
            ahead.append(((c.pack, c.offset), workers.submit(frames.get, c.pack, c.offset, c.length, f"{name}: a chunk")))
            nxt += 1

    # 0600: process memory, for root's eyes only
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb", buffering=0) as out:
        # Runs of chunks that sit side by side in one frame (most pages of an ingest) become one
        # slice; slices go out in one writev per ~4 MiB, on another thread, while the next ones
        # are cut.
        parts: list = []
        size = 0
        run = None  # (frame, start, end) of the run being extended
        writing = None
        try:
            for i, c in enumerate(where):
                key = (c.pack, c.offset)
                while key not in ready:
                    top_up()
                    k, fut = ahead.popleft()
                    ready[k] = fut.result()
                frame = ready[key]
                if c.start + c.raw_length > len(frame):
                    raise StoreError(f"{name}: chunk {ids[i]} lies outside its frame in pack {c.pack}")
                if run is not None and run[0] is frame and run[2] == c.start:
                    run = (frame, run[1], c.start + c.raw_length)
                else:
                    if run is not None:
                        parts.append(run[0][run[1] : run[2]])
                        size += run[2] - run[1]
                    run = (frame, c.start, c.start + c.raw_length)
                if last_use[key] == i:
                    del ready[key]
                if size >= WRITE_BATCH or len(parts) >= 512:
                    if writing is not None:
                        writing.result()
                    writing = writer.submit(write_all, out.fileno(), parts)
                    parts, size = [], 0
            if run is not None:
                parts.append(run[0][run[1] : run[2]])
            if writing is not None:
                writing.result()
            write_all(out.fileno(), parts)
            return out.tell()
        finally:
            for _k, fut in ahead:
                fut.cancel()


class ImageReader:
    """Reads ranges of one image file from its chunks (the history view's images/). Packs are
    mapped when the reader is made, so a garbage collection that rewrites them later does not
    pull the data away from an open file. read() may be called from several threads."""

    CACHED_FRAMES = 8

    def __init__(self, store: StoreLayout, s: Session, checkpoint_id: str, name: str):
        index = ChunkIndex(s)
        size, ids = index.file(checkpoint_id, name)
        loc = index.locations(set(ids))
        self.name, self.size = name, size
        self.starts = array("q")
        self.where: list[ChunkLocation] = []
        pos = 0
        for cid in ids:
            try:
                c = loc[cid]
            except KeyError:
                raise StoreError(f"{name}: chunk {cid} is missing from the index") from None
            self.starts.append(pos)
            self.where.append(c)
            pos += c.raw_length
        if pos != size:
            raise StoreError(f"{name}: its chunks add up to {pos} bytes, not {size}")
        self.frames = FrameReader(store.pack_path)
        packs = {c.pack for c in self.where}
        with store.fetched(index.pack_digests(packs)):
            for pack in packs:
                self.frames.open(pack)
        self.cache: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def _frame(self, c: ChunkLocation) -> memoryview:
        key = (c.pack, c.offset)
        frame = self.cache.get(key)
        if frame is None:
            frame = self.cache[key] = self.frames.get(c.pack, c.offset, c.length, f"{self.name}: a chunk")
            if len(self.cache) > self.CACHED_FRAMES:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return frame

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        parts = []
        with self.lock:
            i = bisect_right(self.starts, offset) - 1
            pos = offset
            while pos < end and 0 <= i < len(self.where):
                c = self.where[i]
                frame = self._frame(c)
                inner = pos - self.starts[i]
                take = min(c.raw_length - inner, end - pos)
                if c.start + c.raw_length > len(frame):
                    raise StoreError(f"{self.name}: a chunk lies outside its frame in pack {c.pack}")
                parts.append(frame[c.start + inner : c.start + inner + take])
                pos += take
                i += 1
        return b"".join(parts)

    def close(self) -> None:
        with self.lock:
            self.cache.clear()
            self.frames.close()
