"""Run Alembic programmatically: the migration scripts ship inside the package, no alembic.ini."""

from __future__ import annotations

from typing import Callable

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "catalog:migrations")
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head", lock: Callable[[Connection], object] | None = None,
            current: Callable[[Connection], str | None] | None = None) -> None:  # fmt: skip
    """Upgrade to revision in one transaction; with lock, taken first inside it (and, with
    current, nothing is done if another process brought the schema there meanwhile)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if lock is not None:
            lock(conn)
            if current is not None and revision == "head" and current(conn) == head_revision():
                return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
