"""The content-addressed image store.

CRIU writes every page of the process at every dump (this kernel has no soft-dirty tracking),
so repeated checkpoints must be made cheap here. Page data (pages-*.img) is cut into page-sized
chunks (runs of the pagemap are page-aligned, so a chunk never straddles two runs); every other
image is one chunk. A chunk is identified by the sha256 of its content and stored once. New
chunks are compressed in groups (one zstd frame, with checksum, per GROUP chunks) on worker
threads while the main thread goes on hashing: a frame is large enough for zstd to run without
the GIL. A chunk's index row (chunks table) says which frame of which pack holds it and where
inside the frame it starts, with an exact reference count. Each checkpoint lists, per image file, the ids of its chunks in order
(image_files table). docs/image-store.md explains why chunks are one page.

Packs are written and fsynced before the catalog transaction that references them commits;
space of unreferenced chunks comes back when their pack is rewritten (collect_garbage).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import uuid
from array import array
from bisect import bisect_right
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import zstandard
from sqlalchemy.orm import Session

from zapckpt.criu.images import PAGE_SIZE, ImageFormatError, read_pagemap
from zapckpt.common.errors import ZapError
from zapckpt.system.locks import locked

CHUNK_PAGES = 1
GROUP = 64  # new chunks per zstd frame (256 KiB of pages)
WORKERS = 2  # compressing threads
WRITE_BUFFER = 8 << 20
MAX_FRAME = 1 << 30  # a frame is GROUP pages, or one whole small image  # pack writes: one syscall per 8 MiB, not per 4 KiB frame
SKIP = {"dump.log", "restore.log"}
LEVEL = 3


class StoreError(ZapError):
    pass


def _pack_ids(ids: list[int]) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(array("q", ids).tobytes())


def _unpack_ids(blob: bytes) -> array:
    a = array("q")
    try:
        a.frombytes(zstandard.ZstdDecompressor().decompress(blob))
    except zstandard.ZstdError as e:
        raise StoreError(f"chunk list damaged ({e})") from None
    return a


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pieces(path: Path, data: memoryview) -> Iterator[memoryview]:
    """How one image file is cut into chunks."""
    if path.name.startswith("pages-") and len(data) % PAGE_SIZE == 0:
        step = CHUNK_PAGES * PAGE_SIZE
        pm = path.with_name(path.name.replace("pages-", "pagemap-", 1))
        runs: Iterable[tuple[int, int]] = [(0, len(data))]
        try:
            pagemap = read_pagemap(pm) if pm.exists() else None
            if pagemap is not None and sum(n for _, n, _ in pagemap.page_runs()) == len(data):
                runs = [(off, n) for off, n, _ in pagemap.page_runs()]
        except (OSError, ImageFormatError):
            pass  # the pagemap belongs to another pages file: cut at plain page boundaries
        for off, n in runs:
            for o in range(off, off + n, step):
                yield data[o : min(o + step, off + n)]
    elif len(data):
        yield data


@dataclass
class PendingIngest:
    """An image set written to a new pack but not yet in the catalog."""

    store: "ChunkStore"
    pack_name: str
    pack_size: int
    new_chunks: list[tuple[bytes, int, int, int, int]]  # hash, frame offset, frame length, start, raw length
    files: list[tuple[str, int, list]] = field(default_factory=list)  # name, raw bytes, [id or hash]
    raw_bytes: int = 0
    stored_bytes: int = 0  # the new frames: what this image set added to the store

    def commit(self, s: Session, checkpoint_id: str) -> None:
        """Index the new chunks and the checkpoint's files; the caller's transaction commits."""
        cur = s.connection().connection.cursor()
        pack_id = None
        if self.new_chunks:
            cur.execute("INSERT INTO packs (name, size, created_at) VALUES (?, ?, datetime('now'))",
                        (self.pack_name, self.pack_size))  # fmt: skip
            pack_id = cur.lastrowid
            base = (cur.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()[0]) + 1
            cur.executemany(
                "INSERT INTO chunks (id, hash, pack_id, offset, length, start, raw_length, refcount) "
                "VALUES (?,?,?,?,?,?,?,0)",
                [(base + i, h, pack_id, off, ln, st, raw) for i, (h, off, ln, st, raw) in enumerate(self.new_chunks)],
            )
            new_ids = {h: base + i for i, (h, *_rest) in enumerate(self.new_chunks)}
        else:
            new_ids = {}
        counts: Counter = Counter()
        rows = []
        for name, raw, refs in self.files:
            ids = [r if isinstance(r, int) else new_ids[r] for r in refs]
            counts.update(ids)
            rows.append((checkpoint_id, name, raw, _pack_ids(ids)))
        cur.executemany("INSERT INTO image_files (checkpoint_id, name, raw_bytes, chunk_ids) VALUES (?,?,?,?)", rows)
        cur.executemany("UPDATE chunks SET refcount = refcount + ? WHERE id = ?", [(n, i) for i, n in counts.items()])

    def discard(self) -> None:
        self.store.pack_path(self.pack_name).unlink(missing_ok=True)


def _write_all(fd: int, parts: list) -> None:
    """writev, finishing a short write the slow way."""
    if not parts:
        return
    done = os.writev(fd, parts)
    want = sum(len(x) for x in parts)
    if done < want:
        os.write(fd, b"".join(parts)[done:])


class _FrameReader:
    """Reads and decompresses frames from mmapped packs. get() may run on worker threads:
    packs are opened beforehand by open(), on the calling thread."""

    def __init__(self, maps: dict, pack_path):
        self.maps, self.pack_path = maps, pack_path
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


class ChunkStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.packs = self.root / "packs"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Ingest, release and garbage collection change shared chunks: one at a time."""
        with locked(self.root / "store.lock", "the image store"):
            yield

    def pack_path(self, name: str) -> Path:
        return self.packs / name

    # --- ingest ------------------------------------------------------------------------------
    def ingest(self, s: Session, staging: Path) -> PendingIngest:
        """Chunk, deduplicate and compress the image set in staging into a new, fsynced pack.
        Call with the store lock held, and commit the result in the same lock."""
        self.packs.mkdir(parents=True, exist_ok=True)
        cur = s.connection().connection.cursor()
        known: dict[bytes, int] = dict(cur.execute("SELECT hash, id FROM chunks"))
        name = f"{uuid.uuid4().hex}.pack"
        path = self.pack_path(name)
        pending = PendingIngest(self, name, 0, [])
        seen: set[bytes] = set()
        sha = hashlib.sha256
        local = threading.local()

        def compress(pieces: list[memoryview]) -> bytes:
            cctx = getattr(local, "cctx", None)
            if cctx is None:
                cctx = local.cctx = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
            return cctx.compress(b"".join(pieces))

        offset = 0
        in_flight: deque = deque()  # (future frame, [(hash, start, raw length)]), in pack order

        def drain(keep: int) -> None:
            nonlocal offset
            while len(in_flight) > keep:
                fut, members = in_flight.popleft()
                frame = fut.result()
                pack.write(frame)
                for h, start, rawlen in members:
                    pending.new_chunks.append((h, offset, len(frame), start, rawlen))
                offset += len(frame)
                pending.stored_bytes += len(frame)

        try:
            with open(path, "wb", buffering=WRITE_BUFFER) as pack, ThreadPoolExecutor(WORKERS) as workers:
                group: list[memoryview] = []
                members: list[tuple[bytes, int, int]] = []
                start = 0

                def flush_group() -> None:
                    nonlocal group, members, start
                    if group:
                        in_flight.append((workers.submit(compress, group), members))
                        group, members, start = [], [], 0
                        drain(2 * WORKERS)

                for img in sorted(staging.iterdir()):
                    if img.name in SKIP or not img.is_file():
                        continue
                    size = img.stat().st_size
                    refs: list = []
                    with open(img, "rb") as f:
                        data = memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)) if size else memoryview(b"")
                    # data maps the tmpfs file; it is unmapped with the last view of it.
                    for piece in _pieces(img, data):
                        h = sha(piece).digest()
                        cid = known.get(h)
                        if cid is not None:
                            refs.append(cid)
                            continue
                        refs.append(h)
                        if h in seen:
                            continue
                        seen.add(h)
                        group.append(piece)
                        members.append((h, start, len(piece)))
                        start += len(piece)
                        if len(group) >= GROUP:
                            flush_group()
                    pending.files.append((img.name, size, refs))
                    pending.raw_bytes += size
                flush_group()
                drain(0)
                pack.flush()
                os.fsync(pack.fileno())
            pending.pack_size = offset
            if not pending.new_chunks:
                path.unlink()
            _fsync_dir(self.packs)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise StoreError(f"cannot store the image set in {self.packs}: {e.strerror or e}") from None
        return pending

    # --- reading -----------------------------------------------------------------------------
    def _files(self, s: Session, checkpoint_id: str) -> list[tuple[str, int, bytes]]:
        cur = s.connection().connection.cursor()
        rows = cur.execute(
            "SELECT name, raw_bytes, chunk_ids FROM image_files WHERE checkpoint_id = ? ORDER BY name", (checkpoint_id,)
        ).fetchall()
        if not rows:
            raise StoreError("its image set is missing from the catalog")
        return rows

    def _locations(self, s: Session, ids: Iterable[int]) -> dict[int, tuple[int, int, int, int, str, int]]:
        """chunk id -> (pack id, frame offset, frame length, raw length, pack name, start in frame)"""
        cur = s.connection().connection.cursor()
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS want (id INTEGER PRIMARY KEY)")
        cur.execute("DELETE FROM want")
        cur.executemany("INSERT OR IGNORE INTO want (id) VALUES (?)", ((i,) for i in ids))
        rows = cur.execute(
            "SELECT c.id, c.pack_id, c.offset, c.length, c.raw_length, p.name, c.start FROM want w "
            "JOIN chunks c ON c.id = w.id JOIN packs p ON p.id = c.pack_id"
        ).fetchall()
        cur.execute("DELETE FROM want")
        return {r[0]: r[1:] for r in rows}

    def materialize(self, s: Session, checkpoint_id: str, target: Path) -> int:
        """Reassemble the image set into target (tmpfs); zstd checksums catch damaged chunks."""
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = [(n, raw, _unpack_ids(blob)) for n, raw, blob in self._files(s, checkpoint_id)]
        loc = self._locations(s, {i for _, _, ids in files for i in ids})
        maps: dict[str, mmap.mmap] = {}
        frames = _FrameReader(maps, self.pack_path)
        total = 0
        try:
            with ThreadPoolExecutor(WORKERS) as workers, ThreadPoolExecutor(1) as writer:
                for name, raw, ids in files:
                    try:
                        where = [loc[cid] for cid in ids]
                    except KeyError as e:
                        raise StoreError(f"{name}: chunk {e.args[0]} is missing from the index") from None
                    # Frames are decompressed ahead on worker threads (zstd runs without the GIL),
                    # in the order this file first needs them; each is dropped after its last use.
                    last_use: dict[tuple[str, int], int] = {}
                    order: list[tuple[str, int, int]] = []
                    for i, (_p, off, ln, _r, pack, _s) in enumerate(where):
                        if (pack, off) not in last_use:
                            order.append((pack, off, ln))
                        last_use[(pack, off)] = i
                    ahead: deque = deque()
                    ready: dict[tuple[str, int], memoryview] = {}
                    nxt = 0

                    def top_up() -> None:
                        nonlocal nxt
                        while nxt < len(order) and len(ahead) < 4 * WORKERS:
                            pack, off, ln = order[nxt]
                            frames.open(pack)
                            ahead.append(((pack, off), workers.submit(frames.get, pack, off, ln, f"{name}: a chunk")))
                            nxt += 1

                    # 0600: process memory, for root's eyes only
                    fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    with open(fd, "wb", buffering=0) as out:
                        # Runs of chunks that sit side by side in one frame (most pages of an
                        # ingest) become one slice; slices go out in one writev per ~4 MiB, on
                        # another thread, while the next ones are cut.
                        parts: list = []
                        size = 0
                        cur = None  # (frame, start, end) of the run being extended
                        writing = None
                        for i, (_p, off, ln, rawlen, pack, start) in enumerate(where):
                            key = (pack, off)
                            while key not in ready:
                                top_up()
                                k, fut = ahead.popleft()
                                ready[k] = fut.result()
                            frame = ready[key]
                            if start + rawlen > len(frame):
                                raise StoreError(f"{name}: chunk {ids[i]} lies outside its frame in pack {pack}")
                            if cur is not None and cur[0] is frame and cur[2] == start:
                                cur = (frame, cur[1], start + rawlen)
                            else:
                                if cur is not None:
                                    parts.append(cur[0][cur[1] : cur[2]])
                                    size += cur[2] - cur[1]
                                cur = (frame, start, start + rawlen)
                            if last_use[key] == i:
                                del ready[key]
                            if size >= 4 << 20 or len(parts) >= 512:
                                if writing is not None:
                                    writing.result()
                                writing = writer.submit(_write_all, out.fileno(), parts)
                                parts, size = [], 0
                        if cur is not None:
                            parts.append(cur[0][cur[1] : cur[2]])
                        if writing is not None:
                            writing.result()
                        _write_all(out.fileno(), parts)
                        total += out.tell()
                        for _k, fut in ahead:
                            fut.cancel()
                    if (target / name).stat().st_size != raw:
                        raise StoreError(f"{name} reassembled to the wrong size")
        finally:
            for mm in maps.values():
                mm.close()
        return total

    def reader(self, s: Session, checkpoint_id: str, name: str) -> "ImageReader":
        """Random access to one stored image file, without reassembling the whole set."""
        cur = s.connection().connection.cursor()
        row = cur.execute(
            "SELECT raw_bytes, chunk_ids FROM image_files WHERE checkpoint_id = ? AND name = ?", (checkpoint_id, name)
        ).fetchone()
        if row is None:
            raise StoreError(f"{name} is not in the image set")
        ids = _unpack_ids(row[1])
        loc = self._locations(s, set(ids))
        return ImageReader(self, name, row[0], ids, loc)

    # --- releasing and collecting -------------------------------------------------------------
    def release(self, s: Session, checkpoint_id: str) -> None:
        """Drop a checkpoint's references (its image_files rows go with the checkpoint row)."""
        cur = s.connection().connection.cursor()
        counts: Counter = Counter()
        for (blob,) in cur.execute("SELECT chunk_ids FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,)):
            counts.update(_unpack_ids(blob))
        cur.executemany("UPDATE chunks SET refcount = refcount - ? WHERE id = ?", [(n, i) for i, n in counts.items()])
        cur.execute("DELETE FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,))

    def collect_garbage(self, s: Session) -> list[Path]:
        """Forget unreferenced chunks and rewrite the packs that held them. Returns the old pack
        files, to delete once the caller's transaction has committed."""
        cur = s.connection().connection.cursor()
        dead_packs = [r[0] for r in cur.execute("SELECT DISTINCT pack_id FROM chunks WHERE refcount <= 0")]
        old_files = []
        for pack_id in dead_packs:
            (pname,) = cur.execute("SELECT name FROM packs WHERE id = ?", (pack_id,)).fetchone()
            live = cur.execute(
                "SELECT id, offset, length FROM chunks WHERE pack_id = ? AND refcount > 0 ORDER BY offset", (pack_id,)
            ).fetchall()
            cur.execute("DELETE FROM chunks WHERE pack_id = ? AND refcount <= 0", (pack_id,))
            if live:
                # Frames with at least one live chunk are copied whole.
                new_name = f"{uuid.uuid4().hex}.pack"
                new_path = self.pack_path(new_name)
                moved, offset, where = [], 0, {}
                try:
                    with open(self.pack_path(pname), "rb") as src, open(new_path, "wb") as dst:
                        for cid, off, ln in live:
                            if off not in where:
                                dst.write(os.pread(src.fileno(), ln, off))
                                where[off] = offset
                                offset += ln
                            moved.append((where[off], cid))
                        dst.flush()
                        os.fsync(dst.fileno())
                    _fsync_dir(self.packs)
                except OSError as e:
                    new_path.unlink(missing_ok=True)
                    raise StoreError(f"cannot rewrite pack {pname}: {e.strerror or e}") from None
                cur.execute("UPDATE packs SET name = ?, size = ? WHERE id = ?", (new_name, offset, pack_id))
                cur.executemany("UPDATE chunks SET offset = ? WHERE id = ?", moved)
            else:
                cur.execute("DELETE FROM packs WHERE id = ?", (pack_id,))
            old_files.append(self.pack_path(pname))
        return old_files

    # --- accounting and verification -----------------------------------------------------------
    def usage(self, s: Session) -> dict:
        cur = s.connection().connection.cursor()
        raw_live, n = cur.execute(
            "SELECT COALESCE(SUM(raw_length),0), COUNT(*) FROM chunks WHERE refcount > 0"
        ).fetchone()
        (live,) = cur.execute(
            "SELECT COALESCE(SUM(length),0) FROM (SELECT DISTINCT pack_id, offset, length FROM chunks WHERE refcount > 0)"
        ).fetchone()
        packs = cur.execute("SELECT COALESCE(SUM(size),0), COUNT(*) FROM packs").fetchone()
        return {"chunks": n, "chunk_bytes": live, "chunk_raw_bytes": raw_live, "pack_bytes": packs[0], "packs": packs[1]}

    def chunk_ids(self, s: Session, checkpoint_id: str) -> set[int]:
        ids: set[int] = set()
        for _n, _r, blob in self._files(s, checkpoint_id):
            ids.update(_unpack_ids(blob))
        return ids

    def verify_chunks(self, s: Session, ids: set[int]) -> dict[int, str]:
        """Re-read and re-hash chunks; returns {chunk id: what is wrong} for the damaged ones."""
        cur = s.connection().connection.cursor()
        loc = self._locations(s, ids)
        hashes = {}
        for cid in ids:
            row = cur.execute("SELECT hash FROM chunks WHERE id = ?", (cid,)).fetchone()
            if row:
                hashes[cid] = row[0]
        bad: dict[int, str] = {}
        by_pack: dict[str, list[int]] = {}
        for cid in ids:
            if cid not in loc:
                bad[cid] = "missing from the index"
            else:
                by_pack.setdefault(loc[cid][4], []).append(cid)
        for pack, cids in by_pack.items():
            path = self.pack_path(pack)
            if not path.is_file():
                for cid in cids:
                    bad[cid] = f"pack {pack} is missing"
                continue
            reader = _FrameReader({}, self.pack_path)
            cached: tuple = (None, None)
            for cid in sorted(cids, key=lambda c: loc[c][1]):
                _p, off, ln, rawlen, _n, start = loc[cid]
                try:
                    frame = cached[1] if cached[0] == off else reader.get(pack, off, ln, f"chunk {cid}")
                    cached = (off, frame)
                except StoreError as e:
                    bad[cid] = str(e)
                    continue
                if start + rawlen > len(frame) or hashlib.sha256(frame[start : start + rawlen]).digest() != hashes[cid]:
                    bad[cid] = f"content does not match its hash (pack {pack})"
            for mm in reader.maps.values():
                mm.close()
        return bad

    def recount(self, s: Session) -> list[tuple[int, int, int]]:
        """Reference counts recomputed from every checkpoint's chunk lists versus the stored
        ones: [(chunk id, stored, actual)] for each mismatch."""
        cur = s.connection().connection.cursor()
        actual: Counter = Counter()
        for (blob,) in cur.execute("SELECT chunk_ids FROM image_files"):
            actual.update(_unpack_ids(blob))
        out = []
        for cid, stored in cur.execute("SELECT id, refcount FROM chunks"):
            if stored != actual.get(cid, 0):
                out.append((cid, stored, actual.get(cid, 0)))
        return out


class ImageReader:
    """Reads ranges of one image file from its chunks (the FUSE view's images/). Packs are
    mapped when the reader is made, so a garbage collection that rewrites them later does not
    pull the data away from an open file. read() may be called from several threads."""

    CACHED_FRAMES = 8

    def __init__(self, store: ChunkStore, name: str, size: int, ids: array, loc: dict):
        self.name, self.size = name, size
        self.starts = array("q")
        self.where: list[tuple[str, int, int, int, int]] = []  # pack, frame offset, frame length, start, raw length
        pos = 0
        for cid in ids:
            try:
                _p, off, ln, rawlen, pack, start = loc[cid]
            except KeyError:
                raise StoreError(f"{name}: chunk {cid} is missing from the index") from None
            self.starts.append(pos)
            self.where.append((pack, off, ln, start, rawlen))
            pos += rawlen
        if pos != size:
            raise StoreError(f"{name}: its chunks add up to {pos} bytes, not {size}")
        self.frames = _FrameReader({}, store.pack_path)
        for pack in {w[0] for w in self.where}:
            self.frames.open(pack)
        self.cache: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def _frame(self, pack: str, off: int, ln: int) -> memoryview:
        key = (pack, off)
        frame = self.cache.get(key)
        if frame is None:
            frame = self.cache[key] = self.frames.get(pack, off, ln, f"{self.name}: a chunk")
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
                pack, off, ln, start, rawlen = self.where[i]
                frame = self._frame(pack, off, ln)
                inner = pos - self.starts[i]
                take = min(rawlen - inner, end - pos)
                if start + rawlen > len(frame):
                    raise StoreError(f"{self.name}: a chunk lies outside its frame in pack {pack}")
                parts.append(frame[start + inner : start + inner + take])
                pos += take
                i += 1
        return b"".join(parts)

    def close(self) -> None:
        with self.lock:
            self.cache.clear()
            for mm in self.frames.maps.values():
                mm.close()
            self.frames.maps.clear()
