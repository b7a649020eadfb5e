"""Read-only listings in plain SQL, for the commands that must answer before SQLAlchemy could
even be imported (`zap ps`, `zap list`, and the "anything to recover?" check before every
command): importing SQLAlchemy alone takes ~0.25 s on a small machine. Only reads, only of a
catalog already at SCHEMA_HEAD (otherwise the caller takes the ORM path, which migrates it).
The same statements run on SQLite (sqlite3) and PostgreSQL (psycopg): JSON columns are read as
their text, times are normalised to ISO 8601 here. tests/test_catalog.py checks these rows
against the ORM's on both engines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .sql import Cursor
from .urls import CatalogURL, parse, sqlite_file

# The newest migration in catalog/migrations/versions; a test keeps the two in step.
SCHEMA_HEAD = "0015"
BUSY_TIMEOUT_MS = 120_000  # writers wait for each other (a prune compacting packs) instead of failing


class LookupFailed(LookupError):
    """An unknown name: the caller turns it into its own error type."""


class Reader:
    """A read-only connection to a current catalog, of either engine, and the host it reads
    for (None: the one host of an embedded catalog)."""

    def __init__(self, raw, dialect: str, host: str | None):
        self.raw, self.dialect, self.host = raw, dialect, host

    def cursor(self) -> Cursor:
        return Cursor(self.raw.cursor(), self.dialect)

    def execute(self, sql: str, args=()) -> Cursor:
        return self.cursor().execute(sql, args)

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _url(where) -> CatalogURL:
    if isinstance(where, CatalogURL):
        return where
    return sqlite_file(where) if isinstance(where, Path) else parse(where)


def open_current(where, host: str | None = None) -> Reader | None:
    """A read-only connection to the catalog, or None if there is none yet or its schema is not
    the newest (then only the ORM path, which migrates, may read it). A PostgreSQL catalog that
    cannot be reached raises the driver's error (the caller says what it means)."""
    url = _url(where)
    if url.embedded:
        import sqlite3

        if not url.path.exists():
            return None
        raw = sqlite3.connect(f"file:{url.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        missing: tuple = (sqlite3.OperationalError,)
        host = None  # an embedded catalog has one host: nothing to filter by
    else:
        import psycopg

        raw = psycopg.connect(url.text, connect_timeout=10, autocommit=True, application_name="zap")
        missing = (psycopg.errors.UndefinedTable,)
    reader = Reader(raw, "sqlite" if url.embedded else "postgresql", host)
    try:
        row = reader.execute("SELECT version_num FROM alembic_version").fetchone()
    except missing:  # no such table: a catalog being created
        row = None
    if row is None or row[0] != SCHEMA_HEAD:
        reader.close()
        return None
    return reader


def _cur(conn) -> Cursor:
    return conn if isinstance(conn, Cursor) else conn.cursor()


_MY_HOST = "(SELECT id FROM hosts WHERE name = ?)"


def has_intents(conn: Reader) -> bool:
    """Whether this host has intent records (another host's are its own to settle)."""
    if conn.host is None:
        return conn.execute("SELECT 1 FROM intents LIMIT 1").fetchone() is not None
    sql = f"SELECT 1 FROM intents WHERE host_id IS NULL OR host_id = {_MY_HOST} LIMIT 1"
    return conn.execute(sql, (conn.host,)).fetchone() is not None


def has_old_image_sets(conn: Reader) -> bool:
    """Image sets still in the format of schema 0001 (zapckpt.store.convert converts them)."""
    return conn.execute("SELECT 1 FROM checkpoints WHERE image_format = 'dir' LIMIT 1").fetchone() is not None


def adopted_away(conn: Reader) -> list[str]:
    """This host's pods that another host adopted (their copies here are to be retired)."""
    if conn.host is None:
        return []
    sql = "SELECT name FROM pods WHERE adopted_from = ? AND retire_pending ORDER BY name"
    return [n for (n,) in conn.execute(sql, (conn.host,))]


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
    restoring: bool = False  # its memory still comes in (ops/restore.py)
    note: str | None = None  # what zap did to it on its own (a restore undone after it was reported)
    host: str | None = None  # the host that runs it
    here: bool = True  # this host runs it: its processes can be looked at

    @classmethod
    def of(cls, pod, n_checkpoints: int, host: str | None = None, here: bool = True) -> "PodRow":
        """The same row from an ORM Pod (show, the history view)."""
        ref = lambda ck: ck.ref if ck is not None else None  # noqa: E731
        return cls(pod.id, pod.name, iso(pod.created_at), pod.volume, pod.mount_path, pod.rootfs, pod.command or [],
                   pod.net, pod.address, [dict(p) for p in pod.ports or []], [dict(v) for v in pod.volumes or []],
                   bool(pod.private_tmp), bool(pod.init), pod.env or {}, pod.cwd, pod.desired_state, pod.init_pid,
                   pod.init_starttime, ref(pod.origin), ref(pod.head), n_checkpoints, pod.suspended_by is not None,
                   _watch(w.every_s, w.last_at and iso(w.last_at), w.last_result, w.last_ok)
                   if (w := pod.watch) is not None else None, pod.memory_limit, pod.cpus, pod.restart or "no",
                   pod.restart_max, pod.restart_count or 0, pod.exit_code, pod.exited_at and iso(pod.exited_at),
                   bool(pod.host_writable), bool(pod.restoring), pod.note, host, here)  # fmt: skip


def _watch(every_s: float, last_at: str | None, last_result: str | None, last_ok: bool | None) -> dict:
    return {"every_s": every_s, "last_at": last_at, "last_result": last_result, "last_ok": last_ok}


def iso(t) -> str:
    """A datetime from the catalog in ISO 8601, in UTC (SQLite drops the zone; PostgreSQL gives
    the session's: everything is stored in UTC)."""
    return (t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


def stored_time(value) -> str:
    """A time as a row gives it (SQLite text, a PostgreSQL datetime) in ISO 8601."""
    return iso(value) if isinstance(value, datetime) else iso_text(value)


def _text(value):
    """A JSON column as its text, whichever engine read it."""
    return value if value is None or isinstance(value, str) else json.dumps(value)


_POD_SQL = (
    "SELECT p.id, p.name, p.created_at, p.volume, p.mount_path, p.rootfs, p.command, p.net, p.address, p.ports,"
    " p.volumes, p.private_tmp, p.init, p.env, p.cwd, p.desired_state, p.init_pid, p.init_starttime,"
    " op.name || '@' || o.seq, hp.name || '@' || h.seq,"
    " (SELECT count(*) FROM checkpoints c WHERE c.pod_id = p.id), p.suspended_by IS NOT NULL,"
    " w.pod_id, w.every_s, w.last_at, w.last_result, w.last_ok, p.memory_limit, p.cpus,"
    " p.restart, p.restart_max, p.restart_count, p.exit_code, p.exited_at, p.host_writable, p.restoring, p.note, ph.name"
    " FROM pods p LEFT JOIN watches w ON w.pod_id = p.id"
    " LEFT JOIN checkpoints o ON o.id = p.origin_checkpoint_id LEFT JOIN pods op ON op.id = o.pod_id"
    " LEFT JOIN checkpoints h ON h.id = p.head_checkpoint_id LEFT JOIN pods hp ON hp.id = h.pod_id"
    " LEFT JOIN hosts ph ON ph.id = p.host_id"
)  # fmt: skip


def pod_rows(conn: Reader, name: str | None = None, all_hosts: bool = False) -> list[PodRow]:
    """The reader's host's pods by name (every host's with all_hosts), or the one called name
    wherever it runs (none if there is no such pod)."""
    where, args = [], []
    if name is not None:
        where.append("p.name = ?")
        args.append(name)
    elif conn.host is not None and not all_hosts:
        where.append(f"p.host_id = {_MY_HOST}")
        args.append(conn.host)
    sql = _POD_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY p.name"
    out = []
    for r in _cur(conn).execute(sql, args).fetchall():
        r = list(r)
        r[2] = stored_time(r[2])
        for i in (6, 9, 10, 13):  # JSON columns
            v = r[i]
            r[i] = (json.loads(v) if isinstance(v, str) else v) if v is not None else ([] if i != 13 else {})
        r[11], r[12] = bool(r[11]), bool(r[12])
        watched, every, last_at, result, ok = r[22:27]
        watch = _watch(every, last_at and stored_time(last_at), result, None if ok is None else bool(ok)) if watched else None
        host = r[37]
        here = conn.host is None or host is None or host == conn.host
        out.append(PodRow(*r[:21], bool(r[21]), watch, *r[27:33], r[33] and stored_time(r[33]), bool(r[34]), bool(r[35]),
                          r[36], host, here))  # fmt: skip
    return out


@dataclass(frozen=True)
class PodConsole:
    """What `zap logs` needs of a pod: whether it runs (pod/status.py), its console pipe."""

    init_pid: int | None
    init_starttime: int | None
    desired_state: str
    console_pipe: int | None


def pod_console(conn: Reader, name: str) -> PodConsole | None:
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
                  "frozen_ms", "dump_ms", "fs_snapshot_ms", "total_ms", "predump_ms", "processes", "tags", "host",
                  "stream", "upload_ms")  # fmt: skip

_TAGS = {
    # the tags of each checkpoint as one JSON array, sorted: one pass over the (small) tags table
    "sqlite": "(SELECT checkpoint_id, json_group_array(name) AS names FROM"
              " (SELECT checkpoint_id, name FROM tags ORDER BY checkpoint_id, name) GROUP BY checkpoint_id)",
    "postgresql": "(SELECT checkpoint_id, json_agg(name ORDER BY name)::text AS names FROM tags GROUP BY checkpoint_id)",
}  # fmt: skip


def _checkpoint_sql(dialect: str) -> str:
    processes = "c.processes::text" if dialect == "postgresql" else "c.processes"
    return (
        "SELECT c.id, p.name, c.seq, pp.name, par.seq, c.parent_id, c.created_at, c.message, c.kind, c.image_format,"
        " c.backend, c.snapshot_path, c.snapshot_generation, c.raw_bytes, c.stored_bytes, c.frozen_ms, c.dump_ms,"
        f" c.fs_snapshot_ms, c.total_ms, c.predump_ms, {processes}, coalesce(tg.names, '[]'), ch.name, c.stream_id,"
        " c.upload_ms"
        " FROM checkpoints c JOIN pods p ON p.id = c.pod_id"
        " LEFT JOIN checkpoints par ON par.id = c.parent_id LEFT JOIN pods pp ON pp.id = par.pod_id"
        " LEFT JOIN hosts ch ON ch.id = c.host_id"
        f" LEFT JOIN {_TAGS[dialect]} tg ON tg.checkpoint_id = c.id"
    )  # fmt: skip


def _normal(rows) -> list[tuple]:
    """created_at in ISO 8601 (index 6), whichever engine read it."""
    return [(*r[:6], stored_time(r[6]), *r[7:]) for r in rows]


def checkpoint_rows(cursor, pod_id: int | None = None) -> list[tuple]:
    """Checkpoints as plain tuples (CHECKPOINT_ROW names the columns), the pod's and parent's
    names joined in, created_at in ISO 8601, processes as JSON text: no ORM objects, so 100,000
    checkpoints load in a fraction of the time. cursor: a Reader or a catalog.sql.Cursor (the
    ORM path passes one of its own session's connection)."""
    cur = _cur(cursor)
    sql, args = _checkpoint_sql(cur.dialect), ()
    if pod_id is not None:
        sql, args = sql + " WHERE c.pod_id = ?", (pod_id,)
    return _normal(cur.execute(sql + " ORDER BY p.name, c.seq", args).fetchall())


def checkpoint_row(cursor, name: str, seq: int | str | None) -> tuple | None:
    """The row of NAME@seq, of NAME@latest (seq None: queries.latest_order) or of NAME@TAG (seq a
    tag's name); None if there is none."""
    cur = _cur(cursor)
    sql = _checkpoint_sql(cur.dialect) + " WHERE p.name = ?"
    if seq is None:
        latest = " ORDER BY (c.kind = 'auto' AND c.id IS DISTINCT FROM p.head_checkpoint_id), c.seq DESC LIMIT 1"
        row = cur.execute(sql + latest, (name,)).fetchone()
    elif isinstance(seq, str):
        tagged = " AND c.id = (SELECT checkpoint_id FROM tags WHERE pod_id = p.id AND name = ?)"
        row = cur.execute(sql + tagged, (name, seq)).fetchone()
    else:
        row = cur.execute(sql + " AND c.seq = ?", (name, seq)).fetchone()
    return _normal([row])[0] if row is not None else None


def pod_id(conn: Reader, name: str) -> int:
    row = conn.execute("SELECT id FROM pods WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise LookupFailed(name)
    return row[0]
