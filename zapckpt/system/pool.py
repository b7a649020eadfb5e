"""The storage pool: where pod volumes and snapshots live.

By default a sparse loop-file btrfs inside the state directory (as LXD does for its default
pool), created and mounted on first use and re-mounted after a reboot; `zap init --pool DIR`
uses an existing btrfs directory instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from catalog import Catalog, queries
from fsbackend import SnapshotBackend, get_backend
from zapckpt.common import mountinfo, proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.state import StateDir
from zapckpt.system.locks import locked

DEFAULT_SIZE = "8G"


@dataclass(frozen=True)
class Pool:
    path: Path
    kind: str  # "loop" (embedded image file) or "dir" (an existing btrfs directory)
    backend: SnapshotBackend

    @property
    def pods(self) -> Path:
        return self.path / "pods"

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    def volume_of(self, name: str) -> Path:
        return self.pods / name


def _is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _read(catalog: Catalog, host_id: int) -> tuple[str | None, str | None, str]:
    with catalog.session() as s:
        return (
            queries.get_setting(s, host_id, "pool.kind"),
            queries.get_setting(s, host_id, "pool.path"),
            queries.get_setting(s, host_id, "pool.backend") or "btrfs",
        )


def init_pool(state: StateDir, catalog: Catalog, host_id: int, size: str | None = None, pool_dir: str | None = None,
              backend_name: str | None = None, device: str | None = None) -> Pool:  # fmt: skip
    """Explicit `zap init`; a second call with the same settings just makes sure it is mounted."""
    if sum(x is not None for x in (size, pool_dir, device)) > 1:
        raise UsageError("--size, --pool and --device exclude each other")
    if backend_name not in (None, "btrfs", "nilfs"):
        raise UsageError(f"unknown backend {backend_name!r} (btrfs or nilfs)")
    if size and not re.fullmatch(r"\d+[KMGT]?", size):
        raise UsageError(f"bad --size {size!r}: use a number with an optional K, M, G or T suffix")
    state.ensure()
    with locked(state.locks / ".pool.lock", "the pool"):
        kind, path, known_backend = _read(catalog, host_id)
        if kind is not None and backend_name and backend_name != known_backend:
            raise UsageError(f"this state directory already uses a {known_backend} pool; run `zap deinit --purge` first")
        backend = get_backend(known_backend if kind is not None else backend_name or "btrfs")
        if kind is None:
            if device:
                if not backend.capabilities.device_pool:
                    raise UsageError(f"--device goes with --backend nilfs (a {backend.name} pool is a loop file or --pool DIR)")
                kind, path = "device", str(state.default_pool_mount)
                _anchor(state, kind, Path(path), catalog, host_id)
                backend.make_device_pool(Path(device), Path(path))
                with catalog.session() as s:
                    queries.set_setting(s, host_id, "pool.device", str(Path(device).absolute()))
            elif pool_dir:
                p = Path(pool_dir).absolute()
                backend.check_pool(p)
                kind, path = "dir", str(p)
            else:
                kind, path = "loop", str(state.default_pool_mount)
                if not state.pool_image.exists():
                    _anchor(state, kind, Path(path), catalog, host_id)
                    backend.make_loop_pool(state.pool_image, Path(path), size or DEFAULT_SIZE)
            with catalog.session() as s:
                queries.set_setting(s, host_id, "pool.kind", kind)
                queries.set_setting(s, host_id, "pool.path", path)
                queries.set_setting(s, host_id, "pool.backend", backend.name)
        elif pool_dir and Path(pool_dir).absolute() != Path(path):
            raise UsageError(f"this state directory already uses the pool at {path}; run `zap deinit --purge` first")
        elif size and kind == "loop" and state.pool_image.exists() and _bytes(size) != state.pool_image.stat().st_size:
            have = state.pool_image.stat().st_size
            raise UsageError(f"the pool exists already, {_human(have)}: --size applies when a pool is made "
                             f"(`zap deinit --purge` first, which deletes every pod and checkpoint)")  # fmt: skip
        pool = Pool(Path(path), kind, backend)
        _mount(state, pool, catalog, host_id)
        return pool


def _bytes(size: str) -> int:
    """A --size (checked above) in bytes, as truncate reads it (K, M, G, T: powers of 1024)."""
    unit = "KMGT".find(size[-1]) + 1 if size[-1] in "KMGT" else 0
    return int(size.rstrip("KMGT")) << (10 * unit)


def _human(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        shift = 10 * ("KMGT".index(unit) + 1)
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


ANCHOR = "pool.anchor"  # setting: zap made the state directory a shared mount of its own


def _anchor(state: StateDir, kind: str, path: Path, catalog: Catalog, host_id: int) -> None:
    """A pool zap mounts goes on a shared mount (the state directory bound onto itself), so
    that its unmount reaches the pods' mount namespaces, which follow the host's unmounts
    (slave propagation), even where the host's root is private (no systemd): a pod must not pin
    a pool whose state directory is taken down (`zap deinit`), nor keep its loop device."""
    if kind not in ("loop", "device") or not (str(path) + "/").startswith(str(state.root) + "/"):
        return
    if mountinfo.find(state.root) is None:
        proc.run(["mount", "--bind", str(state.root), str(state.root)])
        with catalog.session() as s:
            queries.set_setting(s, host_id, ANCHOR, "1")
    proc.run(["mount", "--make-shared", str(state.root)])


def _mount(state: StateDir, pool: Pool, catalog: Catalog, host_id: int) -> None:
    if pool.kind in ("loop", "device") and not _is_mounted(pool.path):
        _anchor(state, pool.kind, pool.path, catalog, host_id)
    if pool.kind == "loop" and not _is_mounted(pool.path):
        if not state.pool_image.exists():
            raise ZapError(f"pool image {state.pool_image} is missing; run `zap deinit --purge` and `zap init`")
        pool.backend.mount_loop_pool(state.pool_image, pool.path)
    elif pool.kind == "device" and not _is_mounted(pool.path):
        with catalog.session() as s:
            device = queries.get_setting(s, host_id, "pool.device")
        pool.backend.mount_device_pool(Path(device), pool.path)
    pool.backend.check_pool(pool.path)
    for d in (pool.pods, pool.snapshots):
        d.mkdir(exist_ok=True)
    pool.backend.after_mount(pool.path)


def ensure_pool(state: StateDir, catalog: Catalog, host_id: int) -> Pool:
    """What every pool-using command calls: init on first use, re-mount after a reboot."""
    kind, path, backend_name = _read(catalog, host_id) if catalog.exists() else (None, None, "btrfs")
    if kind is None:
        return init_pool(state, catalog, host_id)
    pool = Pool(Path(path), kind, get_backend(backend_name))
    if pool.kind in ("loop", "device") and not _is_mounted(pool.path):
        with locked(state.locks / ".pool.lock", "the pool"):
            _mount(state, pool, catalog, host_id)
    return pool


def existing_pool(state: StateDir, catalog: Catalog, host_id: int) -> Pool | None:
    """The configured pool without creating or mounting anything (for deinit and doctor)."""
    if not catalog.exists():
        return None
    kind, path, backend_name = _read(catalog, host_id)
    if kind is None:
        return None
    return Pool(Path(path), kind, get_backend(backend_name))


def unmount_pool(state: StateDir, pool: Pool, catalog: Catalog, host_id: int) -> None:
    if pool.kind in ("loop", "device") and _is_mounted(pool.path):
        try:
            pool.backend.unmount_pool(pool.path)
        except proc.CommandError as e:
            raise ZapError(f"cannot unmount the pool at {pool.path}: {e.reason()}") from None
    with catalog.session() as s:
        ours = queries.get_setting(s, host_id, ANCHOR) == "1"
    if ours and mountinfo.find(state.root) is not None:
        try:
            # Lazily: this very process (and a view's server) may hold the catalog open through it.
            proc.run(["umount", "--lazy", str(state.root)])
        except proc.CommandError as e:
            raise ZapError(f"cannot unmount {state.root} (bound onto itself for the pool): {e.reason()}") from None
