"""The image store's index: the chunks, packs and image_files tables. This module is the only
code that reads or writes them; the store (zapckpt/store/) works with ChunkLocation and the
methods below. Plain SQL on the session's own connection, for SQLite and PostgreSQL alike: an
ingest adds thousands of rows and a restore reads as many, which the ORM would make several times
slower.

What an ingest costs does not grow with the store: it looks up only the hashes of the image set
at hand (batched, through the unique index on chunks.hash), never the whole table."""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Iterable, Iterator, NamedTuple

import zstandard

from zapckpt.common.errors import ZapError

from .sql import Cursor, batches



class StoreError(ZapError):
    """The store cannot give back what the index says it holds (zapckpt.store raises it too)."""


class ChunkLocation(NamedTuple):
    """Where one chunk is: a frame (a zstd frame at offset/length in a pack file) and the
    chunk's place inside that frame once decompressed."""

    pack_id: int
    pack: str  # the pack file's name
    offset: int  # of the frame in the pack
    length: int  # of the frame (compressed)
    start: int  # of the chunk in the decompressed frame
    raw_length: int  # of the chunk


class FrameRow(NamedTuple):
    """A uniform frame: page-sized chunks only, chunk id base + i at i * PAGE in the
    decompressed frame, for ids up to last."""

    pack_id: int
    pack: str
    offset: int
    length: int
    base: int
    last: int


PAGE = 4096
GROUP_SPAN = 63  # a uniform frame spans at most this many ids past its base (64 chunks a frame)
CHUNK_IDS_LOCK = 0x7A6170636B696473  # PostgreSQL advisory lock: new chunk ids, one ingest at a time

# A pack's frames from its chunk rows (an ingest computes them itself: _frames_of). Uniform: every
# chunk a page at the place its id gives. SQLite gives ids one writer at a time, in pack order, so
# an id inside a uniform frame's range (a dead chunk's, say) is never another frame's; PostgreSQL
# ids of older catalogs may interleave between hosts, so there a frame is uniform only with no
# hole in its ids (STRICT).
def frames_of_pack_sql(pg: bool) -> str:
    strict = (" AND COUNT(*) OVER w = MAX(c.id) OVER w - MIN(c.id) OVER w + 1 AND MIN(c.start) OVER w = 0"
              if pg else "")  # fmt: skip
    return (
        'INSERT INTO frames (pack_id, "offset", length, base, last, uniform) '
        'SELECT pack_id, "offset", MAX(length), CASE WHEN u THEN MIN(id - start / 4096) ELSE MIN(id) END, MAX(id), u '
        'FROM (SELECT c.pack_id, c."offset", c.length, c.id, c.start, '
        "(MIN(c.raw_length) OVER w = 4096 AND MAX(c.raw_length) OVER w = 4096 AND "
        "MIN(c.id - c.start / 4096) OVER w = MAX(c.id - c.start / 4096) OVER w AND "
        f"MIN(c.start % 4096) OVER w = 0 AND MAX(c.start % 4096) OVER w = 0{strict}) AS u "
        'FROM chunks c WHERE c.pack_id = ? WINDOW w AS (PARTITION BY c.pack_id, c."offset")) f '
        'GROUP BY pack_id, "offset", u'
    )


