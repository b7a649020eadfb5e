"""The tree of past states that `zap mount` shows, as plain Python (no FUSE here: fuseops.py
adapts it to the kernel protocol).

    pods/<pod>/info.json                     the pod (`zap show NAME --json`)
    pods/<pod>/live                          -> the pod's current volume
    pods/<pod>/latest                        -> checkpoints/<highest N>
    pods/<pod>/by-time/<local ISO time>      -> ../checkpoints/<N>
    pods/<pod>/tags/<tag>                    -> ../checkpoints/<N> (`zap tag`)
    pods/<pod>/checkpoints/<N>/fs/           the read-only snapshot, passed through
    pods/<pod>/checkpoints/<N>/info.json     the checkpoint (`zap show REF --json`)
    pods/<pod>/checkpoints/<N>/processes/<pid>/{cmdline,cwd,host_pid}
    pods/<pod>/checkpoints/<N>/images/       CRIU images, reassembled from the store on read
    pods/<pod>/checkpoints/<N>/branches/<b>/ branches made from it (mkdir makes one)

Each kind of node is a class in nodes.py; this module is what they read: the catalog (through
catalog.queries), the image store and the pool. Everything under a checkpoint is immutable;
pods/, checkpoints/, by-time/ and branches/ are read from the catalog each time they are
listed, so new checkpoints appear without a remount.
"""

from __future__ import annotations

import errno
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from catalog import Checkpoint, queries
from catalog.chunks import ChunkIndex
from zapckpt.common.errors import AlreadyExists, NotFound, UsageError, ZapError
from zapckpt.records import checkpoint_record, pod_record
from zapckpt.store import StoreError
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes

from .nodes import Attr, Node, Root, ViewError


@dataclass(frozen=True)
class CkInfo:
    """What the view needs of a checkpoint; immutable once the checkpoint exists."""

    id: str
    pod: str
    seq: int
    created_ns: int
    snapshot: str
    has_images: bool
    processes: tuple


