"""The image store with its packs in a real S3 store (the session's SeaweedFS) and a catalog on
both engines, without pods: what goes up comes back byte for byte into an empty cache, a pack
changed behind zap's back is refused, and the cache keeps to its size, least recently used first."""

from __future__ import annotations

import os

import pytest

from catalog import Catalog
from catalog.chunks import ChunkIndex
from zapckpt.store import StoreError
from zapckpt.store.chunkstore import ChunkStore
from zapckpt.store.objects import ObjectStore, pack_key, parse_url


def _ingest(store, cat, stage, ck_id) -> str:
    with cat.session() as s:
        if cat.dialect == "sqlite":
            s.connection().exec_driver_sql("PRAGMA foreign_keys=OFF")  # no checkpoint rows here
        pending = store.ingest(s, stage)
        pending.publish()
        pending.commit(s, ck_id)
        return pending.pack_name


@pytest.fixture
def remote_store(tmp_path, s3_store, monkeypatch, catalog_where):
    url, endpoint, env = s3_store
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cat = Catalog(catalog_where)
    cat.migrate()
    if cat.dialect == "postgresql":  # image_files rows name no checkpoint here
        with cat.engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE image_files DROP CONSTRAINT IF EXISTS image_files_checkpoint_id_fkey")
    remote = ObjectStore(parse_url(url, endpoint))
    yield ChunkStore(tmp_path / "store", remote, catalog=cat), cat, remote
    cat.dispose()


def test_packs_come_back_from_the_object_store_checked(tmp_path, remote_store):
    store, cat, remote = remote_store
    stage = tmp_path / "stage"
    stage.mkdir()
    pages = os.urandom(64 * 4096)
    (stage / "pages-1.img").write_bytes(pages)
    (stage / "core-1.img").write_bytes(b"core" * 100)
    pack = _ingest(store, cat, stage, "a")
    assert remote.size(pack_key(pack)) == store.pack_path(pack).stat().st_size
    store.pack_path(pack).unlink()  # another host: nothing cached
    out = tmp_path / "out"
    with cat.session() as s:
        store.materialize(s, "a", out)
    assert (out / "pages-1.img").read_bytes() == pages and (out / "core-1.img").read_bytes() == b"core" * 100
    assert store.pack_path(pack).exists()  # cached now
    # changed behind zap's back (a valid pack, but not the one the catalog's digest names)
    remote.put_bytes(pack_key(pack), store.pack_path(pack).read_bytes()[:-1] + b"\0")
    store.pack_path(pack).unlink()
    with cat.session() as s, pytest.raises(StoreError, match="not what was stored"):
        store.materialize(s, "a", tmp_path / "out2")
    assert not store.pack_path(pack).exists()  # the bad copy is not kept
    with cat.session() as s:
        assert ChunkIndex(s).pack_digests([pack])[pack]


def test_the_cache_keeps_to_its_size_least_recently_used_first(tmp_path, remote_store):
    store, cat, remote = remote_store
    names = []
    for i in range(3):
        stage = tmp_path / f"stage{i}"
        stage.mkdir()
        (stage / "pages-1.img").write_bytes(os.urandom(32 * 4096))
        names.append(_ingest(store, cat, stage, f"ck{i}"))
    size = store.pack_path(names[0]).stat().st_size
    store.cache_max = int(size * 2.5)  # room for two
    with cat.session() as s:
        digests = ChunkIndex(s).pack_digests()
    for n in names:  # used in this order: the first is the least recent
        os.utime(store.pack_path(n), (1000 + names.index(n), 1000 + names.index(n)))
    store.evict()
    assert [store.pack_path(n).exists() for n in names] == [False, True, True]
    with store.fetched({names[0]: digests[names[0]]}):  # fetched again, and now the most recent
        assert store.pack_path(names[0]).exists()
    assert [store.pack_path(n).exists() for n in names] == [True, False, True]
    store.unpublish(names)
    assert all(remote.size(pack_key(n)) is None for n in names)