def _frames_of(rows: list[tuple[int, int, int, int, int]], strict: bool) -> list[tuple]:
    """(offset, length, base, last, uniform) of each frame of a new pack, from its own chunk rows
    (id, frame offset, frame length, start, raw length) in pack order; the rule of
    frames_of_pack_sql."""
    out = []
    i = 0
    while i < len(rows):
        off, ln = rows[i][1], rows[i][2]
        j = i
        bases = set()
        pages = True
        while j < len(rows) and rows[j][1] == off:
            cid, _o, _l, start, raw = rows[j]
            pages = pages and raw == PAGE and start % PAGE == 0
            bases.add(cid - start // PAGE)
            j += 1
        cids = [r[0] for r in rows[i:j]]
        uniform = pages and len(bases) == 1
        if strict:
            uniform = uniform and rows[i][3] == 0 and max(cids) - min(cids) + 1 == len(cids)
        out.append((off, ln, bases.pop() if uniform else min(cids), max(cids), uniform))
        i = j
    return out


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
        a.frombytes(zstandard.ZstdDecompressor().decompress(bytes(blob)))
    except zstandard.ZstdError as e:
        raise StoreError(f"chunk list damaged ({e})") from None
    return a


RANGE_MIN = 64  # ids in a run worth a range query
RANGE_GAP = 4  # a run is cut at a larger gap: at most 3 rows read and dropped per id wanted


def _runs(ids: list[int]) -> Iterator[list[int]]:
    """Sorted ids cut where the gap to the next exceeds RANGE_GAP."""
    run: list[int] = []
    for i in ids:
        if run and i - run[-1] > RANGE_GAP:
            yield run
            run = []
        run.append(i)
    if run:
        yield run


class ChunkIndex:
    def __init__(self, s):
        self.cur = Cursor.of_session(s)
        self.pg = self.cur.pg

    # --- ingest ------------------------------------------------------------------------------
    def lookup(self, hashes: Iterable[bytes]) -> dict[bytes, int]:
        """The ids of those of hashes that are stored already."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[bytes, int] = {}
        for part in batches(wanted, self.cur.batch):
            where, args = self.cur.among("hash", part)
            for h, cid in self.cur.execute(f"SELECT hash, id FROM chunks WHERE {where}", args):
                found[bytes(h)] = cid
        return found

    def add_pack(self, name: str, size: int, chunks: list[NewChunk], digest: str | None = None) -> dict[bytes, int]:
        """Index a new pack, its chunks (reference count 0) and its frames; returns the id of
        each hash. A chunk another host indexed meanwhile (same hash) keeps its row: its frame in
        this pack is then dead weight that the pack's next rewrite drops."""
        if not chunks:
            return {}
        cur = self.cur
        pack_id = cur.scalar("INSERT INTO packs (name, size, digest, created_at) VALUES (?, ?, ?, CURRENT_TIMESTAMP)"
                             " RETURNING id", (name, size, digest))  # fmt: skip
        if not self.pg:
            # One writer at a time (SQLite, under the store's exclusive lock): ids given here.
            base = cur.scalar("SELECT COALESCE(MAX(id), 0) FROM chunks") + 1
            cur.executemany(
                'INSERT INTO chunks (id, hash, pack_id, "offset", length, start, raw_length, refcount) VALUES (?,?,?,?,?,?,?,0)',
                [(base + i, c.hash, pack_id, c.offset, c.length, c.start, c.raw_length) for i, c in enumerate(chunks)],
            )
            ids = {c.hash: base + i for i, c in enumerate(chunks)}
            own = [(base + i, c.offset, c.length, c.start, c.raw_length) for i, c in enumerate(chunks)]
        else:
            # Hosts ingesting at once would interleave their ids: one at a time here (until the
            # commit), so that a frame's chunks have consecutive ids (uniform frames below).
            cur.execute("SELECT pg_advisory_xact_lock(?)", (CHUNK_IDS_LOCK,))
            cur.executemany(
                'INSERT INTO chunks (hash, pack_id, "offset", length, start, raw_length, refcount) VALUES (?,?,?,?,?,?,0)'
                " ON CONFLICT (hash) DO NOTHING",
                [(c.hash, pack_id, c.offset, c.length, c.start, c.raw_length) for c in chunks],
            )
            ids = self.lookup(c.hash for c in chunks)
            missing = [c.hash for c in chunks if c.hash not in ids]
            if missing:
                raise StoreError(f"{len(missing)} new chunk(s) of pack {name} were not indexed")
            own = [tuple(r) for r in cur.execute('SELECT id, "offset", length, start, raw_length FROM chunks '
                                                  'WHERE pack_id = ? ORDER BY "offset", start', (pack_id,))]  # fmt: skip
        cur.executemany('INSERT INTO frames (pack_id, "offset", length, base, last, uniform) VALUES (?,?,?,?,?,?)',
                        [(pack_id, *f) for f in _frames_of(own, self.pg)])  # fmt: skip
        return ids

    def add_files(self, checkpoint_id: str, files: list[tuple[str, int, list[int]]]) -> None:
        """A checkpoint's image files (name, size, chunk ids in order), counting the references."""
        counts: Counter = Counter()
        rows = []
        for name, raw, ids in files:
            counts.update(ids)
            rows.append((checkpoint_id, name, raw, encode_ids(ids)))
        self.cur.executemany("INSERT INTO image_files (checkpoint_id, name, raw_bytes, chunk_ids) VALUES (?,?,?,?)", rows)
        # An ingest's new chunks have consecutive ids, each named once: one statement per run of
        # them, one row at a time for the rest.
        ones, rest = [], []
        for i in sorted(counts):
            n = counts[i]
            if n == 1 and ones and ones[-1][1] == i - 1:
                ones[-1][1] = i
            elif n == 1:
                ones.append([i, i])
            else:
                rest.append((n, i))
        short = [r for r in ones if r[1] - r[0] < RANGE_MIN]
        rest += [(1, i) for a, b in short for i in range(a, b + 1)]
        self.cur.executemany("UPDATE chunks SET refcount = refcount + 1 WHERE id BETWEEN ? AND ?",
                             [tuple(r) for r in ones if r[1] - r[0] >= RANGE_MIN])  # fmt: skip
        self.cur.executemany("UPDATE chunks SET refcount = refcount + ? WHERE id = ?", sorted(rest, key=lambda r: r[1]))

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
        return [tuple(r) for r in self.cur.execute(
            "SELECT name, raw_bytes FROM image_files WHERE checkpoint_id = ? ORDER BY name", (checkpoint_id,))]  # fmt: skip

    def chunk_ids(self, checkpoint_id: str) -> set[int]:
        ids: set[int] = set()
        for _n, _r, chunk_ids in self.files(checkpoint_id):
            ids.update(chunk_ids)
        return ids

    def _by_id(self, select: str, ids: Iterable[int]) -> Iterator[tuple]:
        """The rows of `select` (its first column c.id, of `chunks c`; ends in WHERE) for ids.
        A checkpoint's chunks are mostly runs of consecutive ids (an ingest numbers its new
        chunks in order): a dense run is one range query, not a statement per 500 ids."""
        scattered: list[int] = []
        for run in _runs(sorted(set(ids))):
            if len(run) < RANGE_MIN:
                scattered += run
                continue
            want = set(run)
            yield from (r for r in self.cur.execute(select + " c.id BETWEEN ? AND ?", (run[0], run[-1])) if r[0] in want)
        for part in batches(scattered, self.cur.batch):
            where, args = self.cur.among("c.id", part)
            yield from self.cur.execute(f"{select} {where}", args)

    def locations(self, ids: Iterable[int]) -> dict[int, ChunkLocation]:
        select = ('SELECT c.id, c.pack_id, p.name, c."offset", c.length, c.start, c.raw_length FROM chunks c '
                  "JOIN packs p ON p.id = c.pack_id WHERE")  # fmt: skip
        return {r[0]: ChunkLocation(*r[1:]) for r in self._by_id(select, ids)}

    def frames_near(self, runs: Iterable[tuple[int, int]]) -> list[FrameRow]:
        """The uniform frames that may hold chunk ids in the runs [(first, last)] (those whose
        base lies in [first - GROUP_SPAN, last]): where most of a checkpoint's pages are, one row
        per 64 pages. Ids no uniform frame covers are looked up one by one (locations)."""
        select = ('SELECT f.pack_id, p.name, f."offset", f.length, f.base, f.last FROM frames f '
                  "JOIN packs p ON p.id = f.pack_id WHERE f.uniform AND f.base BETWEEN ? AND ?")  # fmt: skip
        out: dict[tuple[int, int], FrameRow] = {}
        for first, last in runs:
            for r in self.cur.execute(select, (first - GROUP_SPAN, last)):
                out[(r[0], r[2])] = FrameRow(*r)
        return sorted(out.values(), key=lambda f: f.base)

    def hashes(self, ids: Iterable[int]) -> dict[int, bytes]:
        return {cid: bytes(h) for cid, h in self._by_id("SELECT c.id, c.hash FROM chunks c WHERE", ids)}

    def pack_names(self) -> set[str]:
        return {n for (n,) in self.cur.execute("SELECT name FROM packs")}

    def pack_digests(self, names: Iterable[str] | None = None) -> dict[str, str | None]:
        """name -> sha256 of the packs named (all packs without names)."""
        if names is None:
            return dict(self.cur.execute("SELECT name, digest FROM packs").fetchall())
        out: dict[str, str | None] = {}
        for part in batches(sorted(set(names)), self.cur.batch):
            where, args = self.cur.among("name", part)
            out.update(self.cur.execute(f"SELECT name, digest FROM packs WHERE {where}", args))
        return out

    def pack_sizes(self) -> dict[str, int]:
        return dict(self.cur.execute("SELECT name, size FROM packs").fetchall())

    def chunks_by_pack(self, ids: Iterable[int]) -> dict[str, list[int]]:
        """The chunks among ids by the pack that holds each."""
        out: dict[str, list[int]] = {}
        for cid, loc in self.locations(ids).items():
            out.setdefault(loc.pack, []).append(cid)
        return out

    def packs_of(self, ids: Iterable[int]) -> set[str]:
        """The names of the packs that hold these chunks."""
        out: set[str] = set()  # DISTINCT per batch: a few rows each, not one per chunk
        for part in batches(sorted(set(ids)), self.cur.batch):
            where, args = self.cur.among("c.id", part)
            out.update(n for (n,) in self.cur.execute(
                f"SELECT DISTINCT p.name FROM chunks c JOIN packs p ON p.id = c.pack_id WHERE {where}", args))  # fmt: skip
        return out

    # --- releasing and collecting -------------------------------------------------------------
    def release(self, checkpoint_id: str) -> None:
        """Drop a checkpoint's references and its image_files rows."""
        counts: Counter = Counter()
        for (blob,) in self.cur.execute("SELECT chunk_ids FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,)):
            counts.update(decode_ids(blob))
        self.cur.executemany("UPDATE chunks SET refcount = refcount - ? WHERE id = ?",
                             sorted(((n, i) for i, n in counts.items()), key=lambda r: r[1]))  # fmt: skip
        self.cur.execute("DELETE FROM image_files WHERE checkpoint_id = ?", (checkpoint_id,))

    def packs_with_garbage(self) -> list[tuple[int, str, int]]:
        """(id, name, size) of every pack holding at least one unreferenced chunk."""
        return [tuple(r) for r in self.cur.execute(
            "SELECT id, name, size FROM packs WHERE id IN (SELECT DISTINCT pack_id FROM chunks WHERE refcount <= 0)"
        )]  # fmt: skip

    def live_chunks(self, pack_id: int) -> list[tuple[int, int, int]]:
        """(chunk id, frame offset, frame length) of a pack's referenced chunks, in pack order."""
        return [tuple(r) for r in self.cur.execute(
            'SELECT id, "offset", length FROM chunks WHERE pack_id = ? AND refcount > 0 ORDER BY "offset"', (pack_id,)
        )]  # fmt: skip

    def forget_garbage(self, pack_id: int) -> None:
        self.cur.execute("DELETE FROM chunks WHERE pack_id = ? AND refcount <= 0", (pack_id,))
        self._reindex_frames(pack_id)

    def pack_rewritten(self, pack_id: int, new_name: str, size: int, moved: list[tuple[int, int]],
                       digest: str | None = None) -> None:  # fmt: skip
        """The pack's live chunks now sit in new_name: [(new frame offset, chunk id)]."""
        self.cur.execute("UPDATE packs SET name = ?, size = ?, digest = ? WHERE id = ?", (new_name, size, digest, pack_id))
        self.cur.executemany('UPDATE chunks SET "offset" = ? WHERE id = ?', moved)
        self._reindex_frames(pack_id)

    def _reindex_frames(self, pack_id: int) -> None:
        """The pack's frames again from its chunk rows (after a garbage collection: frames moved,
        dead chunks gone, so a frame's id range never covers an id that SQLite gives again)."""
        self.cur.execute("DELETE FROM frames WHERE pack_id = ?", (pack_id,))
        self.cur.execute(frames_of_pack_sql(self.pg), (pack_id,))

    def forget_pack(self, pack_id: int) -> None:
        self.cur.execute("DELETE FROM frames WHERE pack_id = ?", (pack_id,))
        self.cur.execute("DELETE FROM packs WHERE id = ?", (pack_id,))

    # --- accounting ---------------------------------------------------------------------------
    def usage(self) -> dict:
        cur = self.cur
        raw_live, n = cur.execute("SELECT COALESCE(SUM(raw_length),0), COUNT(*) FROM chunks WHERE refcount > 0").fetchone()
        (live,) = cur.execute(
            'SELECT COALESCE(SUM(length),0) FROM (SELECT DISTINCT pack_id, "offset", length FROM chunks WHERE refcount > 0) f'
        ).fetchone()
        packs = cur.execute("SELECT COALESCE(SUM(size),0), COUNT(*) FROM packs").fetchone()
        return {"chunks": int(n), "chunk_bytes": int(live), "chunk_raw_bytes": int(raw_live), "pack_bytes": int(packs[0]),
                "packs": int(packs[1])}  # fmt: skip

    def frames(self) -> dict[int, tuple[int, int, int]]:
        """chunk id -> (pack id, frame offset, frame length), for sharing accounting (df)."""
        return {i: (p, o, ln) for i, p, o, ln in self.cur.execute('SELECT id, pack_id, "offset", length FROM chunks')}

    def recount(self) -> list[tuple[int, int, int]]:
        """[(chunk id, stored count, actual references)] wherever they differ."""
        actual: Counter = Counter()
        for (blob,) in self.cur.execute("SELECT chunk_ids FROM image_files"):
            actual.update(decode_ids(blob))
        return [(cid, stored, actual.get(cid, 0)) for cid, stored in self.cur.execute("SELECT id, refcount FROM chunks")
                if stored != actual.get(cid, 0)]  # fmt: skip
