"""The backend interface: check-then-act pairs, so a caller can refuse bad input before it
changes anything, and the argv of the snapshot command that runs inside the frozen window."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

from zapckpt.common import proc
from zapckpt.common.errors import ZapError


class BackendError(ZapError):
    pass


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the operations consult these before they start."""

    writable_clones: bool  # a snapshot gives a writable copy (branch)
    in_place_rollback: bool  # a volume can be replaced by a copy of a snapshot (restore)
    diff: bool  # two snapshots can be compared (diff)
    send_stream: bool  # snapshots move as send streams (export, import)
    device_pool: bool  # the pool can be a block device of its own (`zap init --device`)
    snapshot_dirs: bool  # each snapshot is a directory of the pool's snapshots/ (a sweep lists them)


@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    generation: int | None


def fs_magic(path: Path) -> int:
    """The file system type (statfs f_type) of path. os.statvfs has no f_type, and matching
    paths in /proc/self/mountinfo is fiddly, so ask stat(1), which is in coreutils everywhere."""
    return int(proc.run(["stat", "-f", "-c", "%t", str(path)]).stdout.strip(), 16)


class SnapshotBackend(abc.ABC):
    name: str
    capabilities: Capabilities
    fs_name: str  # as people write it: "btrfs", "NILFS2"
    magic: int  # statfs f_type of a pool on this file system
    mkfs: list[str]  # formats the device or image given as its last argument

    # --- the pool ---------------------------------------------------------------------------
    def check_pool(self, path: Path) -> None:
        """Raise BackendError unless path is a usable directory on this filesystem."""
        if not path.is_dir():
            raise BackendError(f"pool directory {path} does not exist")
        if fs_magic(path) != self.magic:
            raise BackendError(f"{path} is not on a {self.fs_name} filesystem")

    def make_loop_pool(self, image: Path, mountpoint: Path, size: str) -> None:
        """Create a sparse image file holding a fresh filesystem, and mount it."""
        image.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["truncate", "-s", size, str(image)])
        try:
            proc.run([*self.mkfs, str(image)])
            self.mount_loop_pool(image, mountpoint)
        except BaseException:
            # Nothing half-made stays: a leftover image would make every later init fail to mount.
            image.unlink(missing_ok=True)
            raise

    @abc.abstractmethod
    def mount_loop_pool(self, image: Path, mountpoint: Path) -> None: ...

    def make_device_pool(self, device: Path, mountpoint: Path) -> None:
        """A pool on a block device (capabilities.device_pool): formatted if it must be, mounted."""
        raise BackendError(f"the {self.name} backend has no device pools")

    def mount_device_pool(self, device: Path, mountpoint: Path) -> None:
        raise BackendError(f"the {self.name} backend has no device pools")

    @abc.abstractmethod
    def unmount_pool(self, mountpoint: Path) -> None: ...

    # --- volumes ----------------------------------------------------------------------------
    def check_create_volume(self, path: Path) -> None:
        if path.exists():
            raise BackendError(f"{path} already exists")

    @abc.abstractmethod
    def create_volume(self, path: Path) -> None: ...

    @abc.abstractmethod
    def delete_volume(self, path: Path) -> None:
        """Delete a volume or snapshot; a missing one is not an error."""

    # --- snapshots --------------------------------------------------------------------------
    def check_snapshot(self, src: Path, dst: Path) -> None:
        if not src.is_dir():
            raise BackendError(f"volume {src} does not exist")
        if dst.exists():
            raise BackendError(f"snapshot {dst} already exists")
        if not dst.parent.is_dir():
            raise BackendError(f"snapshot directory {dst.parent} does not exist")

    @abc.abstractmethod
    def snapshot_argv(self, src: Path, dst: Path, host_pid: int | None = None) -> list[str]:
        """The command that takes a read-only snapshot; it runs inside CRIU's frozen window, so
        it must be one short external command (no Python start-up). With host_pid it runs in
        the pod's mount namespace, where the pool is hidden: the paths it opens go through
        /proc/<host_pid>/root (or it enters /proc/<host_pid>/ns/mnt)."""

    @abc.abstractmethod
    def snapshot(self, src: Path, dst: Path) -> SnapshotInfo:
        """Read-only snapshot taken outside a frozen window (for stopped pods)."""

    @abc.abstractmethod
    def describe(self, path: Path) -> SnapshotInfo: ...

    def volume_generation(self, path: Path) -> int | None:
        """A number that moves whenever the volume's committed contents change (None: this
        backend cannot tell, so every change must be assumed). Call flush() first."""
        return None

    def check_clone(self, snap: Path, dst: Path) -> None:
        if not snap.is_dir():
            raise BackendError(f"snapshot {snap} is missing")
        if dst.exists():
            raise BackendError(f"{dst} already exists")

    @abc.abstractmethod
    def clone(self, snap: Path, dst: Path) -> None:
        """A writable copy of a snapshot (O(1) where the filesystem allows)."""

    def diff(self, old: Path, new: Path):
        """What changed from snapshot old to snapshot new (fsbackend.sendstream.Changes)."""
        raise BackendError(f"the {self.name} backend cannot compare snapshots")

    # --- moving snapshots between machines (capabilities.send_stream) --------------------------
    def send(self, snap: Path, out: Path) -> None:
        """Write a full, self-contained stream of snapshot snap into the file out."""
        raise BackendError(f"the {self.name} backend cannot send snapshots")

    def check_stream(self, stream: Path) -> None:
        """Refuse (BackendError) a stream that is not one full snapshot as send() writes it:
        an incremental stream or a clone would read other snapshots of this machine."""
        raise BackendError(f"the {self.name} backend cannot receive snapshots")

    def receive(self, stream: Path, into: Path) -> Path:
        """Receive a checked stream into the empty directory into (on the pool), confined to it;
        returns the read-only snapshot made there."""
        raise BackendError(f"the {self.name} backend cannot receive snapshots")

    # --- volumes in a fleet's store: streams through pipes, incremental on a parent ---------------
    def send_argv(self, snap: Path, parent: Path | None = None) -> list[str]:
        """The command that writes snap's stream to its stdout (incremental on parent)."""
        raise BackendError(f"the {self.name} backend cannot send snapshots")

    def check_stream_dump(self, dump: str, name: str, parent_uuid: str | None) -> None:
        """Refuse (BackendError) a stream other than one snapshot called name, full (parent_uuid
        None) or incremental on the subvolume whose uuid is parent_uuid."""
        raise BackendError(f"the {self.name} backend cannot receive snapshots")

    def receive_argv(self, into: Path) -> list[str]:
        """The command that receives a checked stream from its stdin into the directory into,
        confined to it."""
        raise BackendError(f"the {self.name} backend cannot receive snapshots")

    def identity(self, path: Path) -> tuple[str | None, str | None, bool]:
        """(uuid, received uuid, read-only) of a snapshot: an incremental stream names its
        parent by the uuid it had where it was taken, which a received copy keeps as its
        received uuid."""
        raise BackendError(f"the {self.name} backend cannot receive snapshots")

    def branch_volume(self, snap: Path, dst: Path) -> None:
        """The volume of a new branch from a snapshot (default: a writable clone)."""
        self.clone(snap, dst)

    def rename_volume(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def after_mount(self, pool: Path) -> None:
        """Called once the pool is mounted (e.g. after a reboot): re-assemble what lives on it."""

    def ensure_browsable(self, path: Path) -> None:
        """Make a snapshot path readable (a backend may mount snapshots on demand)."""

    @abc.abstractmethod
    def set_readonly(self, path: Path) -> None:
        """Freeze a volume made by create_volume or clone (rootfs templates)."""

    @abc.abstractmethod
    def is_volume(self, path: Path) -> bool:
        """Is path a volume (something clone() can take in O(1))?"""

    @abc.abstractmethod
    def flush(self, path: Path) -> None:
        """Write back dirty data before a freeze, so the in-window snapshot has little to do."""
