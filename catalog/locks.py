"""Locks that hold across a fleet: PostgreSQL session-level advisory locks, on a connection of
their own for as long as the lock is held (the server drops them if that connection or the host
goes). The embedded catalog has one host, whose local file locks are enough: nothing is done."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import text

from zapckpt.common.errors import Busy


def key_of(name: str) -> int:
    """A signed 64-bit advisory lock key for a name ("pod:web", "store")."""
    return int.from_bytes(hashlib.blake2b(f"zapckpt:{name}".encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def held(catalog, name: str, what: str, wait: float, shared: bool = False) -> Iterator[None]:
    """Hold the fleet-wide lock `name` (shared or exclusive); wait up to `wait` seconds."""
    if catalog.dialect != "postgresql":
        yield
        return
    kind = "_shared" if shared else ""
    key = key_of(name)
    conn = catalog.engine.connect()
    locked = False
    try:
        deadline = time.monotonic() + wait
        while not conn.execute(text(f"SELECT pg_try_advisory_lock{kind}(:k)"), {"k": key}).scalar():
            conn.rollback()
            if time.monotonic() >= deadline:
                raise Busy(f"{what} is busy: another zap command, on this host or another of the fleet, is working "
                           f"on it (waited {wait:g}s)")  # fmt: skip
            time.sleep(0.05)
        conn.commit()
        locked = True
        yield
    finally:
        try:
            if locked:  # the connection goes back to the pool: the lock must not go with it
                conn.execute(text(f"SELECT pg_advisory_unlock{kind}(:k)"), {"k": key})
                conn.commit()
        except Exception:  # noqa: BLE001 - a lost connection: the server dropped the lock with it
            conn.invalidate()
        finally:
            conn.close()
