"""The kinds of things in the history view, one small class each. A node knows its own
entries, lookup, attributes and contents, and whether the kernel may cache it; what it needs
from the catalog or the store it asks the tree for (tree.py). No FUSE here.

Inode numbers are derived, never allocated: a 64-bit hash of what a node is (its key; for
files in a snapshot, the checkpoint id and the file's inode there, so hard links stay one
inode), so the view keeps no growing table and numbers are the same on every mount."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from functools import lru_cache

from zapckpt.names import NAME_RE

ROOT_INO = 1


class ViewError(Exception):
    """An errno for the caller (the FUSE adapter turns it into FUSEError), with the reason."""

    def __init__(self, err: int, reason: str = ""):
        super().__init__(reason or os.strerror(err))
        self.errno, self.reason = err, reason


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int = 1
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int = 0
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    blocks: int = 0


def _ino(key: str) -> int:
    n = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
    return n if n > ROOT_INO else n + 2


_K = 0x9E3779B97F4A7C15  # odd: st_ino -> st_ino * _K is a bijection on 64-bit numbers


@lru_cache(maxsize=65536)
def _ck_base(ck: str) -> int:
    return _ino(f"ck:{ck}:files")


def fs_ino(ck: str, st_ino: int) -> int:
    """A file of a snapshot: distinct files of one checkpoint never collide, hard links share."""
    n = (_ck_base(ck) + st_ino * _K) & 0xFFFFFFFFFFFFFFFF
    return n if n > ROOT_INO else n + 2


# --- the base classes -------------------------------------------------------------------------
class Node:
    """Made by the thousand per listing: slotted, inode number computed once."""

    __slots__ = ("ino",)
    immutable = False  # the kernel may keep its entry and attributes for long
    cache_listing = False  # its listing never changes (the adapter keeps it)
    cache_content = False  # its content never changes (the kernel keeps the pages)
    stable_attr = False  # its attributes never change while it exists (its entry may go)
    inline_xattrs = True  # its extended attributes are known without I/O (none, here)

    def __init__(self, key: str):
        self.ino = _ino(key)

    def entries(self, tree) -> list[tuple[str, Node]]:
        raise ViewError(errno.ENOTDIR)

    def lookup(self, tree, name: str) -> Node:
        for child_name, child in self.entries(tree):
            if child_name == name:
                return child
        raise ViewError(errno.ENOENT)

    def listing(self, tree) -> list[tuple[str, Node, Attr]]:
        """Entries with their attributes (readdirplus)."""
        out = []
        for name, child in self.entries(tree):
            try:
                out.append((name, child, child.attr(tree)))
            except ViewError:
                continue  # gone between the listing and its attributes
        return out

    def mtime(self, tree) -> int:
        return tree.mounted_ns

    def attr(self, tree) -> Attr:
        raise NotImplementedError

    def contents(self, tree) -> bytes:
        raise ViewError(errno.EINVAL)

    def open(self, tree):
        return BytesReader(self.contents(tree))

    def readlink(self, tree) -> str:
        raise ViewError(errno.EINVAL)

    def xattrs(self) -> list[str]:
        return []

    def getxattr(self, name: str) -> bytes:
        raise ViewError(errno.ENODATA)

    def mkdir(self, tree, name: str) -> Node:
        raise ViewError(errno.EROFS, "the view is read-only; only checkpoints/<N>/branches/ takes mkdir")


class Dir(Node):
    __slots__ = ()
    mode = 0o555

    def attr(self, tree) -> Attr:
        return self.dir_attr(self.mtime(tree))

    def dir_attr(self, t: int) -> Attr:
        return Attr(self.ino, stat.S_IFDIR | self.mode, nlink=2, mtime_ns=t, ctime_ns=t, atime_ns=t)

    def contents(self, tree) -> bytes:
        raise ViewError(errno.EISDIR)


class Generated(Node):
    """A small file made on read (info.json, process files)."""

    __slots__ = ()

    def attr(self, tree) -> Attr:
        t = self.mtime(tree)
        return Attr(self.ino, stat.S_IFREG | 0o444, size=len(self.contents(tree)), mtime_ns=t, ctime_ns=t, atime_ns=t)


class Link(Node):
    __slots__ = ("target", "immutable")

    def __init__(self, key: str, target: str, immutable: bool = False):
        super().__init__(key)
        self.target, self.immutable = target, immutable

    def readlink(self, tree) -> str:
        return self.target

    def attr(self, tree) -> Attr:
        t = self.mtime(tree)
        return link_attr(self.ino, self.target, t)


def link_attr(ino: int, target: str, t: int) -> Attr:
    return Attr(ino, stat.S_IFLNK | 0o777, size=len(os.fsencode(target)), mtime_ns=t, ctime_ns=t, atime_ns=t)


class OfCheckpoint:
    """Mixin: a node inside one checkpoint; its times are the checkpoint's."""

    __slots__ = ()

    def mtime(self, tree) -> int:
        return tree.checkpoint(self.ck).created_ns


