"""The catalog on real SQLite and on a real PostgreSQL (the session's cluster): migrations,
pragmas, references, the fast read path against the ORM, on both engines."""

import json
import sqlite3

import pytest
from sqlalchemy import text

from catalog import Catalog, Checkpoint, Pod, queries
from zapckpt import records
from catalog.db import BUSY_TIMEOUT_MS, SCHEMA_HEAD
from catalog.migrate import head_revision
from zapckpt.common.errors import NotFound, UsageError


def test_schema_head_constant_matches_alembic():
    assert head_revision() == SCHEMA_HEAD


def test_migration_creates_schema_and_pragmas(catalog_where):
    cat = Catalog(catalog_where)
    with cat.session() as s:
        if cat.dialect == "sqlite":
            assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert s.execute(text("PRAGMA busy_timeout")).scalar() == BUSY_TIMEOUT_MS
    assert cat.current_revision() == SCHEMA_HEAD
    from sqlalchemy import inspect

    with cat.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert {"pods", "checkpoints", "settings", "hosts", "volume_streams", "alembic_version"} <= tables
        if cat.dialect == "postgresql":  # sizes that outgrow PostgreSQL's 32-bit integer (a 4 GiB pages image)
            types = {c["name"]: str(c["type"]) for c in inspect(conn).get_columns("chunks")}
            assert types["offset"] == types["id"] == "BIGINT"
    # Opening again does not migrate again and keeps the data; settings are per host or the fleet's.
    with cat.session() as s:
        queries.set_setting(s, 1, "k", "v")
        queries.set_setting(s, 0, "k", "fleet")
    cat2 = Catalog(catalog_where)
    with cat2.session() as s:
        assert queries.get_setting(s, 1, "k") == "v" and queries.get_setting(s, 0, "k") == "fleet"
        assert queries.get_setting(s, 2, "k") is None
    cat.dispose()
    cat2.dispose()


def _pod(s, name):
    p = Pod(name=name, volume=f"/v/{name}", mount_path=f"/m/{name}", command=["x"], env={}, cwd="/")
    s.add(p)
    s.flush()
    return p


def _ck(s, pod, seq, id_, parent=None):
    c = Checkpoint(id=id_, pod=pod, seq=seq, parent_id=parent, backend="btrfs", snapshot_path=f"/s/{id_}",
                   processes=[])  # fmt: skip
    s.add(c)
    s.flush()
    return c


def test_refs_resolve_and_foreign_keys(catalog_where):
    cat = Catalog(catalog_where)
    with cat.session() as s:
        web = _pod(s, "web")
        _ck(s, web, 1, "aaaa11112222")
        _ck(s, web, 2, "aaaa33334444", parent="aaaa11112222")
        _ck(s, _pod(s, "12"), 1, "bbbb11112222")
    with cat.session() as s:
        assert queries.resolve_ref(s, "web@1").id == "aaaa11112222"
        assert queries.resolve_ref(s, "web@latest").id == "aaaa33334444"
        assert queries.resolve_ref(s, "aaaa3333").ref == "web@2"
        assert queries.resolve_ref(s, "12@latest").ref == "12@1"
        with pytest.raises(UsageError, match="ambiguous"):
            queries.resolve_ref(s, "aaaa")
        with pytest.raises(NotFound):
            queries.resolve_ref(s, "web@3")
        with pytest.raises(NotFound):
            queries.resolve_ref(s, "nope@1")
        with pytest.raises(UsageError):
            queries.resolve_ref(s, "web@one")
        with pytest.raises(UsageError):
            queries.resolve_ref(s, "xyz")
    # Foreign keys are enforced: a checkpoint of a pod that does not exist is refused.
    with pytest.raises(Exception, match="(?i)FOREIGN KEY"):
        with cat.session() as s:
            s.add(Checkpoint(id="cccc", pod_id=999, seq=1, backend="btrfs", snapshot_path="/x", processes=[]))
    # Deleting a checkpoint clears the parent link of its children (ON DELETE SET NULL).
    with cat.session() as s:
        s.delete(queries.resolve_ref(s, "web@1"))
    with cat.session() as s:
        assert queries.resolve_ref(s, "web@2").parent_id is None
    cat.dispose()


