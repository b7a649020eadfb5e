"""The store's index in the catalog: the chunks, packs and image_files tables. This module is
the only code that reads or writes them; everything else works with ChunkLocation and the
methods below. Plain SQL on the session's own connection: an ingest adds thousands of rows and
a restore reads as many, which the ORM would make several times slower."""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Iterable, NamedTuple

import zstandard
from sqlalchemy.orm import Session

from zapckpt.store import StoreError


class ChunkLocation(NamedTuple):
    """Where one chunk is: a frame (a zstd frame at offset/length in a pack file) and the
    chunk's place inside that frame once decompressed."""

    pack_id: int
    pack: str  # the pack file's name
    offset: int  # of the frame in the pack
    length: int  # of the frame (compressed)
    start: int  # of the chunk in the decompressed frame
    raw_length: int  # of the chunk


class NewChunk(NamedTuple):
    """A chunk just written to a new pack, not yet indexed."""

    hash: bytes
    offset: int
    length: int
    start: int
    raw_length: int


def encode_ids(ids: list[int]) -> bytes:
    """A checkpoint file's chunk ids, in order, as stored in image_files.chunk_ids."""
    return zstandard.ZstdCompressor(level=3).compress(array("q", ids).tobytes())


def decode_ids(blob: bytes) -> array:
    a = array("q")
    try:
        a.frombytes(zstandard.ZstdDecompressor().decompress(blob))
    except zstandard.ZstdError as e:
        raise StoreError(f"chunk list damaged ({e})") from None
    return a


