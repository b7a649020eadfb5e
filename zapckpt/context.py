"""What every operation needs: the state directory, the catalog, and (lazily) the pool."""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Iterator

from catalog import Catalog, queries
from zapckpt import names
from zapckpt.common.errors import NotFound
from zapckpt.system.locks import locked
from zapckpt.system.pool import Pool, ensure_pool

from .net import podnet
from .state import StateDir


class Context:
    def __init__(self, state: StateDir | None = None):
        self.state = state or StateDir.from_env()
        self.state.ensure()
        self.catalog = Catalog(self.state.catalog_db)
        self._pool: Pool | None = None
        self._held: dict[str, int] = {}  # pod locks this context holds, and how deep

    def ensure_pool(self) -> Pool:
        """The pool: made on first use, mounted again after a reboot or `zap deinit`."""
        if self._pool is None:
            self._pool = ensure_pool(self.state, self.catalog)
        return self._pool

    @property
    def pool(self) -> Pool:
        return self.ensure_pool()

    @cached_property
    def net(self) -> podnet.NetConfig:
        """The bridge and subnet of this state directory (chosen once, kept in the catalog)."""
        with self.catalog.session() as s:
            return podnet.config(s, self.state.root)

    @contextmanager
    def pod_lock(self, name: str, wait: float | None = None) -> Iterator[None]:
        """The pod's lock; an operation made of others (guard: checkpoint, command, checkpoint
        or restore) holds it throughout, and the inner ones take it again for free."""
        if not names.is_valid(name):  # the lock file's name: never a path of the user's choosing
            raise NotFound(f"no pod named {name!r} (see `zap ps`)")
        if name in self._held:
            self._held[name] += 1
            try:
                yield
            finally:
                self._held[name] -= 1
            return
        with locked(self.state.locks / f"{name}.lock", f"pod {name!r}", wait):
            self._held[name] = 1
            try:
                yield
            finally:
                del self._held[name]

    @contextmanager
    def ref_lock(self, ref: str, wait: float | None = None) -> Iterator[None]:
        """The lock of the pod a checkpoint reference belongs to."""
        with self.catalog.session() as s:
            name = queries.resolve_ref(s, ref).pod.name
        with self.pod_lock(name, wait):
            yield

    def log_path(self, pod: str, what: str) -> Path:
        return self.state.logs / f"{pod}-{what}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}.log"

    def close(self) -> None:
        self.catalog.dispose()