def test_upgrade_from_0001_keeps_data(catalog_where):
    """A catalog written by schema 0001 is upgraded in place, through every revision, on both
    engines: old image sets are marked as the per-directory format, checkpoint numbering
    continues after the highest one, and what was there becomes the one host's (0014)."""
    from catalog.migrate import upgrade

    cat = Catalog(catalog_where)
    upgrade(cat.engine, "0001")
    with cat.engine.begin() as conn:
        conn.execute(text("INSERT INTO pods (id, name, created_at, volume, mount_path, command, env, cwd, desired_state) "
                          "VALUES (1, 'web', '2026-01-01', '/v', '/m', '[]', '{}', '/', 'stopped')"))  # fmt: skip
        for seq, img in ((1, "'/images/a'"), (2, "NULL")):
            conn.execute(text(
                "INSERT INTO checkpoints (id, pod_id, seq, created_at, message, kind, backend, snapshot_path, image_dir, "
                f"raw_bytes, stored_bytes, processes) VALUES ('ck{seq}', 1, {seq}, '2026-01-01', '', 'manual', 'btrfs', "
                f"'/s{seq}', {img}, 0, 0, '[]')"))  # fmt: skip
    with cat.session() as s:  # opening migrates to the head
        a, b = queries.resolve_ref(s, "web@1"), queries.resolve_ref(s, "web@2")
        assert (a.image_format, a.has_images) == ("dir", True)
        assert (b.image_format, b.has_images) == (None, False)
        pod = queries.get_pod(s, "web")
        assert pod.last_seq == 2
        assert queries.next_seq(s, pod) == 3
        assert pod.host_id == 1 and a.host_id == 1 and pod.host.name
    assert cat.current_revision() == SCHEMA_HEAD
    cat.dispose()


def test_fast_list_rows_give_exactly_the_orm_records(catalog_where):
    """`zap list` reads plain rows (queries.checkpoint_rows) for speed; its records must be the
    ones `zap show` builds from ORM objects: parents across pods, whole-second and fractional
    times, processes, unicode, NULL timings, files-only checkpoints."""
    from datetime import datetime, timezone

    from zapckpt.records import checkpoint_record, checkpoint_row_records

    cat = Catalog(catalog_where)
    with cat.session() as s:
        web, branch = _pod(s, "web"), _pod(s, "web-brånch")
        a = _ck(s, web, 1, "aaaa11112222")
        a.created_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        a.image_format, a.frozen_ms, a.raw_bytes = "cas", 12.3456789, 4096
        a.processes = [{"pid": 1, "host_pid": 77, "cmdline": ["sh", "-c", "échο"], "cwd": "/"}]
        b = _ck(s, web, 2, "aaaa33334444", parent="aaaa11112222")
        b.created_at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
        b.message = "ünïcode \"quoted\""
        _ck(s, branch, 1, "bbbb11112222", parent="aaaa33334444")
    with cat.session() as s:
        orm = [checkpoint_record(c) for c in queries.list_checkpoints(s)]
        fast = checkpoint_row_records(queries.checkpoint_rows(s))
        assert fast == orm and len(fast) == 3
        assert fast[2]["parent"] == "web@2" and fast[0]["created_at"] == "2026-01-02T03:04:05+00:00"
        one = queries.find_pod(s, "web")
        assert checkpoint_row_records(queries.checkpoint_rows(s, one)) == orm[:2]
    cat.dispose()