class ChunkIndex:
    def __init__(self, s: Session):
        self.cur = s.connection().connection.cursor()

    # --- ingest ------------------------------------------------------------------------------
    def known_hashes(self) -> dict[bytes, int]:
        return dict(self.cur.execute("SELECT hash, id FROM chunks"))

    def add_pack(self, name: str, size: int, chunks: list[NewChunk]) -> dict[bytes, int]:
        """Index a new pack and its chunks (reference count 0); returns their ids by hash."""
        if not chunks:
            return {}
        cur = self.cur
        cur.execute("INSERT INTO packs (name, size, created_at) VALUES (?, ?, datetime('now'))", (name, size))
        pack_id = cur.lastrowid
        base = (cur.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()[0]) + 1
        cur.executemany(
            "INSERT INTO chunks (id, hash, pack_id, offset, length, start, raw_length, refcount) VALUES (?,?,?,?,?,?,?,0)",
            [(base + i, c.hash, pack_id, c.offset, c.length, c.start, c.raw_length) for i, c in enumerate(chunks)],
        )
        return {c.hash: base + i for i, c in enumerate(chunks)}

    def add_files(self, checkpoint_id: str, files: list[tuple[str, int, list[int]]]) -> None:
        """A checkpoint's image files (name, size, chunk ids in order), counting the references."""
        counts: Counter = Counter()
        rows = []
        for name, raw, ids in files:
            counts.update(ids)
            rows.append((checkpoint_id, name, raw, encode_ids(ids)))
        self.cur.executemany("INSERT INTO image_files (checkpoint_id, name, raw_bytes, chunk_ids) VALUES (?,?,?,?)", rows)
        self.cur.executemany("UPDATE chunks SET refcount = refcount + ? WHERE id = ?", [(n, i) for i, n in counts.items()])

    # --- reading -----------------------------------------------------------------------------
    def files(self, checkpoint_id: str) -> list[tuple[str, int, array]]:
        """(name, size, chunk ids) of each image file of a checkpoint."""
        rows = self.cur.execute(
            "SELECT name, raw_bytes, chunk_ids FROM image_files WHERE checkpoint_id = ? ORDER BY name", (checkpoint_id,)
        ).fetchall()
        if not rows:
            raise StoreError("its image set is missing from the catalog")
        return [(n, raw, decode_ids(blob)) for n, raw, blob in rows]

    def file(self, checkpoint_id: str, name: str) -> tuple[int, array]:
        row = self.cur.execute(
            "SELECT raw_bytes, chunk_ids FROM image_files WHERE checkpoint_id = ? AND name = ?", (checkpoint_id, name)
        ).fetchone()
        if row is None:
            raise StoreError(f"{name} is not in the image set")
        return row[0], decode_ids(row[1])

    def sizes(self, checkpoint_id: str) -> list[tuple[str, int]]:
        """(name, size) of a checkpoint's image files; none for a files-only checkpoint."""
        return self.cur.execute(
            "SELECT name, raw_bytes FROM image_files WHERE checkpoint_id = ? ORDER BY name", (checkpoint_id,)
        ).fetchall()

    def chunk_ids(self, checkpoint_id: str) -> set[int]:
        ids: set[int] = set()
        for _n, _r, chunk_ids in self.files(checkpoint_id):
            ids.update(chunk_ids)
        return ids

    def locations(self, ids: Iterable[int]) -> dict[int, ChunkLocation]:
        cur = self.cur
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS want (id INTEGER PRIMARY KEY)")
        cur.execute("DELETE FROM want")
        cur.executemany("INSERT OR IGNORE INTO want (id) VALUES (?)", ((i,) for i in ids))
        rows = cur.execute(
            "SELECT c.id, c.pack_id, p.name, c.offset, c.length, c.start, c.raw_length FROM want w "
            "JOIN chunks c ON c.id = w.id JOIN packs p ON p.id = c.pack_id"
        ).fetchall()
        cur.execute("DELETE FROM want")
        return {r[0]: ChunkLocation(*r[1:]) for r in rows}

    def hashes(self, ids: Iterable[int]) -> dict[int, bytes]:
        out = {}
        for cid in ids:
            row = self.cur.execute("SELECT hash FROM chunks WHERE id = ?", (cid,)).fetchone()
            if row:
                out[cid] = row[0]
        return out

    def pack_names(self) -> set[str]:
        return {n for (n,) in self.cur.execute("SELECT name FROM packs")}

    # --- releasing and collecting -------------------------------------------------------------
    def release(self, checkpoint_id: str) -> None:
        """Drop a checkpoint's references and its image_files rows."""
        counts: Counter = Counter()
        for (blob,) in self.cur.execute("SELECT chunk_ids FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,)):
            counts.update(decode_ids(blob))
        self.cur.executemany("UPDATE chunks SET refcount = refcount - ? WHERE id = ?", [(n, i) for i, n in counts.items()])
        self.cur.execute("DELETE FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,))

    def packs_with_garbage(self) -> list[tuple[int, str, int]]:
        """(id, name, size) of every pack holding at least one unreferenced chunk."""
        return self.cur.execute(
            "SELECT id, name, size FROM packs WHERE id IN (SELECT DISTINCT pack_id FROM chunks WHERE refcount <= 0)"
        ).fetchall()

    def live_chunks(self, pack_id: int) -> list[tuple[int, int, int]]:
        """(chunk id, frame offset, frame length) of a pack's referenced chunks, in pack order."""
        return self.cur.execute(
            "SELECT id, offset, length FROM chunks WHERE pack_id = ? AND refcount > 0 ORDER BY offset", (pack_id,)
        ).fetchall()

    def forget_garbage(self, pack_id: int) -> None:
        self.cur.execute("DELETE FROM chunks WHERE pack_id = ? AND refcount <= 0", (pack_id,))

    def pack_rewritten(self, pack_id: int, new_name: str, size: int, moved: list[tuple[int, int]]) -> None:
        """The pack's live chunks now sit in new_name: [(new frame offset, chunk id)]."""
        self.cur.execute("UPDATE packs SET name = ?, size = ? WHERE id = ?", (new_name, size, pack_id))
        self.cur.executemany("UPDATE chunks SET offset = ? WHERE id = ?", moved)

    def forget_pack(self, pack_id: int) -> None:
        self.cur.execute("DELETE FROM packs WHERE id = ?", (pack_id,))

    # --- accounting ---------------------------------------------------------------------------
    def usage(self) -> dict:
        cur = self.cur
        raw_live, n = cur.execute("SELECT COALESCE(SUM(raw_length),0), COUNT(*) FROM chunks WHERE refcount > 0").fetchone()
        (live,) = cur.execute(
            "SELECT COALESCE(SUM(length),0) FROM (SELECT DISTINCT pack_id, offset, length FROM chunks WHERE refcount > 0)"
        ).fetchone()
        packs = cur.execute("SELECT COALESCE(SUM(size),0), COUNT(*) FROM packs").fetchone()
        return {"chunks": n, "chunk_bytes": live, "chunk_raw_bytes": raw_live, "pack_bytes": packs[0], "packs": packs[1]}

    def frames(self) -> dict[int, tuple[int, int, int]]:
        """chunk id -> (pack id, frame offset, frame length), for sharing accounting (df)."""
        return {i: (p, o, ln) for i, p, o, ln in self.cur.execute("SELECT id, pack_id, offset, length FROM chunks")}

    def recount(self) -> list[tuple[int, int, int]]:
        """[(chunk id, stored count, actual references)] wherever they differ."""
        actual: Counter = Counter()
        for (blob,) in self.cur.execute("SELECT chunk_ids FROM image_files"):
            actual.update(decode_ids(blob))
        return [(cid, stored, actual.get(cid, 0)) for cid, stored in self.cur.execute("SELECT id, refcount FROM chunks")
                if stored != actual.get(cid, 0)]  # fmt: skip