# --- pods/ ----------------------------------------------------------------------------------
class Root(Dir):
    __slots__ = ()

    def __init__(self):
        self.ino = ROOT_INO

    def entries(self, tree):
        return [("pods", Pods())]


class Pods(Dir):
    __slots__ = ()

    def __init__(self):
        super().__init__("/pods")

    def entries(self, tree):
        return [(n, PodDir(n)) for n in tree.pod_names()]

    def lookup(self, tree, name: str) -> Node:
        if not NAME_RE.fullmatch(name):
            raise ViewError(errno.ENOENT)
        tree.pod_row(name)  # ENOENT if there is none
        return PodDir(name)


class PodDir(Dir):
    __slots__ = ("pod",)

    def __init__(self, pod: str):
        super().__init__(f"/pods/{pod}")
        self.pod = pod

    def mtime(self, tree) -> int:
        return tree.pod_row(self.pod).created_ns

    def entries(self, tree):
        pod = tree.pod_row(self.pod)
        base = f"/pods/{self.pod}"
        out: list[tuple[str, Node]] = [
            ("checkpoints", Checkpoints(self.pod)),
            ("by-time", ByTime(self.pod)),
            ("info.json", PodInfo(f"{base}/info.json", self.pod)),
        ]
        if tree.pod_checkpoints(self.pod):
            out.append(("latest", Latest(self.pod)))
            out.append(("tags", Tags(self.pod)))
        if os.path.isdir(pod.volume):
            out.append(("live", Link(f"{base}/live", pod.volume)))
        return out


class PodInfo(Generated):
    """`zap show POD --json`; also a branch's info.json."""

    __slots__ = ("pod",)

    def __init__(self, key: str, pod: str):
        super().__init__(key)
        self.pod = pod

    def contents(self, tree) -> bytes:
        return tree.pod_json(self.pod)


class Latest(Node):
    """-> checkpoints/<highest N>: changes with every checkpoint, so never baked into the node."""

    __slots__ = ("pod",)

    def __init__(self, pod: str):
        super().__init__(f"/pods/{pod}/latest")
        self.pod = pod

    def readlink(self, tree) -> str:
        return f"checkpoints/{tree.latest_seq(self.pod)}"

    def attr(self, tree) -> Attr:
        return link_attr(self.ino, self.readlink(tree), self.mtime(tree))


class Checkpoints(Dir):
    __slots__ = ("pod",)

    def __init__(self, pod: str):
        super().__init__(f"/pods/{pod}/checkpoints")
        self.pod = pod

    def entries(self, tree):
        return [(str(seq), CheckpointDir(self.pod, cid)) for seq, cid, _t in tree.pod_checkpoints(self.pod)]

    def lookup(self, tree, name: str) -> Node:
        if not name.isdigit() or name != str(int(name)):
            raise ViewError(errno.ENOENT)
        return CheckpointDir(self.pod, tree.checkpoint_at(self.pod, int(name)).id)

    def listing(self, tree):  # one query, attributes from it
        return [(str(seq), (c := CheckpointDir(self.pod, cid)), c.dir_attr(t))
                for seq, cid, t in tree.pod_checkpoints(self.pod)]  # fmt: skip


class LinkDir(Dir):
    """A directory of links into ../checkpoints, read from the catalog at each listing."""

    __slots__ = ("pod",)
    kind = ""

    def __init__(self, pod: str):
        super().__init__(f"/pods/{pod}/{self.kind}")
        self.pod = pod

    def links(self, tree) -> list[tuple[str, int, int]]:
        """(name, checkpoint N, time ns) of each link."""
        raise NotImplementedError

    def _links(self, tree) -> list[tuple[str, Link, int]]:
        # The target is part of the key: a link that moves (a tag) is a new inode.
        return [(name, Link(f"/pods/{self.pod}/{self.kind}/{name}@{seq}", f"../checkpoints/{seq}", immutable=True), t)
                for name, seq, t in self.links(tree)]  # fmt: skip

    def entries(self, tree):
        return [(name, link) for name, link, _t in self._links(tree)]

    def listing(self, tree):
        return [(name, link, link_attr(link.ino, link.target, t)) for name, link, t in self._links(tree)]


