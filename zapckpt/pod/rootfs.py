"""Root filesystems for system pods (`zap create/run --rootfs`).

`debian:RELEASE` is built once per pool as a read-only template subvolume (debootstrap
--variant=minbase), so every further pod of that release is an O(1) writable snapshot of it.
The debootstrapped tree is also kept as a tarball in a machine-wide cache
(/var/cache/zapckpt/rootfs, or $ZAP_ROOTFS_CACHE), so a new pool (a test's, a reinstall) unpacks
it in seconds instead of downloading again. `DIR` copies an existing tree (or snapshots it, when
it is a btrfs subvolume of the pool's file system).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from zapckpt.common import proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.system.locks import locked
from zapckpt.system.pool import Pool

RELEASE_RE = re.compile(r"debian:([a-z]+)")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Device nodes a service expects; the pod's /dev is a directory of its root, so these are in
# every snapshot and CRIU finds them again at restore.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def cache_dir() -> Path:
    return Path(os.environ.get("ZAP_ROOTFS_CACHE") or "/var/cache/zapckpt/rootfs")


def mirror() -> str:
    """ZAP_DEBIAN_MIRROR, else the first Debian http URI of this machine's apt sources."""
    if os.environ.get("ZAP_DEBIAN_MIRROR"):
        return os.environ["ZAP_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for f in sources:
        for m in re.finditer(r"(?im)^URIs:\s*(http\S+)", f.read_text(errors="replace")):
            if "security" not in m.group(1):
                return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for m in re.finditer(r"(?m)^deb\s+(?:\[[^\]]*\]\s+)?(http\S+)\s", legacy.read_text(errors="replace")):
            if "security" not in m.group(1):
                return m.group(1)
    return DEFAULT_MIRROR


def parse(spec: str) -> tuple[str, str]:
    """("debian", RELEASE) or ("dir", absolute path)."""
    m = RELEASE_RE.fullmatch(spec)
    if m:
        return "debian", m.group(1)
    if spec.startswith("/") or spec.startswith("."):
        path = Path(spec).resolve()
        if not path.is_dir():
            raise UsageError(f"--rootfs {spec}: no such directory")
        if not (path / "bin").exists() and not (path / "usr" / "bin").is_dir():
            raise UsageError(f"--rootfs {spec}: not a root file system (no /bin or /usr/bin)")
        return "dir", str(path)
    raise UsageError(f"bad --rootfs {spec!r}: expected debian:RELEASE (e.g. debian:bookworm) or a directory")


def _finish_tree(root: Path) -> None:
    """What every pod root needs: its device nodes, /proc and /tmp to mount or use, the log dir."""
    (root / "dev").mkdir(exist_ok=True)
    for name, (major, minor) in DEVICES.items():
        node = root / "dev" / name
        if not node.exists():
            os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(node, 0o666)
    for d in ("proc", "tmp", "dev/shm"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def _template(pool: Pool, release: str) -> Path:
    return pool.path / "templates" / f"debian-{release}"


def ensure_template(pool: Pool, release: str, log: Path) -> Path:
    """The read-only template subvolume of a Debian release, built on first use."""
    tpl = _template(pool, release)
    if tpl.is_dir():
        return tpl
    tpl.parent.mkdir(exist_ok=True)
    with locked(tpl.parent / f".{tpl.name}.lock", f"the {release} template"):
        if tpl.is_dir():
            return tpl
        work = tpl.with_name(f".{tpl.name}.building")
        pool.backend.delete_volume(work)
        pool.backend.create_volume(work)
        try:
            tarball = cache_dir() / f"debian-{release}.tar.zst"
            if tarball.is_file():
                proc.run(["tar", "--zstd", "-xpf", str(tarball), "--xattrs", "--numeric-owner", "-C", str(work)])
            else:
                print(f"zap: building the debian:{release} root with debootstrap from {mirror()} (about a minute, "
                      f"once: cached in {cache_dir()})", file=sys.stderr, flush=True)  # fmt: skip
                res = proc.run(["debootstrap", "--variant=minbase", release, str(work), mirror()], check=False)
                log.write_text(res.stdout + res.stderr)
                if res.returncode != 0:
                    raise ZapError(f"debootstrap of {release} failed (log: {log})")
                # apt's downloads are not part of a root file system.
                shutil.rmtree(work / "var" / "cache" / "apt" / "archives", ignore_errors=True)
                (work / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
                cache_dir().mkdir(parents=True, exist_ok=True)
                part = tarball.with_suffix(".part")
                proc.run(["tar", "--zstd", "-cpf", str(part), "--xattrs", "--numeric-owner", "-C", str(work), "."])
                os.replace(part, tarball)
            _finish_tree(work)
            os.rename(work, tpl)
            pool.backend.set_readonly(tpl)
        except BaseException:
            pool.backend.delete_volume(work)
            raise
    return tpl


def populate(pool: Pool, spec: str, volume: Path, log: Path) -> None:
    """Make `volume` (not existing yet) a pod root from spec."""
    kind, what = parse(spec)
    if kind == "debian":
        pool.backend.clone(ensure_template(pool, what, log), volume)
        return
    src = Path(what)
    if pool.backend.is_volume(src) and os.stat(src).st_dev == os.stat(pool.path).st_dev:
        pool.backend.clone(src, volume)  # a subvolume of the pool's file system: O(1)
    else:
        pool.backend.create_volume(volume)
        proc.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(volume)])
    _finish_tree(volume)
