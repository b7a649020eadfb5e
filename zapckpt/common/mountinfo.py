"""The mount table (/proc/PID/mountinfo), parsed in one place. Fields as proc(5) lists them;
mount points and roots have their octal escapes (\\040 for a space...) undone, so they are the
paths as the file system names them. os.path.ismount is no substitute: every btrfs subvolume has
its own st_dev, so it calls them all mount points."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# The file system type of zap's history views (`zap mount`): pods and CRIU must not see them.
VIEW_FSTYPE = "fuse.zapckpt"

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: str) -> str:
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(field))
    return os.fsdecode(raw)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # of the mount, inside its file system
    point: str
    options: str
    fstype: str
    source: str
    super_options: str


def parse(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        f = pre.split()
        fstype, source, sopts = (post.split() + ["", "", ""])[:3]
        out.append(Mount(int(f[0]), int(f[1]), f[2], _unescape(f[3]), _unescape(f[4]), f[5], fstype,
                         _unescape(source), sopts))  # fmt: skip
    return out


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mount table of pid's mount namespace, in mount order."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def find(point: str | os.PathLike, pid: int | str = "self") -> Mount | None:
    """The mount at exactly this path (the top one, if several are stacked), or None."""
    point = os.fspath(point)
    found = None
    for m in mounts(pid):
        if m.point == point:
            found = m
    return found


def points(fstype: str | None = None, pid: int | str = "self") -> list[str]:
    return [m.point for m in mounts(pid) if fstype is None or m.fstype == fstype]
