"""NILFS2: the file system is a continuous log of checkpoints; `mkcp -s -p` turns the current
state into a snapshot (kept from the cleaner) and prints its number, in a few milliseconds and
without copying anything, which is what the frozen window wants.

A pool is one NILFS2 file system (a device, or a loop file) mounted at POOL; volumes are plain
directories POOL/pods/NAME. A snapshot covers the whole file system, so a checkpoint records
its number and the volume's place in it: a checkpoint's `snapshot_path` is
`POOL-cp/N/pods/NAME`, valid once snapshot N is mounted read-only there (`mount -o ro,cp=N`),
which happens on demand (ensure_browsable). Deleting a checkpoint turns its snapshot back into
a plain checkpoint (`chcp cp`), which nilfs_cleanerd may then reclaim.

Not O(1) here (the capabilities say so): a writable clone of a snapshot is a copy (restore in
place and branch copy the files back from the mounted snapshot).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from zapckpt import proc

from .base import BackendError, Capabilities, SnapshotBackend, SnapshotInfo

NILFS_SUPER_MAGIC = 0x3434
CP_PATH = re.compile(r"^(?P<root>.+)-cp/(?P<cp>\d+)(?:/(?P<rel>.*))?$")


def _fs_magic(path: Path) -> int:
    return int(proc.run(["stat", "-f", "-c", "%t", str(path)]).stdout.strip(), 16)


def _mounted() -> dict[str, tuple[str, str, str]]:
    """mount point -> (source, fstype, options)"""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, source, opts = (post.split() + ["", "", ""])[:3]
        out[pre.split()[4]] = (source, fstype, opts)
    return out


class NilfsBackend(SnapshotBackend):
    name = "nilfs"
    capabilities = Capabilities(writable_clones=False, in_place_rollback=True, diff=False)

    # --- the pool ------------------------------------------------------------------------------
    def check_pool(self, path: Path) -> None:
        if not path.is_dir():
            raise BackendError(f"pool directory {path} does not exist")
        if _fs_magic(path) != NILFS_SUPER_MAGIC:
            raise BackendError(f"{path} is not a mounted NILFS2 file system")

    def make_loop_pool(self, image: Path, mountpoint: Path, size: str) -> None:
        image.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["truncate", "-s", size, str(image)])
        try:
            proc.run(["mkfs.nilfs2", "-q", "-f", "-L", "zapckpt", str(image)])
        except Exception:
            image.unlink(missing_ok=True)
            raise
        self.mount_loop_pool(image, mountpoint)

    def make_device_pool(self, device: Path, mountpoint: Path) -> None:
        """Use a block device: formatted unless it already holds NILFS2."""
        if not device.exists():
            raise BackendError(f"device {device} does not exist")
        fstype = proc.run(["blkid", "-o", "value", "-s", "TYPE", str(device)], check=False).stdout.strip()
        if fstype != "nilfs2":
            proc.run(["mkfs.nilfs2", "-q", "-f", "-L", "zapckpt", str(device)])
        self.mount_device_pool(device, mountpoint)

    def mount_loop_pool(self, image: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-t", "nilfs2", "-o", "loop", str(image), str(mountpoint)])

    def mount_device_pool(self, device: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-t", "nilfs2", str(device), str(mountpoint)])

    def unmount_pool(self, mountpoint: Path) -> None:
        cp_root = Path(f"{mountpoint}-cp")
        for mp in sorted(_mounted()):
            if mp.startswith(f"{cp_root}/"):
                proc.run(["umount", mp], check=False)
        proc.run(["umount", str(mountpoint)])

    def _device(self, path: Path) -> str:
        return proc.run(["findmnt", "-n", "-o", "SOURCE", "-T", str(path)]).stdout.strip()

    def _pool_of(self, path: Path) -> Path:
        return Path(proc.run(["findmnt", "-n", "-o", "TARGET", "-T", str(path)]).stdout.strip())

    # --- volumes -------------------------------------------------------------------------------
    def create_volume(self, path: Path) -> None:
        self.check_create_volume(path)
        path.mkdir()

    def delete_volume(self, path: Path) -> None:
        m = CP_PATH.match(str(path))
        if m and not str(path).startswith(f"{m['root']}/"):
            self._release_snapshot(Path(m["root"]), int(m["cp"]))
            return
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def is_volume(self, path: Path) -> bool:
        return path.is_dir()

    def set_readonly(self, path: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, os.lstat(p).st_mode & ~0o222)

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot_argv(self, src: Path, dst: Path) -> list[str]:
        """Inside the frozen window: mkcp, then note its number and the volume's place in dst."""
        pool = self._pool_of(src)
        rel = src.relative_to(pool)
        script = 'n=$(mkcp -s -p "$1") && printf "%s\\n%s\\n%s\\n" "$n" "$2" "$3" > "$4"'
        return ["sh", "-c", script, "sh", self._device(pool), str(pool), str(rel), str(dst)]

    def snapshot(self, src: Path, dst: Path) -> SnapshotInfo:
        self.check_snapshot(src, dst)
        proc.run(self.snapshot_argv(src, dst))
        return self.describe(dst)

    def describe(self, path: Path) -> SnapshotInfo:
        if path.is_file():
            cp, pool, rel = path.read_text().split("\n")[:3]
            path.unlink()  # the catalog row holds this from now on
            return SnapshotInfo(f"{pool}-cp/{cp}/{rel}", int(cp))
        m = CP_PATH.match(str(path))
        if not m:
            raise BackendError(f"{path} is not a NILFS2 snapshot of a zap pool")
        return SnapshotInfo(str(path), int(m["cp"]))

    def ensure_browsable(self, path: Path) -> None:
        """Mount the snapshot a checkpoint path lies in (read-only, once, until the pool goes)."""
        m = CP_PATH.match(str(path))
        if not m:
            return
        pool, cp = Path(m["root"]), m["cp"]
        mp = Path(f"{pool}-cp/{cp}")
        if str(mp) in _mounted():
            return
        mp.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-t", "nilfs2", "-o", f"ro,cp={cp}", self._device(pool), str(mp)])

    def _release_snapshot(self, pool: Path, cp: int) -> None:
        mp = Path(f"{pool}-cp/{cp}")
        if str(mp) in _mounted():
            proc.run(["umount", str(mp)])
        if mp.is_dir():
            mp.rmdir()
        # A snapshot goes back to being a plain checkpoint, which the cleaner may reclaim.
        proc.run(["chcp", "cp", self._device(pool), str(cp)], check=False)

    def clone(self, snap: Path, dst: Path) -> None:
        """A copy (NILFS2 has no writable snapshots): restore and branch copy the files back."""
        self.check_clone(snap, dst)
        self.ensure_browsable(snap)
        dst.mkdir()
        proc.run(["cp", "-a", f"{snap}/.", str(dst)])

    def check_clone(self, snap: Path, dst: Path) -> None:
        if dst.exists():
            raise BackendError(f"{dst} already exists")

    def flush(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            os.sync()
        finally:
            os.close(fd)
