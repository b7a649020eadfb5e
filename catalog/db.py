"""Engine and sessions. SQLite pragmas are set on every connection (WAL, foreign keys, busy
timeout); the schema is brought to the newest Alembic revision when the catalog is opened."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

# Knowing the newest migration lets a normal command skip importing Alembic when the schema is current.
from .fastread import BUSY_TIMEOUT_MS, SCHEMA_HEAD


def _set_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # FULL: a checkpoint reported durable must survive a power cut.
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.engine: Engine = create_engine(f"sqlite:///{self.path}")
        event.listen(self.engine, "connect", _set_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = False

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_HEAD (creates it on a new catalog)."""
        if self._migrated:
            return
        if self.current_revision() != SCHEMA_HEAD:
            import fcntl

            # Two commands on a new catalog must not both create the schema.
            with open(self.path.with_name(self.path.name + ".migrate.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self.current_revision() != SCHEMA_HEAD:
                    from .migrate import upgrade

                    upgrade(self.engine)
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
