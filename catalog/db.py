"""Engine and sessions, for SQLite (the embedded default) and PostgreSQL (a fleet's shared
catalog, through psycopg 3). SQLite pragmas are set on every connection (WAL, foreign keys, busy
timeout); the schema is brought to the newest Alembic revision when the catalog is opened, by
one process at a time (a file lock, or an advisory lock in PostgreSQL)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

# Knowing the newest migration lets a normal command skip importing Alembic when the schema is current.
from .fastread import BUSY_TIMEOUT_MS, SCHEMA_HEAD
from .urls import CatalogURL, parse, sqlite_file

# pg_advisory_xact_lock key of a schema migration ("zapckpt" "mig" in ASCII)
MIGRATION_LOCK = 0x7A6170636B6D6967
CONNECT_TIMEOUT_S = 10


def _set_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # FULL: a checkpoint reported durable must survive a power cut.
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def connect_postgresql(url: CatalogURL):
    """A psycopg connection for the URL as the user wrote it (libpq parses it)."""
    import psycopg

    return psycopg.connect(url.text, connect_timeout=CONNECT_TIMEOUT_S, application_name="zap")


def as_url(where: Path | str | CatalogURL) -> CatalogURL:
    if isinstance(where, CatalogURL):
        return where
    if isinstance(where, Path):
        return sqlite_file(where)
    return parse(where)


class Catalog:
    def __init__(self, where: Path | str | CatalogURL):
        self.url = as_url(where)
        if self.url.embedded:
            self.path: Path | None = self.url.path
            self.engine: Engine = create_engine(f"sqlite:///{self.path}")
            event.listen(self.engine, "connect", _set_pragmas)
        else:
            self.path = None
            url = self.url
            # libpq reads the URL itself (every form it accepts), SQLAlchemy only gets connections.
            self.engine = create_engine("postgresql+psycopg://", creator=lambda: connect_postgresql(url),
                                        pool_pre_ping=False)  # fmt: skip
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = False

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url.embedded else "postgresql"

    def analyze(self, *tables: str) -> None:
        """Refresh the planner's statistics of `tables` (after a bulk load, as autovacuum would)."""
        if self.dialect == "postgresql":  # VACUUM outside any transaction: a connection of its own
            with connect_postgresql(self.url) as c:
                c.autocommit = True
                for t in tables:
                    c.execute(f"VACUUM ANALYZE {t}")
            return
        with self.engine.connect() as c:
            for t in tables:
                c.execute(text(f"ANALYZE {t}"))

    def exists(self) -> bool:
        """Whether there is a catalog to read (a SQLite file; a PostgreSQL database always is)."""
        return self.path.exists() if self.path is not None else True

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return _revision(conn)

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_HEAD (creates it on a new catalog)."""
        if self._migrated:
            return
        if self.current_revision() != SCHEMA_HEAD:
            if self.path is not None:
                import fcntl

                # Two commands on a new catalog must not both create the schema.
                with open(self.path.with_name(self.path.name + ".migrate.lock"), "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if self.current_revision() != SCHEMA_HEAD:
                        from .migrate import upgrade

                        upgrade(self.engine)
            else:
                from .migrate import upgrade

                # Hosts of a fleet opening a new catalog at once: one creates it, under a lock
                # the transaction holds (the others wait, then find it current).
                upgrade(self.engine, lock=lambda conn: conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")),
                        current=_revision)  # fmt: skip
        self._migrated = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One session per operation: committed on success, rolled back on any error. An
        operation may commit earlier itself, at the point where its work becomes durable."""
        self.migrate()
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def _revision(conn) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
