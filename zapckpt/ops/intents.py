"""Intent records: an operation writes (and commits: SQLite with synchronous=FULL) what it is
about to change before its first change, adds what it learns on the way, and removes the record
after its last change. A record whose owner process is gone marks an operation that was
interrupted (SIGKILL, power loss); recovery.py finishes or undoes it from the record.

A clean failure undoes its own work where it happens (the operations' except clauses); the
record only matters when the process itself dies.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from catalog import intents as rows
from zapckpt.system import procinfo


class Record:
    def __init__(self, ctx, op: str, pod: str, data: dict[str, Any]):
        self.ctx, self.id, self.op, self.pod, self.data = ctx, uuid.uuid4().hex, op, pod, dict(data)
        self.kept = False

    def keep(self) -> None:
        """The operation failed and could not undo all it made (the store out of reach): the
        record stays, for recovery to finish the undoing once this zap has exited."""
        self.kept = True

    def adopt(self) -> None:
        """This process owns the operation now (the background half of a restore, forked after
        it reported: system/detach.py): recovery leaves it alone while this one lives."""
        me = os.getpid()
        with self.ctx.catalog.session() as s:
            rows.set_owner(s, self.id, me, procinfo.starttime(me) or 0)

    def note(self, **data: Any) -> None:
        """Add to the record, durably, before acting on it (the operation's own session must
        have nothing uncommitted: see recorded)."""
        self.data.update(data)
        with self.ctx.catalog.session() as s:
            rows.set_data(s, self.id, self.data)


@contextmanager
def operations_lock(ctx, exclusive: bool = False) -> Iterator[None]:
    """Shared by every operation that makes objects in the pool or the store; exclusive for a
    sweep of unrecorded objects (recovery.sweep), which must not take a live one's for garbage."""
    ctx.state.locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(ctx.state.locks / "operations.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def recorded(ctx, op: str, pod: str, session=None, **data: Any) -> Iterator[Record]:
    """The intent record of one operation, for the time it runs. The record is written in a
    session of its own; the operation's `session`, if it has one, is committed first (SQLite
    has one writer: its pending writes would hold the record back) and rolled back, if the
    operation failed without doing so, before the record goes."""
    rec = Record(ctx, op, pod, data)
    me = os.getpid()
    host_id = ctx.host_id
    if session is not None:
        session.commit()
    with operations_lock(ctx):
        with ctx.catalog.session() as s:
            rows.add(s, rec.id, op, pod, host_id, me, procinfo.starttime(me) or 0, rec.data)
        ok = False
        try:
            yield rec
            ok = True
        except BaseException:
            if session is not None:
                try:
                    session.rollback()
                except Exception:  # noqa: BLE001 - its connection is gone (the catalog failed): nothing to roll back
                    pass
            raise
        finally:
            if not rec.kept:
                try:
                    with ctx.catalog.session() as s:
                        rows.remove(s, rec.id)
                except Exception:  # noqa: BLE001 - the catalog is what failed: recovery settles the record later
                    if ok:
                        raise


def owner_alive(row) -> bool:
    return procinfo.is_alive(row.owner_pid, row.owner_start)