def test_big_json_documents_carry_the_same_values():
    """`zap list --json` of many checkpoints is written compact by orjson, small documents indented
    by json: both must parse to the same values (non-ASCII, floats, nulls, nesting)."""
    import json
    import subprocess
    import sys

    code = (
        "import sys; from zapckpt.cli.output import emit_json; n = int(sys.argv[1]);"
        "emit_json({'checkpoints': [{'i': i, 'm': 'ünï \"q\" \\u2603', 'f': 69.21847999910824 + i, 'n': None,"
        " 'p': [{'cmd': ['sh', '-c', 'échο']}]} for i in range(n)]})"
    )  # fmt: skip
    for n, indented in ((1001, False), (3, True)):
        out = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, check=True).stdout
        doc = json.loads(out)["checkpoints"]
        assert len(doc) == n and ("\n  " in out.decode()) == indented
        assert doc[-1] == {"i": n - 1, "m": 'ünï "q" \u2603', "f": 69.21847999910824 + n - 1, "n": None,
                           "p": [{"cmd": ["sh", "-c", "échο"]}]}  # fmt: skip


def test_fastread_rows_match_the_orm(catalog_where):
    """`zap ps` and `zap list` read through catalog.fastread (plain sqlite3 or psycopg): the
    same rows as the ORM gives, for pods with an origin, a head, JSON columns and checkpoints."""
    from catalog import fastread

    cat = Catalog(catalog_where)
    with cat.session() as s:
        web = _pod(s, "web")
        web.ports = [{"host_ip": "127.0.0.1", "host_port": 8080, "pod_port": 80, "proto": "tcp"}]
        web.env = {"A": "b"}
        _ck(s, web, 1, "aaaa11112222")
        web.head_checkpoint_id = _ck(s, web, 2, "aaaa33334444", parent="aaaa11112222").id
        _ck(s, web, 3, "aaaa55556666", parent="aaaa33334444").kind = "auto"  # a safety copy: not @latest
        from catalog import Tag

        s.add_all([Tag(pod_id=web.id, checkpoint_id="aaaa11112222", name=n) for n in ("zeta", "alpha")])
        s.add(Tag(pod_id=web.id, checkpoint_id="aaaa55556666", name="gone"))
        fork = _pod(s, "fork")
        fork.origin_checkpoint_id = "aaaa11112222"
        fork.private_tmp = True
        fork.suspended_by = "aaaa11112222"
        from datetime import datetime, timezone

        from catalog import Watch

        s.add(Watch(pod_id=web.id, every_s=2.5, keep_last=3, last_at=datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=timezone.utc),
                    last_result="took web@2 (frozen 80 ms)", last_ok=True))  # fmt: skip
    with cat.session() as s:
        counts = queries.checkpoint_counts(s)
        orm_pods = [fastread.PodRow.of(p, counts.get(p.id, 0)) for p in queries.list_pods(s)]
        orm_cks = queries.checkpoint_rows(s)
        orm_web = queries.checkpoint_rows(s, queries.get_pod(s, "web"))
        assert queries.resolve_ref(s, "web@latest").seq == 2 and queries.latest_seq(s, "web") == 2
    conn = fastread.open_current(catalog_where)
    assert conn is not None
    assert fastread.pod_rows(conn) == orm_pods
    assert [p.origin for p in orm_pods] == ["web@1", None] and orm_pods[1].head == "web@2"
    assert [p.suspended for p in orm_pods] == [True, False] and orm_pods[0].watch is None
    assert orm_pods[1].watch == {"every_s": 2.5, "last_at": "2026-01-02T03:04:05.120000+00:00",
                                 "last_result": "took web@2 (frozen 80 ms)", "last_ok": True}  # fmt: skip
    assert fastread.checkpoint_rows(conn) == orm_cks
    assert fastread.checkpoint_rows(conn, fastread.pod_id(conn, "web")) == orm_web
    # `zap show POD` and `zap show NAME@N|latest`
    assert fastread.pod_rows(conn, "web") == [orm_pods[1]] and fastread.pod_rows(conn, "nope") == []
    assert fastread.checkpoint_row(conn, "web", 1) == orm_web[0]
    assert fastread.checkpoint_row(conn, "web", None) == orm_web[1]
    assert fastread.checkpoint_row(conn, "web", 3) == orm_web[2]
    assert fastread.checkpoint_row(conn, "web", 4) is None
    # NAME@TAG, and the tags in each row, sorted (issue 15)
    tags = fastread.CHECKPOINT_ROW.index("tags")
    assert fastread.checkpoint_row(conn, "web", "zeta") == orm_web[0] and json.loads(orm_web[0][tags]) == ["alpha", "zeta"]
    assert fastread.checkpoint_row(conn, "web", "nope") is None and orm_web[1][tags] == "[]"
    with cat.session() as s:
        assert queries.resolve_ref(s, "web@alpha").seq == 1
        assert records.checkpoint_record(queries.resolve_ref(s, "web@1"))["tags"] == ["alpha", "zeta"]
        with pytest.raises(NotFound):
            queries.resolve_ref(s, "web@nope")
        s.delete(queries.resolve_ref(s, "web@gone"))  # the database drops its tags with it
    with cat.session() as s:
        assert [t[:2] for t in queries.pod_tag_rows(s, "web")] == [("alpha", 1), ("zeta", 1)]
    assert fastread.checkpoint_row(conn, "fork", None) is None
    with pytest.raises(fastread.LookupFailed):
        fastread.pod_id(conn, "nope")
    assert not fastread.has_intents(conn)
    conn.close()
    cat.dispose()


