"""NILFS2: the file system is a continuous log of checkpoints; `mkcp -s -p` turns the current
state into a snapshot (kept from the cleaner) and prints its number, in a few milliseconds and
without copying anything, which is what the frozen window wants.

A pool is one NILFS2 file system (a device, or a loop file) mounted at POOL; volumes are plain
directories POOL/pods/NAME. A snapshot covers the whole file system, so a checkpoint records
its number and the volume's place in it: a checkpoint's `snapshot_path` is
`POOL-cp/N/pods/NAME`, valid once snapshot N is mounted read-only there (`mount -o ro,cp=N`),
which happens on demand (ensure_browsable). Deleting a checkpoint turns its snapshot back into
a plain checkpoint (`chcp cp`), which nilfs_cleanerd may then reclaim.

A branch's volume is O(1): an overlay whose lower layer is the mounted snapshot and whose upper
and work directories live on the pool, in POOL/.layers/NAME (with a `lower` file naming the
snapshot). NILFS2 has no xattrs, so overlayfs runs without index, metacopy and redirects. A
checkpoint of such a branch captures its upper directory with the same `mkcp`; it is browsed as a
read-only overlay of that upper (in snapshot N) over the branch's lower: `POOL-cp/N+NAME`.
Restore in place copies the files back instead (a plain directory again): later checkpoints of
the pod then stand alone instead of stacking one more layer each time.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from zapckpt.common import mountinfo, proc

from .base import BackendError, Capabilities, SnapshotBackend, SnapshotInfo

NILFS_SUPER_MAGIC = 0x3434
CP_PATH = re.compile(r"^(?P<root>.+)-cp/(?P<cp>\d+)(?:/(?P<rel>.*))?$")
OVL_PATH = re.compile(r"^(?P<root>.+)-cp/(?P<cp>\d+)\+(?P<name>[^/]+)$")
LAYERS = ".layers"


def _mounted() -> dict[str, tuple[str, str, str]]:
    """mount point -> (source, fstype, options)"""
    return {m.point: (m.source, m.fstype, m.super_options) for m in mountinfo.mounts()}


class NilfsBackend(SnapshotBackend):
    name = "nilfs"
    capabilities = Capabilities(writable_clones=True, in_place_rollback=True, diff=False, send_stream=False,
                                device_pool=True, snapshot_dirs=False)  # fmt: skip
    fs_name, magic, mkfs = "NILFS2", NILFS_SUPER_MAGIC, ["mkfs.nilfs2", "-q", "-f", "-L", "zapckpt"]

    # --- the pool ------------------------------------------------------------------------------
    def make_device_pool(self, device: Path, mountpoint: Path) -> None:
        """Use a block device: formatted unless it already holds NILFS2."""
        if not device.exists():
            raise BackendError(f"device {device} does not exist")
        fstype = proc.run(["blkid", "-o", "value", "-s", "TYPE", str(device)], check=False).stdout.strip()
        if fstype != "nilfs2":
            proc.run([*self.mkfs, str(device)])
        self.mount_device_pool(device, mountpoint)

    def mount_loop_pool(self, image: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-t", "nilfs2", "-o", "loop", str(image), str(mountpoint)])

    def mount_device_pool(self, device: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-t", "nilfs2", str(device), str(mountpoint)])

    def unmount_pool(self, mountpoint: Path) -> None:
        # Branch overlays first, then snapshot views stacked on snapshots, then the snapshots.
        mounts = sorted(_mounted(), reverse=True)
        order = [m for m in mounts if m.startswith(f"{mountpoint}/")]
        order += [m for m in mounts if m.startswith(f"{mountpoint}-cp/") and "+" in m]
        order += [m for m in mounts if m.startswith(f"{mountpoint}-cp/") and "+" not in m]
        for mp in order:
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
        if path.is_file():
            # The note of a snapshot the frozen-window hook made (not described yet): what was
            # really created is that mkcp checkpoint.
            cp, pool = path.read_text().split("\n")[:2]
            path.unlink()
            self._release_snapshot(Path(pool), int(cp))
            return
        m = OVL_PATH.match(str(path))
        if m:
            if str(path) in _mounted():
                proc.run(["umount", str(path)], check=False)
            if path.is_dir():
                path.rmdir()
            self._release_snapshot(Path(m["root"]), int(m["cp"]))
            return
        m = CP_PATH.match(str(path))
        if m and not str(path).startswith(f"{m['root']}/"):
            self._release_snapshot(Path(m["root"]), int(m["cp"]))
            return
        layers = self._layers(path)
        if layers.is_dir():
            if str(path) in _mounted():
                proc.run(["umount", str(path)])
            shutil.rmtree(layers)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    # --- branches: overlays on a snapshot -----------------------------------------------------
    @staticmethod
    def _layers(volume: Path) -> Path:
        return volume.parent.parent / LAYERS / volume.name

    def _mount_overlay(self, volume: Path) -> None:
        layers = self._layers(volume)
        lower = Path((layers / "lower").read_text().strip())
        self.ensure_browsable(lower)
        opts = f"lowerdir={lower},upperdir={layers / 'upper'},workdir={layers / 'work'}"
        proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(volume)])

    def branch_volume(self, snap: Path, dst: Path) -> None:
        """O(1): an overlay on the (mounted) snapshot, its changes in POOL/.layers/NAME."""
        self.check_clone(snap, dst)
        self.ensure_browsable(snap)
        layers = self._layers(dst)
        if layers.exists():
            shutil.rmtree(layers)
        (layers / "upper").mkdir(parents=True)
        (layers / "work").mkdir()
        (layers / "lower").write_text(f"{snap}\n")
        dst.mkdir()
        try:
            self._mount_overlay(dst)
        except Exception:
            shutil.rmtree(layers, ignore_errors=True)
            dst.rmdir()
            raise

    def rename_volume(self, src: Path, dst: Path) -> None:
        layers = self._layers(src)
        if not layers.is_dir():
            os.rename(src, dst)
            return
        if str(src) in _mounted():
            proc.run(["umount", str(src)])
        os.rename(src, dst)
        os.rename(layers, self._layers(dst))
        self._mount_overlay(dst)

    def after_mount(self, pool: Path) -> None:
        """After a reboot: put the branches' overlays back."""
        root = pool / LAYERS
        mounted = _mounted()
        for layers in sorted(root.iterdir()) if root.is_dir() else []:
            volume = pool / "pods" / layers.name
            if volume.is_dir() and str(volume) not in mounted:
                self._mount_overlay(volume)

    def is_volume(self, path: Path) -> bool:
        return path.is_dir()

    def set_readonly(self, path: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, os.lstat(p).st_mode & ~0o222)

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot_argv(self, src: Path, dst: Path, host_pid: int | None = None) -> list[str]:
        """Inside the frozen window: mkcp, then note its number and the volume's place in dst."""
        pool = self._pool_of(src.parent)  # src itself may be a branch's overlay mount
        # A branch's volume is an overlay: its own files are the upper directory, on the pool.
        rel = f"+{src.name}" if self._layers(src).is_dir() else str(src.relative_to(pool))
        script = 'n=$(mkcp -s -p "$1") && printf "%s\\n%s\\n%s\\n" "$n" "$2" "$3" > "$4"'
        # mkcp finds the file system through the mount table: it runs in ours.
        enter = ["nsenter", f"--mount=/proc/{host_pid}/ns/mnt", "--"] if host_pid else []
        return [*enter, "sh", "-c", script, "sh", self._device(pool), str(pool), str(rel), str(dst)]

    def snapshot(self, src: Path, dst: Path) -> SnapshotInfo:
        self.check_snapshot(src, dst)
        proc.run(self.snapshot_argv(src, dst))
        return self.describe(dst)

    def describe(self, path: Path) -> SnapshotInfo:
        if path.is_file():
            cp, pool, rel = path.read_text().split("\n")[:3]
            path.unlink()  # the catalog row holds this from now on
            if rel.startswith("+"):
                return SnapshotInfo(f"{pool}-cp/{cp}{rel}", int(cp))
            return SnapshotInfo(f"{pool}-cp/{cp}/{rel}", int(cp))
        m = OVL_PATH.match(str(path)) or CP_PATH.match(str(path))
        if not m:
            raise BackendError(f"{path} is not a NILFS2 snapshot of a zap pool")
        return SnapshotInfo(str(path), int(m["cp"]))

    def ensure_browsable(self, path: Path) -> None:
        """Mount the snapshot a checkpoint path lies in (read-only, once, until the pool goes);
        for a branch's checkpoint, the read-only overlay of its upper layer over its lower."""
        o = OVL_PATH.match(str(path))
        if o:
            if str(path) in _mounted():
                return
            at = Path(f"{o['root']}-cp/{o['cp']}")
            self.ensure_browsable(at)
            layers = at / LAYERS / o["name"]
            lower = Path((layers / "lower").read_text().strip())
            self.ensure_browsable(lower)
            path.mkdir(parents=True, exist_ok=True)
            proc.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={layers / 'upper'}:{lower}", str(path)])
            return
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
        if str(mp) in _mounted() and proc.run(["umount", str(mp)], check=False).returncode != 0:
            return  # still the lower layer of a mounted view: released when the pool goes
        if mp.is_dir():
            mp.rmdir()
        # A snapshot goes back to being a plain checkpoint, which the cleaner may reclaim.
        proc.run(["chcp", "cp", self._device(pool), str(cp)], check=False)

    def clone(self, snap: Path, dst: Path) -> None:
        """A copy (NILFS2 has no writable snapshots): restore and branch copy the files back."""
        self.check_clone(snap, dst)
        self.ensure_browsable(snap)
        dst.mkdir()
        # tar, not `cp -a`: a snapshot and the live pool share one st_dev, and cp, which also
        # remembers the directories it creates by (st_dev, st_ino) to catch cycles, then takes a
        # new directory of the pool for a snapshot directory with the same inode number and
        # refuses ("will not create hard link ... to directory"). tar links by source inode only.
        opts = "--numeric-owner --xattrs --xattrs-include='*' --acls"
        proc.run(["bash", "-c", f"set -o pipefail; tar -C {shlex.quote(str(snap))} {opts} --sparse -cf - . | "
                                f"tar -C {shlex.quote(str(dst))} {opts} -xpf -"])  # fmt: skip

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