class ByTime(LinkDir):
    """<local ISO time> -> ../checkpoints/<N>"""

    __slots__ = ()
    kind = "by-time"

    def links(self, tree):
        return tree.by_time(self.pod)


class Tags(LinkDir):
    """<tag> -> ../checkpoints/<N> (`zap tag`)."""

    __slots__ = ()
    kind = "tags"

    def links(self, tree):
        return tree.tags(self.pod)


# --- checkpoints/<N>/ -------------------------------------------------------------------------
class CheckpointDir(OfCheckpoint, Dir):
    # Its contents and attributes never change, but the entry goes when the checkpoint is removed.
    __slots__ = ("pod", "ck")
    stable_attr = True

    def __init__(self, pod: str, ck: str):
        super().__init__(f"ck:{ck}")
        self.pod, self.ck = pod, ck

    def entries(self, tree):
        info = tree.checkpoint(self.ck)
        base = f"ck:{info.id}"
        tree.ensure_browsable(info.snapshot)  # NILFS2 mounts snapshots on demand
        out: list[tuple[str, Node]] = [
            ("fs", SnapshotEntry(info.id, info.snapshot, _ino(f"{base}:fs"))),
            ("info.json", CheckpointInfo(info.id)),
            ("processes", Processes(info.id)),
            ("branches", Branches(info.pod, info.id)),
        ]
        if info.has_images:
            out.insert(2, ("images", Images(info.id)))
        return out


class CheckpointInfo(OfCheckpoint, Generated):
    """`zap show REF --json`"""

    __slots__ = ("ck",)

    def __init__(self, ck: str):
        super().__init__(f"ck:{ck}:info.json")
        self.ck = ck

    def contents(self, tree) -> bytes:
        return tree.checkpoint_json(self.ck)


class SnapshotEntry(Node):
    """A file or directory of the read-only snapshot (fs/), passed through."""

    __slots__ = ("ck", "path")
    immutable = cache_listing = cache_content = True
    inline_xattrs = False  # the snapshot's file has its own: read on a worker thread

    def __init__(self, ck: str, path: str, ino: int):
        self.ck, self.path, self.ino = ck, path, ino

    def _child(self, path: str, st: os.stat_result) -> SnapshotEntry:
        return SnapshotEntry(self.ck, path, fs_ino(self.ck, st.st_ino))

    def _attr(self, st: os.stat_result) -> Attr:
        return Attr(self.ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns,
                    st.st_ctime_ns, st.st_atime_ns, st.st_uid, st.st_gid, st.st_rdev, st.st_blocks)  # fmt: skip

    def attr(self, tree) -> Attr:
        try:
            return self._attr(os.lstat(self.path))
        except FileNotFoundError:
            raise ViewError(errno.ENOENT, f"{self.path} has gone (checkpoint removed?)") from None

    def listing(self, tree):
        """The entries with their attributes, in one pass over the directory."""
        out = []
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    child = self._child(e.path, st)
                    out.append((e.name, child, child._attr(st)))
        except FileNotFoundError:
            raise ViewError(errno.ENOENT, f"{self.path} has gone (checkpoint removed?)") from None
        except NotADirectoryError:
            raise ViewError(errno.ENOTDIR) from None
        return out

    def entries(self, tree):
        return [(name, child) for name, child, _a in self.listing(tree)]

    def lookup(self, tree, name: str) -> Node:
        path = os.path.join(self.path, name)
        try:
            return self._child(path, os.lstat(path))
        except FileNotFoundError:
            raise ViewError(errno.ENOENT) from None

    def readlink(self, tree) -> str:
        return os.readlink(self.path)

    def open(self, tree):
        return FileReader(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))

    def xattrs(self) -> list[str]:
        return os.listxattr(self.path, follow_symlinks=False)

    def getxattr(self, name: str) -> bytes:
        return os.getxattr(self.path, name, follow_symlinks=False)


class Processes(OfCheckpoint, Dir):
    __slots__ = ("ck",)
    immutable = cache_listing = True

    def __init__(self, ck: str):
        super().__init__(f"ck:{ck}:processes")
        self.ck = ck

    def entries(self, tree):
        return [(str(p["pid"]), ProcessDir(self.ck, str(p["pid"]))) for p in tree.checkpoint(self.ck).processes]


