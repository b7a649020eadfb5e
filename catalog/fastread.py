"""Read-only listings in plain sqlite3, for the commands that must answer before SQLAlchemy could
even be imported (`zap ps`, `zap list`, and the "anything to recover?" check before every
command): importing SQLAlchemy alone takes ~0.25 s on a small machine. Only reads, only of a
catalog already at SCHEMA_HEAD (otherwise the caller takes the ORM path, which migrates it).
tests/test_catalog.py checks these rows against the ORM's."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

# The newest migration in catalog/migrations/versions; a test keeps the two in step.
SCHEMA_HEAD = "0013"
BUSY_TIMEOUT_MS = 120_000  # writers wait for each other (a prune compacting packs) instead of failing


class LookupFailed(LookupError):
    """An unknown name: the caller turns it into its own error type."""


def open_current(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the catalog, or None if there is none yet or its schema is not
    the newest (then only the ORM path, which migrates, may read it)."""
    if not Path(path).exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # no such table: a catalog being created
        row = None
    if row is None or row[0] != SCHEMA_HEAD:
        conn.close()
        return None
    return conn


def has_intents(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM intents LIMIT 1").fetchone() is not None


def has_old_image_sets(conn: sqlite3.Connection) -> bool:
    """Image sets still in the format of schema 0001 (zapckpt.store.convert converts them)."""
    return conn.execute("SELECT 1 FROM checkpoints WHERE image_format = 'dir' LIMIT 1").fetchone() is not None


@dataclass(frozen=True)
class PodRow:
    """What listings show of a pod: its columns, with the origin and head as references."""

    id: int
    name: str
    created_at: str  # ISO 8601, UTC
    volume: str
    mount_path: str
    rootfs: str | None
    command: list
    net: str
    address: str | None
    ports: list
    volumes: list
    private_tmp: bool
    init: bool  # a small init is pid 1, the command its child
    env: dict
    cwd: str
    desired_state: str
    init_pid: int | None
    init_starttime: int | None
    origin: str | None  # NAME@N
    head: str | None
    checkpoints: int
    suspended: bool  # by `zap suspend`, until `zap resume`
    watch: dict | None  # `zap watch`: {"every_s", "last_at", "last_result", "last_ok"}
    memory_limit: int | None  # bytes
    cpus: float | None
    restart: str  # "no", "on-failure", "always"
    restart_max: int | None
    restart_count: int
    exit_code: int | None
    exited_at: str | None
    host_writable: bool  # a volume pod that may write the host's tree (--host-writable)

    @classmethod
    def of(cls, pod, n_checkpoints: int) -> "PodRow":
        """The same row from an ORM Pod (show, the history view)."""
        ref = lambda ck: ck.ref if ck is not None else None  # noqa: E731
        return cls(pod.id, pod.name, iso(pod.created_at), pod.volume, pod.mount_path, pod.rootfs, pod.command or [],
                   pod.net, pod.address, [dict(p) for p in pod.ports or []], [dict(v) for v in pod.volumes or []],
                   bool(pod.private_tmp), bool(pod.init), pod.env or {}, pod.cwd, pod.desired_state, pod.init_pid,
                   pod.init_starttime, ref(pod.origin), ref(pod.head), n_checkpoints, pod.suspended_by is not None,
                   _watch(w.every_s, w.last_at and iso(w.last_at), w.last_result, w.last_ok)
                   if (w := pod.watch) is not None else None, pod.memory_limit, pod.cpus, pod.restart or "no",
                   pod.restart_max, pod.restart_count or 0, pod.exit_code, pod.exited_at and iso(pod.exited_at),
                   bool(pod.host_writable))  # fmt: skip


def _watch(every_s: float, last_at: str | None, last_result: str | None, last_ok: bool | None) -> dict:
    return {"every_s": every_s, "last_at": last_at, "last_result": last_result, "last_ok": last_ok}


def iso(t) -> str:
    """A datetime from the catalog in ISO 8601: SQLite drops the zone; everything is stored in UTC."""
    from datetime import timezone

    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


_POD_SQL = (
    "SELECT p.id, p.name, p.created_at, p.volume, p.mount_path, p.rootfs, p.command, p.net, p.address, p.ports,"
    " p.volumes, p.private_tmp, p.init, p.env, p.cwd, p.desired_state, p.init_pid, p.init_starttime,"
    " op.name || '@' || o.seq, hp.name || '@' || h.seq,"
    " (SELECT count(*) FROM checkpoints c WHERE c.pod_id = p.id), p.suspended_by IS NOT NULL,"
    " w.pod_id, w.every_s, w.last_at, w.last_result, w.last_ok, p.memory_limit, p.cpus,"
    " p.restart, p.restart_max, p.restart_count, p.exit_code, p.exited_at, p.host_writable"
    " FROM pods p LEFT JOIN watches w ON w.pod_id = p.id"
    " LEFT JOIN checkpoints o ON o.id = p.origin_checkpoint_id LEFT JOIN pods op ON op.id = o.pod_id"
    " LEFT JOIN checkpoints h ON h.id = p.head_checkpoint_id LEFT JOIN pods hp ON hp.id = h.pod_id"
)  # fmt: skip


def pod_rows(conn: sqlite3.Connection, name: str | None = None) -> list[PodRow]:
    """Every pod by name, or the one called name (none if there is no such pod)."""
    sql, args = (_POD_SQL + " WHERE p.name = ?", (name,)) if name is not None else (_POD_SQL + " ORDER BY p.name", ())
    out = []
    for r in conn.execute(sql, args):
        r = list(r)
        r[2] = iso_text(r[2])
        for i in (6, 9, 10, 13):  # JSON columns
            r[i] = json.loads(r[i]) if r[i] is not None else ([] if i != 13 else {})
        r[11], r[12] = bool(r[11]), bool(r[12])
        watched, every, last_at, result, ok = r[22:27]
        watch = _watch(every, last_at and iso_text(last_at), result, None if ok is None else bool(ok)) if watched else None
        out.append(PodRow(*r[:21], bool(r[21]), watch, *r[27:33], r[33] and iso_text(r[33]), bool(r[34])))
    return out


@dataclass(frozen=True)
class PodConsole:
    """What `zap logs` needs of a pod: whether it runs (pod/status.py), its console pipe."""

    init_pid: int | None
    init_starttime: int | None
    desired_state: str
    console_pipe: int | None


def pod_console(conn: sqlite3.Connection, name: str) -> PodConsole | None:
    row = conn.execute("SELECT init_pid, init_starttime, desired_state, console_pipe FROM pods WHERE name = ?",
                       (name,)).fetchone()  # fmt: skip
    return PodConsole(*row) if row is not None else None


def iso_text(stored: str) -> str:
    """A time as SQLite stores it ("YYYY-MM-DD HH:MM:SS[.ffffff]", UTC) in ISO 8601, the way
    datetime.isoformat() writes it (no fraction when it is zero), without parsing it."""
    if stored.endswith(".000000"):
        stored = stored[:-7]
    return f"{stored[:10]}T{stored[11:]}+00:00"


CHECKPOINT_ROW = ("id", "pod", "seq", "parent_pod", "parent_seq", "parent_id", "created_at", "message", "kind",
                  "image_format", "backend", "snapshot_path", "snapshot_generation", "raw_bytes", "stored_bytes",
                  "frozen_ms", "dump_ms", "fs_snapshot_ms", "total_ms", "predump_ms", "processes", "tags")  # fmt: skip

_CHECKPOINT_SQL = (
    "SELECT c.id, p.name, c.seq, pp.name, par.seq, c.parent_id, c.created_at, c.message, c.kind, c.image_format,"
    " c.backend, c.snapshot_path, c.snapshot_generation, c.raw_bytes, c.stored_bytes, c.frozen_ms, c.dump_ms,"
    " c.fs_snapshot_ms, c.total_ms, c.predump_ms, c.processes, coalesce(tg.names, '[]')"
    " FROM checkpoints c JOIN pods p ON p.id = c.pod_id"
    " LEFT JOIN checkpoints par ON par.id = c.parent_id LEFT JOIN pods pp ON pp.id = par.pod_id"
    # the tags of each checkpoint as one JSON array, sorted: one pass over the (small) tags table
    " LEFT JOIN (SELECT checkpoint_id, json_group_array(name) AS names FROM"
    " (SELECT checkpoint_id, name FROM tags ORDER BY checkpoint_id, name) GROUP BY checkpoint_id) tg"
    " ON tg.checkpoint_id = c.id"
)  # fmt: skip


def checkpoint_rows(cursor, pod_id: int | None = None) -> list[tuple]:
    """Checkpoints as plain tuples (CHECKPOINT_ROW names the columns), the pod's and parent's
    names joined in, created_at as stored (UTC text), processes as JSON text: no ORM objects,
    so 100,000 checkpoints load in a fraction of the time. cursor: any sqlite3 cursor (the
    ORM path passes its own connection's)."""
    sql, args = _CHECKPOINT_SQL, ()
    if pod_id is not None:
        sql, args = sql + " WHERE c.pod_id = ?", (pod_id,)
    return cursor.execute(sql + " ORDER BY p.name, c.seq", args).fetchall()


def checkpoint_row(cursor, name: str, seq: int | str | None) -> tuple | None:
    """The row of NAME@seq, of NAME@latest (seq None: queries.latest_order) or of NAME@TAG (seq a
    tag's name); None if there is none."""
    sql = _CHECKPOINT_SQL + " WHERE p.name = ?"
    if seq is None:
        latest = " ORDER BY c.kind = 'auto' AND c.id IS NOT p.head_checkpoint_id, c.seq DESC LIMIT 1"
        return cursor.execute(sql + latest, (name,)).fetchone()
    if isinstance(seq, str):
        tagged = " AND c.id = (SELECT checkpoint_id FROM tags WHERE pod_id = p.id AND name = ?)"
        return cursor.execute(sql + tagged, (name, seq)).fetchone()
    return cursor.execute(sql + " AND c.seq = ?", (name, seq)).fetchone()


def pod_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM pods WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise LookupFailed(name)
    return row[0]
