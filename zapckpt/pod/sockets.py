"""Unix sockets that a program renamed after binding them, followed to where they are.

haproxy (and others that replace a socket atomically) binds `x.sock.N.tmp` and renames it to
`x.sock`. The socket still reports the name it bound, and CRIU dumps and restores it under that
name: after a restore the listener is at the `.tmp` name again, `x.sock` in the snapshot is a
dead socket file, and connections to it are refused. So after every dump, each socket bound to a
path in the pod's volume is looked for in the checkpoint's snapshot: if its name there is not its
socket file (the kernel tells the file's inode, net/unixdiag.py), the file is found by that inode
and the image set is rewritten to bind it there (CRIU unlinks the dead socket file before it
binds). A socket that cannot be found fails the checkpoint rather than come back at a wrong name."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from catalog import Pod
from zapckpt.common.errors import ZapError
from zapckpt.criu.images import rename_unix_sockets, unix_sockets
from zapckpt.net import unixdiag
from zapckpt.pod.mounts import in_volume, lstat_under, pod_view

SEARCH_LIMIT = 200_000  # directory entries looked at before giving up on a moved socket


def _find(root: Path, near: str, ino: int) -> str | None:
    """The path (relative to root) of the socket file with inode ino: in directory `near` first
    (a rename in place), then anywhere under root; symlinks are not followed."""
    seen = 0
    for top, deep in ((root / near, False), (root, True)):
        stack = [top]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for e in it:
                        seen += 1
                        if e.inode() == ino and stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode):
                            return os.path.relpath(e.path, root)
                        if deep and e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
            except OSError:
                continue
            if seen > SEARCH_LIMIT:
                return None
    return None


def follow_renamed(pod: Pod, images: Path, snapshot: Callable[[], Path], netns: str | None) -> list[str]:
    """Rewrite the image set so that sockets bound under a name they were renamed from come back
    under the name they have in the snapshot (snapshot(): its root, made readable on first use);
    returns a line for each ("OLD -> NEW")."""
    system = bool(pod.rootfs)
    groups: dict[bytes, list[int]] = {}
    for sk in unix_sockets(images):
        if sk.name.startswith(b"/") and not sk.deleted:
            groups.setdefault(sk.name, []).append(sk.ino)
    if not groups:
        return []
    inodes: dict[int, tuple[int, int]] | None = None
    root: Path | None = None
    renames: dict[bytes, bytes] = {}
    done = []
    for name, socks in sorted(groups.items()):
        text = name.split(b"\0", 1)[0].decode(errors="surrogateescape")
        rel = in_volume(text, pod.mount_path, system, pod.private_tmp, pod.volumes or [])
        if not rel:
            continue  # the host's or a declared volume's: not in the snapshot
        if inodes is None:
            inodes, root = unixdiag.file_inodes(netns), snapshot()
        file_ino = next((inodes[i][1] for i in socks if i in inodes), None)
        st = lstat_under(root, rel)
        if st is not None and stat.S_ISSOCK(st.st_mode) and (file_ino is None or st.st_ino == file_ino):
            continue  # where it was bound
        found = _find(root, os.path.dirname(rel), file_ino) if file_ino is not None else None
        if found is None:
            raise ZapError(f"the unix socket bound at {text} was renamed or moved, and its file is not in the pod's "
                           f"volume: a restore would bring it back at {text} (checkpoint refused; keep the socket's "
                           f"file inside the volume, or try again if it was just closed)")  # fmt: skip
        new = pod_view(found, pod.mount_path, system, pod.private_tmp)
        if len(new.encode(errors="surrogateescape")) >= 108:
            raise ZapError(f"the unix socket bound at {text} is now {new}, a name too long to bind it to at restore "
                           f"(108 bytes; checkpoint refused)")  # fmt: skip
        renames[name] = new.encode(errors="surrogateescape") + b"\0"
        done.append(f"{text} -> {new}")
    if renames:
        rename_unix_sockets(images, renames)
    return done
