"""The tree of past states that `zap mount` shows, as plain Python (no FUSE here: fuseops.py
adapts it to the kernel protocol).

    pods/<pod>/info.json                     the pod (`zap show NAME --json`)
    pods/<pod>/live                          -> the pod's current volume
    pods/<pod>/latest                        -> checkpoints/<highest N>
    pods/<pod>/by-time/<local ISO time>      -> ../checkpoints/<N>
    pods/<pod>/checkpoints/<N>/fs/           the read-only snapshot, passed through
    pods/<pod>/checkpoints/<N>/info.json     the checkpoint (`zap show REF --json`)
    pods/<pod>/checkpoints/<N>/processes/<pid>/{cmdline,cwd,host_pid}
    pods/<pod>/checkpoints/<N>/images/       CRIU images, reassembled from the store on read
    pods/<pod>/checkpoints/<N>/branches/<b>/ branches made from it (mkdir makes one)

Inode numbers are derived, never allocated: a 64-bit hash of what a node is (for files in a
snapshot: the checkpoint id and the file's inode there, so hard links stay one inode), so the
view keeps no growing table and numbers are the same on every mount. Everything under a
checkpoint is immutable; pods/, checkpoints/, by-time/ and branches/ are read from the catalog
each time they are listed, so new checkpoints appear without a remount.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select

from catalog import Checkpoint, ImageFile, Pod, queries

from zapckpt.store import imagesets as image_sets
from zapckpt.store.chunkstore import ImageReader, StoreError
from ..context import Context
from zapckpt.common.errors import AlreadyExists, NotFound, UsageError, ZapError
from zapckpt.names import NAME_RE
from ..records import checkpoint_record, pod_record

ROOT_INO = 1


class ViewError(Exception):
    """An errno for the caller (the FUSE adapter turns it into FUSEError), with the reason."""

    def __init__(self, err: int, reason: str = ""):
        super().__init__(reason or os.strerror(err))
        self.errno, self.reason = err, reason


def _ino(key: str) -> int:
    n = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
    return n if n > ROOT_INO else n + 2


class Node:
    """One thing in the view. Made by the thousand per listing: a plain slotted class with its
    inode number computed once."""

    __slots__ = ("kind", "key", "pod", "ck", "path", "immutable", "ino")

    def __init__(self, kind: str, key: str, pod: str = "", ck: str = "", path: str = "", immutable: bool = False,
                 ino: int = 0):  # fmt: skip
        self.kind = kind  # one of the constants below
        self.key = key  # what the node is (its inode number is derived from it); "" in fs/
        self.pod, self.ck = pod, ck  # pod name, checkpoint id
        self.path = path  # FS: the real path; IMAGE: the image name; PROC: the pid; LINK: the target
        self.immutable = immutable  # may the kernel cache it for long
        self.ino = ino or (ROOT_INO if kind == ROOT else _ino(key))


_K = 0x9E3779B97F4A7C15  # odd: st_ino -> st_ino * _K is a bijection on 64-bit numbers


@lru_cache(maxsize=65536)
def _ck_base(ck: str) -> int:
    return _ino(f"ck:{ck}:files")


def fs_ino(ck: str, st_ino: int) -> int:
    """A file of a snapshot: distinct files of one checkpoint never collide, hard links share."""
    n = (_ck_base(ck) + st_ino * _K) & 0xFFFFFFFFFFFFFFFF
    return n if n > ROOT_INO else n + 2


ROOT, PODS, POD, CKPTS, BYTIME, CKPT, FS, PROCS, PROC, IMAGES, IMAGE, BRANCHES, BRANCH = (
    "root", "pods", "pod", "checkpoints", "by-time", "checkpoint", "fs", "processes", "process", "images", "image",
    "branches", "branch",
)  # fmt: skip
LINK, LATEST, POD_INFO, CK_INFO, BRANCH_INFO, PROC_FILE = "link", "latest", "pod-info", "ck-info", "branch-info", "proc-file"
DIRS = {ROOT, PODS, POD, CKPTS, BYTIME, CKPT, PROCS, PROC, IMAGES, BRANCHES, BRANCH}


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


@dataclass(frozen=True)
class CkInfo:
    """What the view needs of a checkpoint; immutable once the checkpoint exists."""

    id: str
    pod: str
    seq: int
    created_ns: int
    snapshot: str
    image_format: str | None
    image_dir: str | None
    processes: tuple


def _ns(t: datetime) -> int:
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1_000_000_000)


def _json(doc) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def time_name(created_ns: int) -> str:
    """A checkpoint's name under by-time/: its local time, ISO 8601, to the second."""
    return datetime.fromtimestamp(created_ns / 1e9).astimezone().isoformat(timespec="seconds")


