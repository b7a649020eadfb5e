"""Where one host keeps the image store's files, and the store's lock: what the store's operations
(ingest.py, materialize.py, gc.py) need of it. chunkstore.py puts them together.

Two kinds of store:
- local (the embedded default): packs/ in the state directory is the store itself.
- remote (a fleet's, `zap init --store s3://...`): the packs are objects (objects.py) and packs/
  is this host's cache of them, least recently used ones evicted beyond cache_max. A copy is
  fetched whole, checked against the sha256 the catalog keeps, then used.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from catalog import locks as fleet_locks
from zapckpt.store.objects import ObjectStore, pack_key
from zapckpt.system.locks import default_wait, locked

DEFAULT_CACHE_MAX = 4 << 30



class StoreLayout:
    def __init__(self, root: Path, remote: ObjectStore | None = None, cache_max: int | None = None, catalog=None,
                 hash_name: str = "sha256"):  # fmt: skip
        self.hash_name = hash_name  # what names a chunk (store/chunking.py)
        self.root = Path(root)
        self.packs = self.root / "packs"
        self.remote = remote
        self.cache_max = DEFAULT_CACHE_MAX if cache_max is None else cache_max
        self.catalog = catalog

    @property
    def shared(self) -> bool:
        """Hosts of a fleet ingest at once (their chunk rows cannot collide: catalog/chunks.py);
        only garbage collection needs the store to itself."""
        return self.catalog is not None and self.catalog.dialect == "postgresql"

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Ingest and restore hold it shared where the catalog lets several writers add chunks
        (PostgreSQL), else exclusive; release and garbage collection always exclusive, across
        the fleet: a chunk found unreferenced must not gain a reference while it is dropped."""
        mine = exclusive or not self.shared
        wait = default_wait()
        with locked(self.root / "store.lock", "the image store", wait, shared=not mine):
            if self.catalog is not None:
                with fleet_locks.held(self.catalog, "store", "the image store", wait, shared=not mine):
                    yield
            else:
                yield

    def pack_path(self, name: str) -> Path:
        return self.packs / name

    # --- a remote store's copies here -------------------------------------------------------
    def publish(self, name: str) -> None:
        """Put a new pack (already fsynced here) into the remote store."""
        if self.remote is not None:
            self.remote.put_file(pack_key(name), self.pack_path(name))

    def unpublish(self, names: Iterable[str]) -> None:
        """Delete packs from the remote store (and from here)."""
        names = list(names)
        if self.remote is not None and names:
            self.remote.delete([pack_key(n) for n in names])
        for n in names:
            self.pack_path(n).unlink(missing_ok=True)

    @contextmanager
    def fetched(self, packs: dict[str, str | None]) -> Iterator[None]:
        """The packs ({name: sha256}) are here for as long as this is held: fetched first where
        only the remote store has them (and checked), kept from eviction meanwhile."""
        if self.remote is None:
            yield
            return
        fd = self._fetch(packs)
        try:
            yield
        finally:
            os.close(fd)
        self.evict(keep=set(packs))

    def _fetch(self, packs: dict[str, str | None]) -> int:
        """Fetch what is missing; returns the cache lock's fd, held shared (no eviction meanwhile)."""
        self.packs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "cache.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            now = time.time()
            for name, digest in sorted(packs.items()):
                path = self.pack_path(name)
                if not path.exists():
                    self.remote.get_file(pack_key(name), path, digest)  # checked as it arrives
                os.utime(path, (now, now))  # used: the last to be evicted
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def prefetching(self, packs: dict[str, str | None]) -> Iterator[None]:
        """Fetch the packs a remote store has in the background while the caller does other work
        (a restore receives the volume meanwhile). Joined at the end; a failure is not raised
        here: fetched() tries again and says what went wrong."""
        if self.remote is None or not packs:
            yield
            return

        def run():
            try:
                os.close(self._fetch(packs))
            except BaseException:  # noqa: BLE001 - reported by fetched()
                pass

        t = threading.Thread(target=run, name="zap-prefetch", daemon=True)
        t.start()
        try:
            yield
        finally:
            t.join()

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Least recently used copies go until the cache holds at most cache_max (never those in
        keep, never while another command holds copies it is using)."""
        if self.remote is None or not self.packs.is_dir():
            return []
        fd = os.open(self.root / "cache.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # in use: the next command evicts
            entries = []
            for e in os.scandir(self.packs):
                if e.is_file() and not e.name.startswith("."):
                    st = e.stat()
                    entries.append((st.st_mtime, e.name, st.st_size))
            total = sum(size for _t, _n, size in entries)
            gone = []
            for _t, name, size in sorted(entries):
                if total <= self.cache_max:
                    break
                if name in keep:
                    continue
                self.pack_path(name).unlink(missing_ok=True)
                total -= size
                gone.append(name)
            return gone
        finally:
            os.close(fd)
