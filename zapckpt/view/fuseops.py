"""The pyfuse3 adapter over HistoryTree: kernel requests in, tree calls out. The only module
that imports pyfuse3 (community-maintained; keep it replaceable). Only FUSEError leaves a
handler; blocking work (catalog, snapshot files, the image store) runs on worker threads
behind a CapacityLimiter so the trio loop never waits on a disk or a lock."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import OrderedDict, deque
from itertools import count

import pyfuse3
import trio

from .nodes import ROOT_INO, Attr, BytesReader, Node, ViewError
from .tree import HistoryTree

log = logging.getLogger("zapckpt.view")

LONG = 24 * 3600.0  # past states never change
SHORT = 1.0  # listings from the catalog: new checkpoints show up within a second
LISTED_ENTRIES = 500_000  # directory entries of past states kept in memory (about 200 bytes each)
AHEAD_ENTRIES = 5_000  # entries listed ahead of the kernel's asking, per opendir
AHEAD_S = 0.05  # and at most this long
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class _Dir:
    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[bytes, Node, Attr]]):
        self.entries = entries


class HistoryOps(pyfuse3.Operations):
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: HistoryTree, workers: int = 8):
        super().__init__()
        self.tree = tree
        self.limiter = trio.CapacityLimiter(workers)
        # Branches restore processes (seconds): their own lane, so browsing goes on meanwhile.
        self.branch_limiter = trio.CapacityLimiter(1)
        # Only the nodes the kernel currently knows, with its lookup counts (forget() drops them).
        root = tree.root()
        self.nodes: dict[int, Node] = {ROOT_INO: root}
        self.lookups: dict[int, int] = {ROOT_INO: 1}
        self.handles: dict[int, object] = {}
        self.listings = _Listings(LISTED_ENTRIES)
        self._fh = count(1)

    # --- plumbing --------------------------------------------------------------------------------
    async def _run(self, fn, *args, limiter=None):
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter or self.limiter)
        except ViewError as e:
            if e.reason:
                log.warning("%s", e.reason)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:  # noqa: BLE001 - a bug must not take the mount down
            log.exception("internal error in %s", getattr(fn, "__name__", fn))
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _known(self, node: Node) -> None:
        """The kernel now holds one more reference to node's inode (hot: once per entry listed)."""
        ino = node.ino
        n = self.lookups.get(ino)
        if n is None:
            self.nodes[ino] = node
            self.lookups[ino] = 1
        else:
            self.lookups[ino] = n + 1

    def _entry(self, node: Node, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = LONG if node.immutable else SHORT
        e.attr_timeout = LONG if node.immutable or node.stable_attr else SHORT
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid, e.st_gid, e.st_rdev = a.uid, a.gid, a.rdev
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = a.blocks
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = a.atime_ns, a.mtime_ns, a.ctime_ns
        return e

    def _lookup_attr(self, node: Node, name: str) -> tuple[Node, Attr]:
        child = self.tree.lookup(node, name)
        return child, self.tree.getattr(child)

    # --- lookups and attributes ------------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        node = self._node(parent_inode)
        child, attr = await self._run(self._lookup_attr, node, os.fsdecode(name))
        self._known(child)
        return self._entry(child, attr)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            if ino == ROOT_INO:
                continue
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self.nodes.pop(ino, None)

    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return self._entry(node, await self._run(self.tree.getattr, node))

    async def readlink(self, inode, ctx):
        return os.fsencode(await self._run(self.tree.readlink, self._node(inode)))

    async def statfs(self, ctx):
        st = await self._run(os.statvfs, str(self.tree.ctx.state.root))
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
        out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, 0, 0
        out.f_files, out.f_ffree, out.f_favail = st.f_files, 0, 0
        out.f_namemax = 255
        return out

    # --- directories -----------------------------------------------------------------------------
    def _listing(self, node: Node) -> list[tuple[bytes, Node, pyfuse3.EntryAttributes]]:
        # Runs on a worker thread, so the trio loop only hands the entries to the kernel.
        return [(os.fsencode(n), c, self._entry(c, a)) for n, c, a in self.tree.listing(node)]

    def _listing_ahead(self, node: Node) -> tuple[list, dict[int, list]]:
        """node's listing, and those of the directories under it (breadth first, within a
        budget) that the kernel is likely to open next: a worker thread's round trip costs
        more here (~190 us) than listing a small directory, so one trip brings many (`find`)."""
        entries = self._listing(node)
        ahead: dict[int, list] = {}
        budget, deadline = AHEAD_ENTRIES, time.monotonic() + AHEAD_S
        queue = deque(c for _n, c, e in entries if c.cache_listing and stat.S_ISDIR(e.st_mode))
        while queue and budget > 0 and time.monotonic() < deadline:
            child = queue.popleft()
            try:
                sub = self._listing(child)
            except (ViewError, OSError):
                continue  # asked for by name later, it fails there with its own error
            ahead[child.ino] = sub
            budget -= len(sub)
            queue.extend(c for _n, c, e in sub if c.cache_listing and stat.S_ISDIR(e.st_mode))
        return entries, ahead

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        # Listings of past states never change: kept (bounded) so a second `find` or `ls` does
        # not walk the snapshot again. Catalog listings are read fresh every time.
        cacheable = node.cache_listing
        entries = self.listings.get(inode) if cacheable else None
        if entries is None and cacheable:
            entries, ahead = await self._run(self._listing_ahead, node)
            self.listings.put(inode, entries)
            for ino, sub in ahead.items():
                self.listings.put(ino, sub)
        elif entries is None:
            entries = await self._run(self._listing, node)
        fh = next(self._fh)
        self.handles[fh] = _Dir(entries)
        return fh

    async def readdir(self, fh, start_id, token):
        d = self.handles[fh]
        reply, known = pyfuse3.readdir_reply, self._known
        for i in range(start_id, len(d.entries)):
            name, node, entry = d.entries[i]
            if not reply(token, name, entry, i + 1):
                break
            known(node)

    async def releasedir(self, fh):
        self.handles.pop(fh, None)

    # --- files -----------------------------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        handle = await self._run(self.tree.open, node)
        fh = next(self._fh)
        self.handles[fh] = handle
        # Past states never change: let the kernel keep their pages. Generated files (info.json
        # of a live pod) are read fresh each time.
        return pyfuse3.FileInfo(fh=fh, keep_cache=node.cache_content, direct_io=not node.cache_content)

    async def read(self, fh, off, size):
        h = self.handles[fh]
        if isinstance(h, BytesReader):  # in memory: no thread needed
            return h.read(off, size)
        return await self._run(h.read, off, size)

    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is not None:
            await self._run(h.close)

    # --- extended attributes ---------------------------------------------------------------------
    # `ls -l` asks for two of them per entry: answered here where no I/O is needed, since a
    # worker thread's round trip (~190 us on this machine) was most of what `ls -l` cost.
    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        names = self._inline(self.tree.xattrs, node) if node.inline_xattrs else await self._run(self.tree.xattrs, node)
        return [os.fsencode(n) for n in names]

    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        if node.inline_xattrs:
            return self._inline(self.tree.getxattr, node, os.fsdecode(name))
        return await self._run(self.tree.getxattr, node, os.fsdecode(name))

    @staticmethod
    def _inline(fn, *args):
        try:
            return fn(*args)
        except ViewError as e:
            raise pyfuse3.FUSEError(e.errno) from None

    # --- the one write: mkdir in branches/ --------------------------------------------------------
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = self._node(parent_inode)

        def make() -> tuple[Node, Attr]:
            child = self.tree.make_branch(node, os.fsdecode(name))
            return child, self.tree.getattr(child)

        child, attr = await self._run(make, limiter=self.branch_limiter)
        log.info("branch %s created", os.fsdecode(name))
        self._known(child)
        return self._entry(child, attr)

    # Everything else that would change the view.
    async def _readonly(self, *_args, **_kw):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = unlink = rmdir = symlink = rename = link = write = create = _readonly  # type: ignore[assignment]
    setxattr = removexattr = _readonly  # type: ignore[assignment]


class _Listings:
    """Listings of immutable directories, least recently used dropped first."""

    def __init__(self, max_entries: int):
        self.max, self.total = max_entries, 0
        self.data: OrderedDict[int, list] = OrderedDict()

    def get(self, ino: int) -> list | None:
        entries = self.data.get(ino)
        if entries is not None:
            self.data.move_to_end(ino)
        return entries

    def put(self, ino: int, entries: list) -> None:
        if ino in self.data or len(entries) > self.max:
            return
        self.data[ino] = entries
        self.total += len(entries)
        while self.total > self.max:
            _ino, old = self.data.popitem(last=False)
            self.total -= len(old)