def test_fastread_leaves_an_old_or_missing_catalog_to_the_orm(tmp_path):
    from catalog import fastread

    assert fastread.open_current(tmp_path / "none.db") is None
    cat = Catalog(tmp_path / "c.db")
    with cat.session():
        pass
    with sqlite3.connect(tmp_path / "c.db") as c:
        c.execute("UPDATE alembic_version SET version_num = '0005'")
    assert fastread.open_current(tmp_path / "c.db") is None


def test_keep_policy_and_tags(tmp_path):
    """prune --keep-tag keeps the tagged checkpoints named; the watch's own pruning
    (keep_tagged) keeps every tagged one; untagged ones outside the policy go."""
    from catalog import Tag
    from zapckpt.ops.remove import plan_prune

    cat = Catalog(tmp_path / "c.db")
    with cat.session() as s:
        web = _pod(s, "web")
        cks = [_ck(s, web, n, f"aaaa0000000{n}") for n in (1, 2, 3, 4)]
        s.add_all([Tag(pod_id=web.id, checkpoint_id=cks[0].id, name="good"),
                   Tag(pod_id=web.id, checkpoint_id=cks[1].id, name="other")])  # fmt: skip
        s.flush()
        s.expire_all()
        kept = lambda plan: [d.ck.seq for d in plan if d.keep]  # noqa: E731
        assert kept(plan_prune(s, cks, keep_last=1)) == [4]
        plan = plan_prune(s, cks, keep_last=1, keep_tags=("good",))
        assert kept(plan) == [1, 4] and plan[0].reasons == ["tagged good"]
        assert kept(plan_prune(s, cks, keep_last=1, keep_tagged=True)) == [1, 2, 4]


def test_chunk_locations_of_dense_and_scattered_ids(catalog_where):
    """Runs of consecutive ids are read as ranges, the rest in batches: either way exactly the
    ids asked for come back, each with its own location, on both engines."""
    import os

    from catalog.chunks import ChunkIndex, NewChunk

    cat = Catalog(catalog_where)
    with cat.session() as s:
        idx = ChunkIndex(s)
        ids = idx.add_pack("p1.pack", 1 << 20, [NewChunk(os.urandom(32), i * 10, 10, 0, 4096) for i in range(3000)])
        s.commit()
        all_ids = sorted(ids.values())
        dense = all_ids[100:1100]  # one run
        gappy = all_ids[1200:2400:3]  # gaps of 2: still ranges, rows in between dropped
        scattered = all_ids[2500::40] + [all_ids[0]]  # far apart: batches
        wanted = set(dense) | set(gappy) | set(scattered)
        got = idx.locations(wanted | {10**12})  # an id that does not exist is simply absent
        assert set(got) == wanted
        start = all_ids[0]
        for cid, loc in got.items():
            assert loc.pack == "p1.pack" and loc.offset == (cid - start) * 10, (cid, loc)