class ProcessDir(OfCheckpoint, Dir):
    """processes/<pid>/{cmdline,cwd,host_pid}"""

    __slots__ = ("ck", "pid")
    immutable = cache_listing = True

    def __init__(self, ck: str, pid: str):
        super().__init__(f"ck:{ck}:proc:{pid}")
        self.ck, self.pid = ck, pid

    def entries(self, tree):
        base = f"ck:{self.ck}:proc:{self.pid}"
        p = tree.process(self.ck, self.pid)
        return [
            ("cmdline", ProcessFile(self.ck, self.pid, "cmdline")),
            ("cwd", Link(f"{base}:cwd", p.get("cwd", ""), immutable=True)),
            ("host_pid", ProcessFile(self.ck, self.pid, "host_pid")),
        ]


class ProcessFile(OfCheckpoint, Generated):
    __slots__ = ("ck", "pid", "field")
    immutable = True

    def __init__(self, ck: str, pid: str, field: str):
        super().__init__(f"ck:{ck}:proc:{pid}:{field}")
        self.ck, self.pid, self.field = ck, pid, field

    def contents(self, tree) -> bytes:
        p = tree.process(self.ck, self.pid)
        if self.field == "cmdline":
            return b"".join(os.fsencode(a) + b"\0" for a in p.get("cmdline", []))
        return f"{p.get('host_pid', '')}\n".encode()


class Images(OfCheckpoint, Dir):
    """The CRIU image set, reassembled from the store on read."""

    __slots__ = ("ck",)
    immutable = cache_listing = True
    mode = 0o700  # process memory: root only, even with --allow-other

    def __init__(self, ck: str):
        super().__init__(f"ck:{ck}:images")
        self.ck = ck

    def entries(self, tree):
        return [(n, Image(self.ck, n)) for n, _size in tree.image_sizes(self.ck)]


class Image(OfCheckpoint, Node):
    __slots__ = ("ck", "name")
    immutable = cache_content = True

    def __init__(self, ck: str, name: str):
        super().__init__(f"ck:{ck}:image:{name}")
        self.ck, self.name = ck, name

    def attr(self, tree) -> Attr:
        size = dict(tree.image_sizes(self.ck)).get(self.name)
        if size is None:
            raise ViewError(errno.ENOENT)
        t = self.mtime(tree)
        return Attr(self.ino, stat.S_IFREG | 0o400, size=size, mtime_ns=t, ctime_ns=t, atime_ns=t,
                    blocks=(size + 511) // 512)  # fmt: skip

    def open(self, tree):
        return tree.open_image(self.ck, self.name)


class Branches(OfCheckpoint, Dir):
    """Pods branched from the checkpoint; mkdir here makes one."""

    __slots__ = ("pod", "ck")
    mode = 0o755

    def __init__(self, pod: str, ck: str):
        super().__init__(f"ck:{ck}:branches")
        self.pod, self.ck = pod, ck

    def entries(self, tree):
        return [(n, BranchDir(self.ck, n)) for n in tree.branch_names(self.ck)]

    def lookup(self, tree, name: str) -> Node:
        if not tree.branch_names(self.ck, name):
            raise ViewError(errno.ENOENT)
        return BranchDir(self.ck, name)

    def mkdir(self, tree, name: str) -> Node:
        tree.branch(self.ck, name)
        return BranchDir(self.ck, name)


class BranchDir(OfCheckpoint, Dir):
    __slots__ = ("ck", "name")

    def __init__(self, ck: str, name: str):
        super().__init__(f"ck:{ck}:branch:{name}")
        self.ck, self.name = ck, name

    def entries(self, tree):
        base = f"ck:{self.ck}:branch:{self.name}"
        return [
            ("pod", Link(f"{base}:pod", f"../../../../../{self.name}")),
            ("info.json", BranchInfo(f"{base}:info.json", self.name, self.ck)),
        ]


class BranchInfo(OfCheckpoint, PodInfo):
    __slots__ = ("ck",)

    def __init__(self, key: str, pod: str, ck: str):
        super().__init__(key, pod)
        self.ck = ck


# --- open files -------------------------------------------------------------------------------
class FileReader:
    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def close(self) -> None:
        os.close(self.fd)


class BytesReader:
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def read(self, off: int, size: int) -> bytes:
        return self.data[off : off + size]

    def close(self) -> None:
        pass
