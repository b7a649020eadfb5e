"""btrfs: volumes are subvolumes, checkpoints are read-only subvolume snapshots."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from zapckpt.common import proc

from .base import BackendError, Capabilities, SnapshotBackend, SnapshotInfo, fs_magic

BTRFS_SUPER_MAGIC = 0x9123683E


class BtrfsBackend(SnapshotBackend):
    name = "btrfs"
    capabilities = Capabilities(writable_clones=True, in_place_rollback=True, diff=True, send_stream=True,
                                device_pool=False, snapshot_dirs=True)  # fmt: skip
    fs_name, magic, mkfs = "btrfs", BTRFS_SUPER_MAGIC, ["mkfs.btrfs", "-q", "-f", "-L", "zapckpt"]

    def mount_loop_pool(self, image: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        # mount -o loop sets autoclear: the loop device goes away with the last unmount.
        proc.run(["mount", "-t", "btrfs", "-o", "loop,noatime", str(image), str(mountpoint)])

    def unmount_pool(self, mountpoint: Path) -> None:
        proc.run(["umount", str(mountpoint)])

    def create_volume(self, path: Path) -> None:
        self.check_create_volume(path)
        proc.run(["btrfs", "-q", "subvolume", "create", str(path)])

    def delete_volume(self, path: Path) -> None:
        if not path.exists():
            return
        # Subvolumes the workload nested inside go first (btrfs-progs 6.2 has no --recursive).
        out = proc.run(["btrfs", "subvolume", "list", "-o", str(path)], check=False).stdout
        pool_root = Path(proc.run(["findmnt", "-n", "-o", "TARGET", "-T", str(path)]).stdout.strip())
        nested = [ln.split(" path ", 1)[1] for ln in out.splitlines() if " path " in ln]
        for rel in sorted(nested, key=len, reverse=True):
            # list -o prints paths relative to the filesystem's top level; the pool is mounted
            # at the top level in the default set-up, otherwise the nested one is left to fail.
            proc.run(["btrfs", "-q", "subvolume", "delete", str(pool_root / rel)], check=False)
        proc.run(["btrfs", "-q", "subvolume", "delete", str(path)])

    def snapshot_argv(self, src: Path, dst: Path, host_pid: int | None = None) -> list[str]:
        via = f"/proc/{host_pid}/root" if host_pid else ""
        return ["btrfs", "-q", "subvolume", "snapshot", "-r", f"{via}{src}", f"{via}{dst}"]

    def snapshot(self, src: Path, dst: Path) -> SnapshotInfo:
        self.check_snapshot(src, dst)
        proc.run(self.snapshot_argv(src, dst))
        return self.describe(dst)

    def describe(self, path: Path) -> SnapshotInfo:
        out = proc.run(["btrfs", "subvolume", "show", str(path)]).stdout
        m = re.search(r"^\s*Generation:\s*(\d+)", out, re.M)
        return SnapshotInfo(str(path), int(m.group(1)) if m else None)

    def volume_generation(self, path: Path) -> int | None:
        # The subvolume's generation: the last transaction that changed its tree (a snapshot of
        # it counts too: read it after the snapshot, it stays put until the next write).
        return self.describe(path).generation

    def clone(self, snap: Path, dst: Path) -> None:
        self.check_clone(snap, dst)
        proc.run(["btrfs", "-q", "subvolume", "snapshot", str(snap), str(dst)])

    def diff(self, old: Path, new: Path):
        """From the send stream btrfs makes by comparing the two trees (no file data read)."""
        from .sendstream import parse

        # receive stops at the stream's end command, and send may still be closing: its SIGPIPE
        # (141) after a complete stream is not a failure.
        pipe = ('btrfs send -q --no-data -p "$1" "$2" | btrfs receive --dump; s=("${PIPESTATUS[@]}"); '
                '[ "${s[1]}" = 0 ] && { [ "${s[0]}" = 0 ] || [ "${s[0]}" = 141 ]; }')
        res = proc.run(["bash", "-c", pipe, "bash", str(old), str(new)], check=False)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            raise BackendError(f"cannot compare {old} and {new}: {last}")
        dump = res

        def kind(root: Path):
            def of(p: str):
                try:
                    return stat.S_IFMT(os.lstat(root / p.lstrip("/")).st_mode)
                except FileNotFoundError:
                    return None

            return of

        return parse(dump.stdout, kind(old), kind(new))

    def send(self, snap: Path, out: Path) -> None:
        proc.run(["btrfs", "send", "-q", "-f", str(out), str(snap)])

    def send_argv(self, snap: Path, parent: Path | None = None) -> list[str]:
        return ["btrfs", "send", "-q", *(["-p", str(parent)] if parent is not None else []), str(snap)]

    def check_stream_dump(self, dump: str, name: str, parent_uuid: str | None) -> None:
        lines = [ln.split() for ln in dump.splitlines() if ln.strip()]
        heads = [t for t in lines if t[0] in ("subvol", "snapshot")]
        if len(heads) != 1 or lines[0] is not heads[0]:
            raise BackendError("the volume stream is not one snapshot")
        head = heads[0]
        if head[1] != f"./{name}":
            raise BackendError(f"the volume stream is of {head[1]!r}, not of {name!r}")
        fields = dict(t.split("=", 1) for t in head[2:] if "=" in t)
        if parent_uuid is None and head[0] != "subvol":
            raise BackendError("the volume stream is incremental where a full one was expected")
        if parent_uuid is not None and (head[0] != "snapshot" or fields.get("parent_uuid") != parent_uuid):
            raise BackendError("the volume stream is not incremental on the snapshot it should follow")
        if any(t[1] != f"./{name}" and not t[1].startswith(f"./{name}/") for t in lines if len(t) > 1):
            raise BackendError("the volume stream reaches beyond its own snapshot")

    def receive_argv(self, into: Path) -> list[str]:
        # -C: chrooted into its destination, so no path in the stream reaches beyond it;
        # -E 1: stop at the end of the first (only) subvolume.
        return ["btrfs", "receive", "-q", "-C", "-E", "1", str(into)]

    def identity(self, path: Path) -> tuple[str | None, str | None, bool]:
        out = proc.run(["btrfs", "subvolume", "show", str(path)]).stdout
        uuid = re.search(r"^\s*UUID:\s*(\S+)", out, re.M)
        received = re.search(r"^\s*Received UUID:\s*(\S+)", out, re.M)
        flags = re.search(r"^\s*Flags:\s*(.*)$", out, re.M)
        rec = received.group(1) if received and received.group(1) != "-" else None
        return (uuid.group(1) if uuid else None), rec, bool(flags and "readonly" in flags.group(1))

    def check_stream(self, stream: Path) -> None:
        try:
            out = proc.run(["btrfs", "receive", "--dump", "-f", str(stream)]).stdout
        except proc.CommandError as e:
            raise BackendError(f"the filesystem snapshot is damaged: {e.reason()}") from None
        commands = [ln.split(None, 1)[0] for ln in out.splitlines() if ln.strip()]
        if not commands or commands[0] != "subvol" or commands.count("subvol") != 1:
            raise BackendError("the filesystem snapshot is not one full subvolume")
        if "snapshot" in commands or "clone" in commands:
            raise BackendError("the filesystem snapshot refers to other subvolumes")

    def receive(self, stream: Path, into: Path) -> Path:
        try:
            # -C: chrooted into its destination, so no path in the stream reaches beyond it;
            # -E 1: stop at the end of the first (only) subvolume.
            proc.run(["btrfs", "receive", "-q", "-C", "-E", "1", "-f", str(stream), str(into)])
        except proc.CommandError as e:
            raise BackendError(f"the filesystem snapshot cannot be received: {e.reason()}") from None
        (snap,) = list(into.iterdir())
        return snap

    def set_readonly(self, path: Path) -> None:
        proc.run(["btrfs", "property", "set", "-ts", str(path), "ro", "true"])

    def is_volume(self, path: Path) -> bool:
        # A subvolume's root directory has inode 256 on a btrfs file system.
        return path.is_dir() and os.stat(path).st_ino == 256 and fs_magic(path) == BTRFS_SUPER_MAGIC

    # --- a host's root subvolume (`zap guard --host`, `zap host-snapshot`) ------------------
    def subvolume_ids(self, paths: list[Path]) -> list[str]:
        """The subvolume id of each path ([] if btrfs cannot say for one of them)."""
        res = proc.run(["btrfs", "inspect-internal", "rootid", *map(str, paths)], check=False)
        ids = res.stdout.split()
        return ids if res.returncode == 0 and len(ids) == len(paths) else []

    def default_subvolume(self, top: Path) -> str:
        """The id of the subvolume the file system mounts (boots) by default."""
        # "ID 274 gen 40 top level 5 path N-rollback", or "ID 5 (FS_TREE)"
        return proc.run(["btrfs", "subvolume", "get-default", str(top)]).stdout.split()[1]

    def set_default_subvolume(self, top: Path, volume: Path) -> None:
        proc.run(["btrfs", "subvolume", "set-default", self.subvolume_ids([volume])[0], str(top)])

    def flush(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)


def _syncfs(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise BackendError(f"syncfs failed: {os.strerror(err)}")
