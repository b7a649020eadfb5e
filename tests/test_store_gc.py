"""Garbage collection's threshold on a real store in a temporary directory (no pool, no CRIU:
image sets are files of pages): a pack still mostly in use is left alone when the caller asks
for it (the watch supervisor's pruning), and everything is freed when it does not."""

from __future__ import annotations

import os

from catalog import Catalog
from zapckpt.store.chunkstore import ChunkStore
from catalog.chunks import ChunkIndex


def _ingest(store, cat, stage, ck_id):
    with cat.session() as s:
        s.connection().exec_driver_sql("PRAGMA foreign_keys=OFF")  # no checkpoint rows here
        store.ingest(s, stage).commit(s, ck_id)


def test_a_mostly_used_pack_is_kept_until_asked_to_free_everything(tmp_path):
    cat, store = Catalog(tmp_path / "c.db"), ChunkStore(tmp_path / "store")
    stage = tmp_path / "stage"
    stage.mkdir()
    pages = bytearray(os.urandom(256 * 4096))
    (stage / "pages-1.img").write_bytes(pages)
    _ingest(store, cat, stage, "a")  # pack 1: 256 pages
    pages[: 16 * 4096] = os.urandom(16 * 4096)
    (stage / "pages-1.img").write_bytes(pages)
    _ingest(store, cat, stage, "b")  # pack 2: the 16 new pages; b shares 240 of a's
    with cat.session() as s:
        ChunkIndex(s).release("a")  # 16 of pack 1's pages now unused: 1/16 of it
        assert store.collect_garbage(s, min_unused=0.5) == []
        assert [p[1] for p in ChunkIndex(s).packs_with_garbage()] and ChunkIndex(s).recount() == []
    with cat.session() as s:
        old = store.collect_garbage(s)  # min_unused 0: rewritten now
        assert len(old) == 1 and ChunkIndex(s).packs_with_garbage() == []
    store.unpublish(old)
    assert not any(store.pack_path(n).exists() for n in old)
    with cat.session() as s:
        target = tmp_path / "out"
        store.materialize(s, "b", target)
    assert (target / "pages-1.img").read_bytes() == bytes(pages)
    cat.dispose()
