"""The kernel's view of a network namespace's unix sockets (sock_diag, NETLINK_SOCK_DIAG): for each
socket bound to a path, the inode of the socket file it made. That inode stays the socket's when
a program renames the file (haproxy binds `x.sock.N.tmp` and renames it `x.sock`), while the
name the socket reports stays the one it bound (see pod/sockets.py)."""

from __future__ import annotations

import os
import socket
import struct

from .netns import inside

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS = 0x1, 0x2
UNIX_DIAG_VFS = 1


def _dump() -> dict[int, tuple[int, int]]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_VFS | UDIAG_SHOW_NAME, 0, 0)
        s.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: dict[int, tuple[int, int]] = {}
        while True:
            data = s.recv(1 << 16)
            i = 0
            while i + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, i)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, i + 16)
                    raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
                # struct unix_diag_msg: family, type, state, pad, ino, cookie[2]; then attributes
                (ino,) = struct.unpack_from("=I", data, i + 16 + 4)
                j, end = i + 16 + 16, i + length
                while j + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, j)
                    if alen < 4:
                        break
                    if atype == UNIX_DIAG_VFS and alen >= 12:
                        vfs_ino, vfs_dev = struct.unpack_from("=II", data, j + 4)
                        out[ino] = (vfs_dev, vfs_ino)
                    j += (alen + 3) & ~3
                i += (length + 3) & ~3
    finally:
        s.close()


def file_inodes(netns: str | None = None) -> dict[int, tuple[int, int]]:
    """{socket inode: (device, inode) of its socket file} for the unix sockets bound to a path in
    the network namespace at path netns (None: ours)."""
    return inside(netns, _dump)
