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
  write_index(dir)               where every page is, for zap's page server (criu/pageserver.c),
                                 which reads the packs through the descriptors held here (pack_fds)

What it costs before a restore does not grow with the memory: a few vectorised passes over the
chunk ids and one frame row per 64 pages (numpy; a 1 GiB pod has 262,144 pages).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from catalog.chunks import PAGE, ChunkIndex
from zapckpt.store import StoreError
from zapckpt.store.packs import FrameReader, write_all

if TYPE_CHECKING:
    from zapckpt.store.layout import StoreLayout

RUN_GAP = 4096  # chunk ids this far apart are looked up in one range of frame rows
CACHE_BYTES = 32 << 20  # decompressed frames kept while the images are written out
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

        # Every frame inside a pack that is here, mapped now and held open (a remote store's
        # packs are fetched whole and checked against their sha256 by the caller, store.fetched):
        # a garbage collection that rewrites one later does not pull it away.
        self.reader = FrameReader(store.pack_path)
        self.pack_fds: dict[str, int] = {}
        self.cache: OrderedDict[int, memoryview] = OrderedDict()
        self.cached = 0
        ends: dict[str, int] = {}
        for pack, off, ln in self.frames:
            ends[pack] = max(ends.get(pack, 0), off + ln)
        try:
            for pack, end in ends.items():
                mm = self.reader.open(pack)
                if len(mm) < end:
                    raise StoreError(f"pack {pack} is truncated ({len(mm)} bytes, a frame ends at {end})")
                self.pack_fds[pack] = os.open(store.pack_path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

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
        if n == 1:  # a fault: no array work
            f, st = int(pf.frame[first]), int(pf.start[first])
            frame = self._frame(f)
            if st + PAGE > len(frame):
                raise StoreError(f"{name}: a page lies outside its frame in pack {self.frames[f][0]}")
            return [frame[st : st + PAGE]]
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

    def _frame(self, f: int) -> memoryview:
        frame = self.cache.get(f)
        if frame is not None:
            self.cache.move_to_end(f)
            return frame
        pack, off, ln = self.frames[f]
        frame = self.cache[f] = self.reader.get(pack, off, ln, f"the frame at {off}")
        self.cached += len(frame)
        while self.cached > CACHE_BYTES and len(self.cache) > 1:
            _k, old = self.cache.popitem(last=False)
            self.cached -= len(old)
        return frame

    def write_index(self, target: Path) -> list[str]:
        """Where every page is, for zap's page server (criu/pageserver.c's INDEXDIR, the format
        it documents): the packs as the descriptors held here (/dev/fd/N: pass pack_fds to it),
        the frames, and per pages file its pages' frames and starts. Returns the pages files in
        their index order."""
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        packs = sorted({p for p, _o, _l in self.frames})
        number = {p: i for i, p in enumerate(packs)}
        (target / "packs").write_text("".join(f"/dev/fd/{self.pack_fds[p]}\n" for p in packs))
        table = np.zeros(len(self.frames), dtype=[("pack", "<u4"), ("length", "<u4"), ("offset", "<u8")])
        for i, (p, off, ln) in enumerate(self.frames):
            table[i] = (number[p], ln, off)
        table.tofile(target / "frames")
        names = sorted(self.files)
        (target / "files").write_text("".join(f"{n} {self.files[n].pages}\n" for n in names))
        for i, n in enumerate(names):
            pf = self.files[n]
            spots = np.empty(pf.pages, dtype=[("frame", "<u4"), ("start", "<u4")])
            spots["frame"], spots["start"] = pf.frame, pf.start
            spots.tofile(target / f"file-{i}")
        return names

    def close(self) -> None:
        self.cache.clear()
        self.reader.close()
        for fd in self.pack_fds.values():
            os.close(fd)
        self.pack_fds.clear()


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