@dataclass(frozen=True)
class PodFacts:
    volume: str
    created_ns: int


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

    def __init__(self, ctx, allow_other: bool = False):
        self.ctx = ctx
        self.allow_other = allow_other
        self.mounted_ns = _ns(datetime.now(timezone.utc))
        self._cks: OrderedDict[str, CkInfo] = OrderedDict()
        self._lock = threading.Lock()

    # --- what the adapter calls: each a call on the node ---------------------------------------
    def root(self) -> Node:
        return Root()

    def entries(self, node: Node) -> list[tuple[str, Node]]:
        return node.entries(self)

    def lookup(self, node: Node, name: str) -> Node:
        if name in (".", ".."):
            raise ViewError(errno.ENOENT)  # the kernel resolves these itself
        return node.lookup(self, name)

    def listing(self, node: Node) -> list[tuple[str, Node, Attr]]:
        """Entries with attributes, for readdirplus: one catalog query or one pass over the
        snapshot directory, never one per entry."""
        return node.listing(self)

    def getattr(self, node: Node) -> Attr:
        return node.attr(self)

    def contents(self, node: Node) -> bytes:
        return node.contents(self)

    def readlink(self, node: Node) -> str:
        return node.readlink(self)

    def open(self, node: Node):
        """A reader (read(offset, size), close()) over the node's content."""
        return node.open(self)

    def xattrs(self, node: Node) -> list[str]:
        return node.xattrs()

    def getxattr(self, node: Node, name: str) -> bytes:
        return node.getxattr(name)

    def make_branch(self, parent: Node, name: str) -> Node:
        return parent.mkdir(self, name)

    # --- what the nodes read: the catalog ------------------------------------------------------
    def _remember(self, ck: Checkpoint) -> CkInfo:
        # this host's snapshot of it (a checkpoint of another host shows here once received)
        info = CkInfo(ck.id, ck.pod.name, ck.seq, _ns(ck.created_at), str(volumes.local_snapshot(self.ctx, ck)), ck.has_images,
                      tuple(ck.processes or ()))  # fmt: skip
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
            ck = queries.checkpoint_by_id(s, ck_id)
            if ck is None:
                raise ViewError(errno.ENOENT, f"checkpoint {ck_id} no longer exists")
            return self._remember(ck)

    def checkpoint_at(self, pod: str, seq: int) -> CkInfo:
        with self.ctx.catalog.session() as s:
            ck = queries.checkpoint_at(s, pod, seq)
            if ck is None:
                raise ViewError(errno.ENOENT)
            return self._remember(ck)

    def pod_names(self) -> list[str]:
        with self.ctx.catalog.session() as s:
            return queries.pod_names(s)

    def pod_row(self, name: str) -> PodFacts:
        with self.ctx.catalog.session() as s:
            pod = queries.find_pod(s, name)
            if pod is None:
                raise ViewError(errno.ENOENT)
            return PodFacts(pod.volume, _ns(pod.created_at))

    def pod_checkpoints(self, pod: str) -> list[tuple[int, str, int]]:
        """(seq, id, created ns) of a pod's checkpoints, one query (10,000 rows: no ORM objects)."""
        with self.ctx.catalog.session() as s:
            return [(seq, cid, _ns(t)) for seq, cid, t in queries.pod_checkpoint_rows(s, pod)]

    def latest_seq(self, pod: str) -> int:
        with self.ctx.catalog.session() as s:
            top = queries.latest_seq(s, pod)
        if top is None:
            raise ViewError(errno.ENOENT)
        return top

    def tags(self, pod: str) -> list[tuple[str, int, int]]:
        """(tag, seq, created ns) of the pod's tagged checkpoints."""
        with self.ctx.catalog.session() as s:
            return [(name, seq, _ns(t)) for name, seq, t in queries.pod_tag_rows(s, pod)]

    def by_time(self, pod: str) -> list[tuple[str, int, int]]:
        """(name, seq, created ns): two checkpoints in one second, the later ones get their number."""
        out, seen = [], set()
        for seq, _cid, t in self.pod_checkpoints(pod):
            name = time_name(t)
            if name in seen:
                name = f"{name}.{seq}"
            seen.add(name)
            out.append((name, seq, t))
        return out

    def branch_names(self, ck_id: str, name: str | None = None) -> list[str]:
        with self.ctx.catalog.session() as s:
            return queries.branch_names(s, ck_id, name)

    def process(self, ck_id: str, pid: str) -> dict:
        for p in self.checkpoint(ck_id).processes:
            if str(p.get("pid")) == pid:
                return p
        raise ViewError(errno.ENOENT)

    def pod_json(self, name: str) -> bytes:
        with self.ctx.catalog.session() as s:
            pod = queries.find_pod(s, name)
            if pod is None:
                raise ViewError(errno.ENOENT)
            rec = pod_record(pod, len(pod.checkpoints))
        if self.allow_other:
            # Other users may read this file: --env values are often secrets.
            rec["env"] = {k: "(hidden: see `zap show`)" for k in rec["env"] or {}}
        return _json(rec)

    def checkpoint_json(self, ck_id: str) -> bytes:
        with self.ctx.catalog.session() as s:
            ck = queries.checkpoint_by_id(s, ck_id)
            if ck is None:
                raise ViewError(errno.ENOENT)
            return _json(checkpoint_record(ck))

    # --- the store and the pool -----------------------------------------------------------------
    def image_sizes(self, ck_id: str) -> list[tuple[str, int]]:
        with self.ctx.catalog.session() as s:
            return ChunkIndex(s).sizes(ck_id)

    def open_image(self, ck_id: str, name: str):
        """A reader over one CRIU image file; damaged or missing store data is EIO, with why."""
        info = self.checkpoint(ck_id)
        try:
            with self.ctx.catalog.session() as s:
                return image_sets.store(self.ctx).reader(s, info.id, name)
        except (StoreError, image_sets.DamagedImages) as e:
            raise ViewError(errno.EIO, f"checkpoint {info.pod}@{info.seq}: {e}") from None

    def ensure_browsable(self, snapshot: str) -> None:
        self.ctx.pool.backend.ensure_browsable(Path(snapshot))

    # --- the one write: a branch ----------------------------------------------------------------
    def branch(self, ck_id: str, name: str) -> None:
        """mkdir in checkpoints/<N>/branches/: exactly `zap branch POD@N NAME`."""
        from zapckpt.ops.restore import branch

        try:
            branch(self.ctx, ck_id, name)
        except AlreadyExists as e:
            raise ViewError(errno.EEXIST, str(e)) from None
        except NotFound as e:
            raise ViewError(errno.ENOENT, str(e)) from None
        except UsageError as e:
            raise ViewError(errno.EINVAL, str(e)) from None
        except ZapError as e:
            raise ViewError(errno.EIO, str(e)) from None
