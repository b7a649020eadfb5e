"""A checkpoint's image set for a lazy restore: every image but the page data written out whole,
the page data served page by page from the packs, never reassembled.

PageImages(store, s, checkpoint_id), made under the store's lock, reads the chunk lists, finds
the frame of every page (the catalog's frames rows, one per 64 pages; chunk rows only for pages
no uniform frame covers), and checks, before anything of a pod changes, that every chunk is
indexed and every frame lies inside a pack that is here. It maps the packs, so a garbage
collection that rewrites one later does not pull it away. Then:

  write_whole(dir)               every image that is not page data, whole (0600 files)
  write_pages(dir, name, runs)   a pages file of its full size, sparse, holding only the runs
  read(name, page, n)            n pages from page `page` of a pages file (views into
                                 decompressed frames, whose zstd checksums are checked then)
  prefetch(name, page, n)        the same frames decompressed ahead on worker threads

What it costs before a restore does not grow with the memory: a few vectorised passes over the
chunk ids and one frame row per 64 pages (numpy; a 1 GiB pod has 262,144 pages).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from catalog.chunks import PAGE, ChunkIndex
from zapckpt.store import StoreError
from zapckpt.store.packs import WORKERS, FrameReader, write_all

if TYPE_CHECKING:
    from zapckpt.store.layout import StoreLayout

RUN_GAP = 4096  # chunk ids this far apart are looked up in one range of frame rows
CACHE_BYTES = 96 << 20  # decompressed frames kept (a frame is 256 KiB of pages)
WRITE_PAGES = 16384  # pages read and written at a time by write_pages (64 MiB)


def is_pages(name: str) -> bool:
    return name.startswith("pages-") and name.endswith(".img")


class PageFile:
    """Where each page of one pages-*.img is: its frame (an index into PageImages.frames) and
    its byte offset in that frame once decompressed."""

    __slots__ = ("name", "size", "frame", "start")

    def __init__(self, name: str, size: int, frame: np.ndarray, start: np.ndarray):
        self.name, self.size, self.frame, self.start = name, size, frame, start

    @property
    def pages(self) -> int:
        return len(self.frame)


class PageImages:
    def __init__(self, store: StoreLayout, s: Session, checkpoint_id: str):
        index = ChunkIndex(s)
        files = index.files(checkpoint_id)
        page_ids = {n: np.frombuffer(ids, dtype=np.int64) for n, raw, ids in files
                    if is_pages(n) and raw == len(ids) * PAGE}  # fmt: skip
        self.sizes = {n: raw for n, raw, _ids in files}
        self.whole = {n: ids for n, _raw, ids in files if n not in page_ids}

        # Uniform frames around the page chunks' ids: one row per frame, arithmetic for the rest.
        every = np.unique(np.concatenate(list(page_ids.values()))) if page_ids else np.zeros(0, np.int64)
        rows = index.frames_near(_runs(every))
        bases = np.array([r.base for r in rows], dtype=np.int64)
        lasts = np.array([r.last for r in rows], dtype=np.int64)
        self.frames: list[tuple[str, int, int]] = [(r.pack, r.offset, r.length) for r in rows]
        at = np.searchsorted(bases, every, side="right") - 1
        covered = (at >= 0) & (every <= lasts[np.maximum(at, 0)]) if len(rows) else np.zeros(len(every), bool)
        # Pages in other frames, and every whole image's chunks: one row per chunk.
        loose = {int(i) for i in every[~covered]} | {int(i) for ids in self.whole.values() for i in ids}
        loc = index.locations(loose)
        missing = loose - loc.keys()
        if missing:
            raise StoreError(f"{len(missing)} chunk(s) of its image set are missing from the index "
                             f"(chunk {min(missing)}, ...)")  # fmt: skip
        frame_no: dict[tuple[str, int], int] = {}
        for c in loc.values():
            if (c.pack, c.offset) not in frame_no:
                frame_no[(c.pack, c.offset)] = len(self.frames)
                self.frames.append((c.pack, c.offset, c.length))
        self.loose = {cid: (frame_no[(c.pack, c.offset)], c.start, c.raw_length) for cid, c in loc.items()}

        self.files: dict[str, PageFile] = {}
        for name, ids in page_ids.items():
            at = np.searchsorted(bases, ids, side="right") - 1 if len(rows) else np.full(len(ids), -1)
            ok = (at >= 0) & (ids <= lasts[np.maximum(at, 0)]) if len(rows) else np.zeros(len(ids), bool)
            frame = np.where(ok, at, -1).astype(np.int32)
            start = np.where(ok, (ids - bases[np.maximum(at, 0)]) * PAGE, 0) if len(rows) else np.zeros(len(ids), np.int64)
            for k in np.flatnonzero(~ok):
                f, st, raw = self.loose[int(ids[k])]
                if raw != PAGE:
                    raise StoreError(f"{name}: chunk {int(ids[k])} is not one page")
                frame[k], start[k] = f, st
            self.files[name] = PageFile(name, self.sizes[name], frame, start.astype(np.int64))

        # Every frame inside a pack that is here, mapped now (a remote store's packs are fetched
        # whole and checked against their sha256 by the caller, store.fetched).
        self.reader = FrameReader(store.pack_path)
        ends: dict[str, int] = {}
        for pack, off, ln in self.frames:
            ends[pack] = max(ends.get(pack, 0), off + ln)
        try:
            for pack, end in ends.items():
                mm = self.reader.open(pack)
                if len(mm) < end:
                    raise StoreError(f"pack {pack} is truncated ({len(mm)} bytes, a frame ends at {end})")
        except BaseException:
            self.reader.close()
            raise
        self.cache: OrderedDict[int, memoryview] = OrderedDict()
        self.cached = 0
        self.lock = threading.Lock()
        self.pending: dict[int, Future] = {}
        self.workers: ThreadPoolExecutor | None = None

    # --- the images written out ------------------------------------------------------------
    def write_whole(self, target: Path) -> None:
        """Every image that is not page data, whole, into target (made 0700)."""
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, ids in self.whole.items():
            parts = []
            for cid in ids:
                f, st, raw = self.loose[cid]
                parts.append(self._frame(f)[st : st + raw])
            with _create(target / name) as out:
                write_all(out.fileno(), parts)
                if out.tell() != self.sizes[name]:
                    raise StoreError(f"{name} reassembled to the wrong size")

    def write_pages(self, target: Path, name: str, runs: list[tuple[int, int]]) -> int:
        """The pages file `name` at its full size, holding only the pages of runs [(first page,
        count)] (the rest a hole, read by nobody: the lazy pages come from the page server);
        returns the pages written."""
        written = 0
        with _create(target / name) as out:
            out.truncate(self.sizes[name])
            for first, n in runs:
                for at in range(first, first + n, WRITE_PAGES):
                    take = min(WRITE_PAGES, first + n - at)
                    os.lseek(out.fileno(), at * PAGE, os.SEEK_SET)
                    write_all(out.fileno(), self.read(name, at, take))
                written += n
        return written

    # --- pages, for the page server -------------------------------------------------------------
    def read(self, name: str, first: int, n: int) -> list[memoryview]:
        """Pages [first, first + n) of a pages file, as slices of decompressed frames (a run of
        pages side by side in one frame is one slice)."""
        pf = self.files[name]
        if first < 0 or n <= 0 or first + n > pf.pages:
            raise StoreError(f"{name}: pages {first}-{first + n - 1} lie outside it ({pf.pages} pages)")
        frames = pf.frame[first : first + n]
        starts = pf.start[first : first + n]
        cut = np.flatnonzero((frames[1:] != frames[:-1]) | (starts[1:] != starts[:-1] + PAGE)) + 1
        out = []
        lo = 0
        for hi in [*cut.tolist(), n]:
            frame = self._frame(int(frames[lo]))
            st = int(starts[lo])
            end = st + (hi - lo) * PAGE
            if end > len(frame):
                raise StoreError(f"{name}: a page lies outside its frame in pack {self.frames[int(frames[lo])][0]}")
            out.append(frame[st:end])
            lo = hi
        return out

    def prefetch(self, name: str, first: int, n: int) -> None:
        """Decompress the frames of these pages ahead, on worker threads."""
        pf = self.files.get(name)
        if pf is None or first >= pf.pages:
            return
        wanted = dict.fromkeys(pf.frame[first : min(first + n, pf.pages)].tolist())
        with self.lock:
            if self.workers is None:
                self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="zap-pages")
            for f in wanted:
                if f not in self.cache and f not in self.pending:
                    self.pending[f] = self.workers.submit(self._decompress, f)

    def _decompress(self, f: int) -> memoryview:
        pack, off, ln = self.frames[f]
        return self.reader.get(pack, off, ln, f"the frame at {off}")

    def _frame(self, f: int) -> memoryview:
        with self.lock:
            frame = self.cache.get(f)
            if frame is not None:
                self.cache.move_to_end(f)
                return frame
            fut = self.pending.get(f)
        frame = fut.result() if fut is not None else self._decompress(f)
        with self.lock:
            self.pending.pop(f, None)
            if f not in self.cache:
                self.cache[f] = frame
                self.cached += len(frame)
                while self.cached > CACHE_BYTES and len(self.cache) > 1:
                    _k, old = self.cache.popitem(last=False)
                    self.cached -= len(old)
        return frame

    def quiesce(self) -> None:
        """No worker thread left (before a fork: the copy starts its own when it prefetches)."""
        with self.lock:
            workers, self.workers = self.workers, None
            self.pending.clear()
        if workers is not None:
            workers.shutdown(wait=True)

    def close(self) -> None:
        self.quiesce()
        with self.lock:
            self.cache.clear()
        self.reader.close()


def _runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted ids as [(first, last)] ranges, cut where two ids lie more than RUN_GAP apart."""
    if not len(ids):
        return []
    cut = np.flatnonzero(np.diff(ids) > RUN_GAP) + 1
    firsts = ids[np.concatenate(([0], cut))]
    lasts = ids[np.concatenate((cut - 1, [len(ids) - 1]))]
    return list(zip(firsts.tolist(), lasts.tolist()))


def _create(path: Path):
    # 0600: process memory, for root's eyes only
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return open(fd, "wb", buffering=0)