class HistoryTree:
    CACHE = 4096  # checkpoints' CkInfo kept

    def __init__(self, ctx: Context, allow_other: bool = False):
        self.ctx = ctx
        self.allow_other = allow_other
        self.mounted_ns = _ns(datetime.now(timezone.utc))
        self._cks: OrderedDict[str, CkInfo] = OrderedDict()
        self._lock = threading.Lock()

    # --- the catalog ---------------------------------------------------------------------------
    def _remember(self, info: CkInfo) -> CkInfo:
        with self._lock:
            self._cks[info.id] = info
            if len(self._cks) > self.CACHE:
                self._cks.popitem(last=False)
        return info

    def checkpoint(self, ck_id: str) -> CkInfo:
        with self._lock:
            info = self._cks.get(ck_id)
        if info is not None:
            return info
        with self.ctx.catalog.session() as s:
            ck = s.get(Checkpoint, ck_id)
            if ck is None:
                raise ViewError(errno.ENOENT, f"checkpoint {ck_id} no longer exists")
            return self._remember(self._info(ck))

    @staticmethod
    def _info(ck: Checkpoint) -> CkInfo:
        return CkInfo(ck.id, ck.pod.name, ck.seq, _ns(ck.created_at), ck.snapshot_path, ck.image_format,
                      ck.image_dir, tuple(ck.processes or ()))  # fmt: skip

    def _pod_checkpoints(self, pod: str) -> list[tuple[int, str, int]]:
        """(seq, id, created ns) of a pod's checkpoints, one query (no ORM objects: 10,000 rows)."""
        with self.ctx.catalog.session() as s:
            rows = s.execute(
                select(Checkpoint.seq, Checkpoint.id, Checkpoint.created_at)
                .join(Pod, Checkpoint.pod_id == Pod.id)
                .where(Pod.name == pod)
                .order_by(Checkpoint.seq)
            ).all()
        return [(seq, cid, _ns(t)) for seq, cid, t in rows]

    def _pod_row(self, name: str) -> Pod:
        with self.ctx.catalog.session() as s:
            pod = queries.find_pod(s, name)
            if pod is None:
                raise ViewError(errno.ENOENT)
            s.expunge(pod)
            return pod

    # --- navigation ----------------------------------------------------------------------------
    def root(self) -> Node:
        return Node(ROOT, "/")

    def entries(self, node: Node) -> list[tuple[str, Node]]:
        """A directory's children with their names."""
        k = node.kind
        if k == ROOT:
            return [("pods", Node(PODS, "/pods"))]
        if k == PODS:
            with self.ctx.catalog.session() as s:
                names = s.scalars(select(Pod.name).order_by(Pod.name)).all()
            return [(n, self._pod_node(n)) for n in names]
        if k == POD:
            pod = self._pod_row(node.pod)
            cks = self._pod_checkpoints(node.pod)
            out = [
                ("checkpoints", Node(CKPTS, f"/pods/{node.pod}/checkpoints", pod=node.pod)),
                ("by-time", Node(BYTIME, f"/pods/{node.pod}/by-time", pod=node.pod)),
                ("info.json", Node(POD_INFO, f"/pods/{node.pod}/info.json", pod=node.pod)),
            ]
            if cks:
                out.append(("latest", Node(LATEST, f"/pods/{node.pod}/latest", pod=node.pod)))
            if os.path.isdir(pod.volume):
                out.append(("live", self._link(f"/pods/{node.pod}/live", pod.volume)))
            return out
        if k == CKPTS:
            return [(str(seq), self._ck_node(node.pod, cid)) for seq, cid, _t in self._pod_checkpoints(node.pod)]
        if k == BYTIME:
            return [(name, self._link(f"/pods/{node.pod}/by-time/{name}", f"../checkpoints/{seq}", immutable=True))
                    for name, seq, _t in self._by_time(node.pod)]  # fmt: skip
        if k == CKPT:
            info = self.checkpoint(node.ck)
            base = f"ck:{info.id}"
            self.ctx.pool.backend.ensure_browsable(Path(info.snapshot))  # NILFS2 mounts on demand
            out = [
                ("fs", Node(FS, f"{base}:fs", pod=info.pod, ck=info.id, path=info.snapshot, immutable=True)),
                ("info.json", Node(CK_INFO, f"{base}:info.json", pod=info.pod, ck=info.id)),
                ("processes", Node(PROCS, f"{base}:processes", ck=info.id, immutable=True)),
                ("branches", Node(BRANCHES, f"{base}:branches", pod=info.pod, ck=info.id)),
            ]
            if info.image_format:
                out.insert(2, ("images", Node(IMAGES, f"{base}:images", ck=info.id, immutable=True)))
            return out
        if k == PROCS:
            return [(str(p["pid"]), Node(PROC, f"ck:{node.ck}:proc:{p['pid']}", ck=node.ck, path=str(p["pid"]),
                                         immutable=True)) for p in self.checkpoint(node.ck).processes]  # fmt: skip
        if k == PROC:
            base = f"ck:{node.ck}:proc:{node.path}"
            p = self._process(node)
            return [
                ("cmdline", Node(PROC_FILE, f"{base}:cmdline", ck=node.ck, path=node.path, immutable=True)),
                ("cwd", self._link(f"{base}:cwd", p.get("cwd", ""), immutable=True)),
                ("host_pid", Node(PROC_FILE, f"{base}:host_pid", ck=node.ck, path=node.path, immutable=True)),
            ]
        if k == IMAGES:
            return [(n, Node(IMAGE, f"ck:{node.ck}:image:{n}", ck=node.ck, path=n, immutable=True))
                    for n, _size in self._images(node.ck)]  # fmt: skip
        if k == BRANCHES:
            with self.ctx.catalog.session() as s:
                names = s.scalars(select(Pod.name).where(Pod.origin_checkpoint_id == node.ck).order_by(Pod.name)).all()
            return [(n, self._branch_node(node.ck, n)) for n in names]
        if k == BRANCH:
            base = f"ck:{node.ck}:branch:{node.pod}"
            return [
                ("pod", self._link(f"{base}:pod", f"../../../../../{node.pod}")),
                ("info.json", Node(BRANCH_INFO, f"{base}:info.json", pod=node.pod, ck=node.ck)),
            ]
        if k == FS:
            return self._fs_entries(node)
        raise ViewError(errno.ENOTDIR)

    def lookup(self, node: Node, name: str) -> Node:
        k = node.kind
        if name in (".", ".."):
            raise ViewError(errno.ENOENT)  # the kernel resolves these itself
        if k == FS:
            path = os.path.join(node.path, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise ViewError(errno.ENOENT) from None
            return self._fs_node(node.ck, path, st)
        if k == PODS:
            if not NAME_RE.fullmatch(name):
                raise ViewError(errno.ENOENT)
            self._pod_row(name)
            return self._pod_node(name)
        if k == CKPTS:
            if not name.isdigit() or name != str(int(name)):
                raise ViewError(errno.ENOENT)
            with self.ctx.catalog.session() as s:
                ck = s.scalars(
                    select(Checkpoint).join(Pod, Checkpoint.pod_id == Pod.id)
                    .where(Pod.name == node.pod, Checkpoint.seq == int(name))
                ).one_or_none()  # fmt: skip
                if ck is None:
                    raise ViewError(errno.ENOENT)
                info = self._remember(self._info(ck))
            return self._ck_node(info.pod, info.id)
        if k == BRANCHES:
            with self.ctx.catalog.session() as s:
                found = s.scalar(select(Pod.name).where(Pod.origin_checkpoint_id == node.ck, Pod.name == name))
            if found is None:
                raise ViewError(errno.ENOENT)
            return self._branch_node(node.ck, name)
        for child_name, child in self.entries(node):
            if child_name == name:
                return child
        raise ViewError(errno.ENOENT)

    # --- attributes and contents ---------------------------------------------------------------
    def getattr(self, node: Node) -> Attr:
        k = node.kind
        if k == FS:
            try:
                return self._fs_attr(node, os.lstat(node.path))
            except FileNotFoundError:
                raise ViewError(errno.ENOENT, f"{node.path} has gone (checkpoint removed?)") from None
        t = self.mounted_ns
        if node.ck:
            t = self.checkpoint(node.ck).created_ns
        elif node.pod and k == POD:
            t = _ns(self._pod_row(node.pod).created_at)
        if k in DIRS:
            return self._dir_attr(node, t)
        if k in (LINK, LATEST):
            return Attr(node.ino, stat.S_IFLNK | 0o777, size=len(os.fsencode(self.readlink(node))), mtime_ns=t,
                        ctime_ns=t, atime_ns=t)  # fmt: skip
        if k == IMAGE:
            size = dict(self._images(node.ck)).get(node.path)
            if size is None:
                raise ViewError(errno.ENOENT)
            return Attr(node.ino, stat.S_IFREG | 0o400, size=size, mtime_ns=t, ctime_ns=t, atime_ns=t,
                        blocks=(size + 511) // 512)  # fmt: skip
        data = self.contents(node)
        return Attr(node.ino, stat.S_IFREG | 0o444, size=len(data), mtime_ns=t, ctime_ns=t, atime_ns=t)

    def contents(self, node: Node) -> bytes:
        """The whole content of a small generated file (info.json, process files)."""
        k = node.kind
        if k == CK_INFO:
            with self.ctx.catalog.session() as s:
                ck = s.get(Checkpoint, node.ck)
                if ck is None:
                    raise ViewError(errno.ENOENT)
                return _json(checkpoint_record(ck))
        if k in (POD_INFO, BRANCH_INFO):
            with self.ctx.catalog.session() as s:
                pod = queries.find_pod(s, node.pod)
                if pod is None:
                    raise ViewError(errno.ENOENT)
                rec = pod_record(pod, len(pod.checkpoints))
                if self.allow_other:
                    # Other users may read this file: --env values are often secrets.
                    rec["env"] = {k: "(hidden: see `zap show`)" for k in rec["env"] or {}}
                return _json(rec)
        if k == PROC_FILE:
            p = self._process(node)
            if node.key.endswith(":cmdline"):
                return b"".join(os.fsencode(a) + b"\0" for a in p.get("cmdline", []))
            return f"{p.get('host_pid', '')}\n".encode()
        raise ViewError(errno.EISDIR if k in DIRS else errno.EINVAL)

    def readlink(self, node: Node) -> str:
        if node.kind == LINK:
            return node.path
        if node.kind == LATEST:  # changes with every checkpoint: never baked into the node
            with self.ctx.catalog.session() as s:
                top = s.scalar(select(func.max(Checkpoint.seq)).join(Pod, Checkpoint.pod_id == Pod.id)
                               .where(Pod.name == node.pod))  # fmt: skip
            if top is None:
                raise ViewError(errno.ENOENT)
            return f"checkpoints/{top}"
        if node.kind == FS:
            return os.readlink(node.path)
        raise ViewError(errno.EINVAL)

    def open_image(self, node: Node) -> ImageReader | _WholeFile:
        """A reader over one CRIU image file; damaged or missing store data is EIO, with why."""
        info = self.checkpoint(node.ck)
        try:
            if info.image_format == "cas":
                with self.ctx.catalog.session() as s:
                    return image_sets.store(self.ctx).reader(s, info.id, node.path)
            if info.image_format == "dir":
                with self.ctx.catalog.session() as s:
                    ck = s.get(Checkpoint, info.id)
                    return _WholeFile(image_sets.legacy_file(ck, node.path))
        except (StoreError, image_sets.DamagedImages) as e:
            raise ViewError(errno.EIO, f"checkpoint {info.pod}@{info.seq}: {e}") from None
        raise ViewError(errno.ENOENT)

    def xattrs(self, node: Node) -> list[str]:
        if node.kind != FS:
            return []
        return os.listxattr(node.path, follow_symlinks=False)

    def getxattr(self, node: Node, name: str) -> bytes:
        if node.kind != FS:
            raise ViewError(errno.ENODATA)
        return os.getxattr(node.path, name, follow_symlinks=False)

    # --- the one write: a branch ----------------------------------------------------------------
    def make_branch(self, parent: Node, name: str) -> Node:
        """mkdir in checkpoints/<N>/branches/: exactly `zap branch POD@N NAME`."""
        if parent.kind != BRANCHES:
            raise ViewError(errno.EROFS, "the view is read-only; only checkpoints/<N>/branches/ takes mkdir")
        from zapckpt.ops.restore import branch

        try:
            branch(self.ctx, parent.ck, name)
        except AlreadyExists as e:
            raise ViewError(errno.EEXIST, str(e)) from None
        except NotFound as e:
            raise ViewError(errno.ENOENT, str(e)) from None
        except UsageError as e:
            raise ViewError(errno.EINVAL, str(e)) from None
        except ZapError as e:
            raise ViewError(errno.EIO, str(e)) from None
        return self._branch_node(parent.ck, name)

    # --- helpers -------------------------------------------------------------------------------
    def _pod_node(self, name: str) -> Node:
        return Node(POD, f"/pods/{name}", pod=name)

    def _ck_node(self, pod: str, ck_id: str) -> Node:
        # Its contents never change, but the entry goes when the checkpoint is removed.
        return Node(CKPT, f"ck:{ck_id}", pod=pod, ck=ck_id)

    def _branch_node(self, ck_id: str, name: str) -> Node:
        return Node(BRANCH, f"ck:{ck_id}:branch:{name}", pod=name, ck=ck_id)

    @staticmethod
    def _dir_attr(node: Node, t: int) -> Attr:
        # images/ holds process memory: root only, even with --allow-other.
        mode = 0o700 if node.kind == IMAGES else 0o755 if node.kind == BRANCHES else 0o555
        return Attr(node.ino, stat.S_IFDIR | mode, nlink=2, mtime_ns=t, ctime_ns=t, atime_ns=t)

    @staticmethod
    def _link(key: str, target: str, immutable: bool = False) -> Node:
        return Node(LINK, key, path=target, immutable=immutable)

    def _by_time(self, pod: str) -> list[tuple[str, int, int]]:
        out, seen = [], set()
        for seq, _cid, t in self._pod_checkpoints(pod):
            name = time_name(t)
            if name in seen:  # two checkpoints in one second: the later ones get their number
                name = f"{name}.{seq}"
            seen.add(name)
            out.append((name, seq, t))
        return out

    def _process(self, node: Node) -> dict:
        for p in self.checkpoint(node.ck).processes:
            if str(p.get("pid")) == node.path:
                return p
        raise ViewError(errno.ENOENT)

    def _images(self, ck_id: str) -> list[tuple[str, int]]:
        info = self.checkpoint(ck_id)
        if info.image_format == "dir":
            from zapckpt.store import legacy as imagestore

            try:
                return [(f["name"], f["raw"]) for f in imagestore.manifest(Path(info.image_dir or ""))]
            except imagestore.ImageStoreError as e:
                raise ViewError(errno.EIO, str(e)) from None
        with self.ctx.catalog.session() as s:
            rows = s.execute(
                select(ImageFile.name, ImageFile.raw_bytes).where(ImageFile.checkpoint_id == ck_id).order_by(ImageFile.name)
            ).all()
        return [(n, size) for n, size in rows]

    @staticmethod
    def _fs_node(ck: str, path: str, st: os.stat_result) -> Node:
        return Node(FS, "", ck=ck, path=path, immutable=True, ino=fs_ino(ck, st.st_ino))

    @staticmethod
    def _fs_attr(node: Node, st: os.stat_result) -> Attr:
        return Attr(node.ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns,
                    st.st_ctime_ns, st.st_atime_ns, st.st_uid, st.st_gid, st.st_rdev, st.st_blocks)  # fmt: skip

    def fs_listing(self, node: Node) -> list[tuple[str, Node, Attr]]:
        """A snapshot directory's entries with their attributes, in one pass (readdirplus)."""
        out = []
        try:
            with os.scandir(node.path) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    child = self._fs_node(node.ck, e.path, st)
                    out.append((e.name, child, self._fs_attr(child, st)))
        except FileNotFoundError:
            raise ViewError(errno.ENOENT, f"{node.path} has gone (checkpoint removed?)") from None
        return out

    def listing(self, node: Node) -> list[tuple[str, Node, Attr]]:
        """A directory's entries with their attributes, for readdirplus: one catalog query or
        one pass over the snapshot directory, never one per entry."""
        if node.kind == FS:
            return self.fs_listing(node)
        if node.kind == CKPTS:
            return [(str(seq), (c := self._ck_node(node.pod, cid)), self._dir_attr(c, t))
                    for seq, cid, t in self._pod_checkpoints(node.pod)]  # fmt: skip
        if node.kind == BYTIME:
            out = []
            for name, seq, t in self._by_time(node.pod):
                link = self._link(f"/pods/{node.pod}/by-time/{name}", f"../checkpoints/{seq}", immutable=True)
                out.append((name, link, Attr(link.ino, stat.S_IFLNK | 0o777, size=len(link.path), mtime_ns=t,
                                             ctime_ns=t, atime_ns=t)))  # fmt: skip
            return out
        out = []
        for name, child in self.entries(node):
            try:
                out.append((name, child, self.getattr(child)))
            except ViewError:
                continue  # gone between the listing and its attributes
        return out

    def _fs_entries(self, node: Node) -> list[tuple[str, Node]]:
        return [(name, child) for name, child, _a in self.fs_listing(node)]


class _WholeFile:
    """A legacy (schema 0001) image, decompressed whole on open."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        self.data = b""
