"""What every operation needs: the state directory, the catalog, this host of it, and (lazily)
the pool."""

from __future__ import annotations

import secrets
import socket
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Iterator

from catalog import Catalog, Host, hosts, locks, queries
from zapckpt import names
from zapckpt.common.errors import NotFound
from zapckpt.system.locks import default_wait, locked
from zapckpt.system.pool import Pool, ensure_pool

from .net import podnet
from .state import StateDir


class Context:
    def __init__(self, state: StateDir | None = None):
        self.state = state or StateDir.from_env()
        self.state.ensure()
        self.catalog = Catalog(self.state.catalog_location())
        self._pool: Pool | None = None
        self._held: dict[str, int] = {}  # pod locks this context holds, and how deep

    @cached_property
    def host(self) -> Host:
        """This state directory's host in the catalog (made on first use; config.json keeps its
        name and token)."""
        cfg = self.state.config()
        with self.catalog.session() as s:
            host = hosts.register(s, cfg.get("host"), cfg.get("token"), str(self.state.root), self.catalog.url.embedded,
                                  default_name=default_host_name(), new_token=secrets.token_hex(16))  # fmt: skip
            hosts.touch(s, host, cfg.get("address"))
        if (cfg.get("host"), cfg.get("token")) != (host.name, host.token):
            self.state.write_config({**cfg, "host": host.name, "token": host.token})
        return host

    @property
    def host_id(self) -> int:
        return self.host.id

    @cached_property
    def store(self):
        """The image store: this host's directory, or the fleet's object store with this host's
        cache of it (zapckpt/store/layout.py)."""
        from catalog import FLEET
        from zapckpt.store.chunking import NEW_STORES
        from zapckpt.store.chunkstore import ChunkStore
        from zapckpt.store.objects import ObjectStore, parse_url

        with self.catalog.session() as s:
            url = queries.get_setting(s, FLEET, "store.url")
            endpoint = queries.get_setting(s, FLEET, "store.endpoint")
            cache = queries.get_setting(s, self.host_id, "store.cache_max")
            hash_name = queries.store_hash(s, NEW_STORES)
        remote = ObjectStore(parse_url(url, endpoint)) if url else None
        return ChunkStore(self.state.root / "store", remote, int(cache) if cache else None, self.catalog, hash_name)

    def ensure_pool(self) -> Pool:
        """The pool: made on first use, mounted again after a reboot or `zap deinit`."""
        if self._pool is None:
            self._pool = ensure_pool(self.state, self.catalog, self.host_id)
        return self._pool

    @property
    def pool(self) -> Pool:
        return self.ensure_pool()

    @cached_property
    def net(self) -> podnet.NetConfig:
        """The bridge and subnet of this host (chosen once, kept in the catalog)."""
        with self.catalog.session() as s:
            return podnet.config(s, self.host_id, self.state.root)

    @contextmanager
    def pod_lock(self, name: str, wait: float | None = None, own: bool = True) -> Iterator[None]:
        """The pod's lock, held across the fleet; an operation made of others (guard:
        checkpoint, command, checkpoint or restore) holds it throughout, and the inner ones take
        it again for free. own: the pod (if it exists) must be this host's: another host's pod
        is only read (a branch of its checkpoint), never changed from here."""
        if not names.is_valid(name):  # the lock file's name: never a path of the user's choosing
            raise NotFound(f"no pod named {name!r} (see `zap ps`)")
        if name in self._held:
            self._held[name] += 1
            try:
                yield
            finally:
                self._held[name] -= 1
            return
        wait = default_wait() if wait is None else wait
        t0 = time.monotonic()
        with locked(self.state.locks / f"{name}.lock", f"pod {name!r}", wait):
            with locks.held(self.catalog, f"pod:{name}", f"pod {name!r}", max(0.0, wait - (time.monotonic() - t0))):
                if own:
                    self.check_own(name)
                self._held[name] = 1
                try:
                    yield
                finally:
                    del self._held[name]

    def check_own(self, name: str) -> None:
        """Refuse (one line) to act on a pod another host runs, or one adopted away from this host."""
        with self.catalog.session() as s:
            pod = queries.find_pod(s, name)
            why = hosts.fenced(s, pod, self.host) if pod is not None else None
        if why is not None:
            raise why

    @contextmanager
    def ref_lock(self, ref: str, wait: float | None = None, own: bool = True) -> Iterator[None]:
        """The lock of the pod a checkpoint reference belongs to."""
        with self.catalog.session() as s:
            name = queries.resolve_ref(s, ref).pod.name
        with self.pod_lock(name, wait, own=own):
            yield

    def log_path(self, pod: str, what: str) -> Path:
        return self.state.logs / f"{pod}-{what}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}.log"

    def close(self) -> None:
        self.catalog.dispose()


def default_host_name() -> str:
    """The machine's host name, as a valid host name of the catalog (`zap init --host` picks another)."""
    name = (socket.gethostname() or "localhost").split(".")[0].lower()
    return name if names.is_valid(name) else "localhost"
