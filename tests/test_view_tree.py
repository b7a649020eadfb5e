"""The history view's tree as plain Python: no FUSE, no pool, no root. A catalog in a temporary
SQLite file, snapshot directories in tmp_path, and a stand-in for the pool (only its
ensure_browsable is used, a no-op on btrfs). tests/test_view.py checks the same through a real
FUSE mount."""

from __future__ import annotations

import errno
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from catalog import Catalog, Checkpoint, Pod, Tag
from zapckpt.view import nodes
from zapckpt.view.tree import HistoryTree



@pytest.fixture
def tree(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    snaps = tmp_path / "snaps"
    t0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    with cat.session() as s:
        web = Pod(name="web", volume=str(tmp_path / "vol"), mount_path="/m/web", command=["x"], env={"SECRET": "s"},
                  cwd="/")  # fmt: skip
        s.add(web)
        s.flush()
        for seq in (1, 2, 3):
            d = snaps / str(seq)
            (d / "sub").mkdir(parents=True)
            (d / "a.txt").write_text(f"version {seq}\n")
            os.link(d / "a.txt", d / "sub" / "hard.txt")
            os.symlink("a.txt", d / "link")
            s.add(Checkpoint(id=f"ck{seq:010d}", pod=web, seq=seq, created_at=t0 + timedelta(seconds=seq // 3),
                             backend="btrfs", snapshot_path=str(d), image_format=None,
                             processes=[{"pid": 1, "host_pid": 4242, "cmdline": ["sleep", "9"], "cwd": "/srv"}]))
        s.flush()
        s.add(Tag(pod_id=web.id, checkpoint_id="ck0000000002", name="good"))
        s.add(Pod(name="fork", volume="/nonexistent", mount_path="/m/web", command=["x"], env={}, cwd="/",
                  origin_checkpoint_id="ck0000000002"))  # fmt: skip
    (tmp_path / "vol").mkdir()
    ctx = SimpleNamespace(catalog=cat, pool=SimpleNamespace(backend=SimpleNamespace(ensure_browsable=lambda p: None)))
    yield HistoryTree(ctx)
    cat.dispose()


def walk(tree, path: str):
    node = tree.root()
    for part in filter(None, path.split("/")):
        node = tree.lookup(node, part)
    return node


def names(tree, path: str) -> list[str]:
    return [n for n, _c in tree.entries(walk(tree, path))]


def test_layout(tree, tmp_path):
    assert names(tree, "/") == ["pods"]
    assert names(tree, "/pods") == ["fork", "web"]
    assert names(tree, "/pods/web") == ["checkpoints", "by-time", "info.json", "latest", "tags", "live"]
    assert names(tree, "/pods/web/tags") == ["good"]
    assert tree.readlink(walk(tree, "/pods/web/tags/good")) == "../checkpoints/2"
    assert names(tree, "/pods/fork") == ["checkpoints", "by-time", "info.json"]  # no checkpoint, no volume
    assert names(tree, "/pods/web/checkpoints") == ["1", "2", "3"]
    assert names(tree, "/pods/web/checkpoints/2") == ["fs", "info.json", "processes", "branches"]  # files only
    assert sorted(names(tree, "/pods/web/checkpoints/2/fs")) == ["a.txt", "link", "sub"]
    assert names(tree, "/pods/web/checkpoints/2/branches") == ["fork"]
    assert names(tree, "/pods/web/checkpoints/1/branches") == []
    assert names(tree, "/pods/web/checkpoints/2/processes/1") == ["cmdline", "cwd", "host_pid"]
    assert tree.readlink(walk(tree, "/pods/web/latest")) == "checkpoints/3"
    assert tree.readlink(walk(tree, "/pods/web/live")) == str(tmp_path / "vol")
    assert tree.readlink(walk(tree, "/pods/web/checkpoints/2/branches/fork/pod")) == "../../../../../fork"
    # checkpoints 1 and 2 share a second: the second one's name carries its number
    by_time = names(tree, "/pods/web/by-time")
    assert len(by_time) == 3 and by_time[1] == by_time[0] + ".2"
    assert tree.readlink(walk(tree, f"/pods/web/by-time/{by_time[1]}")) == "../checkpoints/2"


def test_contents_and_attributes(tree):
    f = walk(tree, "/pods/web/checkpoints/2/fs/a.txt")
    assert tree.open(f).read(0, 100) == b"version 2\n"
    a = tree.getattr(f)
    assert stat.S_ISREG(a.mode) and a.size == 10
    # hard links stay one inode; different checkpoints, different inodes
    assert tree.getattr(walk(tree, "/pods/web/checkpoints/2/fs/sub/hard.txt")).ino == a.ino
    assert tree.getattr(walk(tree, "/pods/web/checkpoints/3/fs/a.txt")).ino != a.ino
    assert tree.readlink(walk(tree, "/pods/web/checkpoints/2/fs/link")) == "a.txt"
    assert tree.contents(walk(tree, "/pods/web/checkpoints/2/processes/1/cmdline")) == b"sleep\x009\x00"
    assert tree.contents(walk(tree, "/pods/web/checkpoints/2/processes/1/host_pid")) == b"4242\n"
    assert tree.readlink(walk(tree, "/pods/web/checkpoints/2/processes/1/cwd")) == "/srv"
    info = json.loads(tree.contents(walk(tree, "/pods/web/checkpoints/2/info.json")))
    assert info["ref"] == "web@2" and info["has_processes"] is False
    assert json.loads(tree.contents(walk(tree, "/pods/web/info.json")))["env"] == {"SECRET": "s"}
    assert json.loads(tree.contents(walk(tree, "/pods/web/checkpoints/2/branches/fork/info.json")))["origin"] == "web@2"
    ck = tree.getattr(walk(tree, "/pods/web/checkpoints/3"))
    assert stat.S_ISDIR(ck.mode) and ck.mtime_ns == int(datetime(2026, 5, 1, 12, 0, 1, tzinfo=timezone.utc).timestamp() * 1e9)
    assert stat.S_IMODE(tree.getattr(walk(tree, "/pods/web/checkpoints/2/branches")).mode) == 0o755


def test_listing_gives_the_same_attributes_as_getattr(tree):
    for path in ("/pods", "/pods/web", "/pods/web/checkpoints", "/pods/web/by-time", "/pods/web/checkpoints/1/fs",
                 "/pods/web/checkpoints/1"):  # fmt: skip
        for name, child, attr in tree.listing(walk(tree, path)):
            again = tree.getattr(tree.lookup(walk(tree, path), name))
            assert (attr.ino, attr.mode, attr.size) == (again.ino, again.mode, again.size), (path, name)
            assert child.ino == attr.ino


def test_what_may_be_cached(tree):
    assert walk(tree, "/pods/web/checkpoints/1/fs").cache_listing
    assert walk(tree, "/pods/web/checkpoints/1/fs/a.txt").cache_content
    assert walk(tree, "/pods/web/checkpoints/1/processes").cache_listing
    for live in ("/pods", "/pods/web", "/pods/web/checkpoints", "/pods/web/by-time", "/pods/web/checkpoints/1/branches"):
        n = walk(tree, live)
        assert not n.cache_listing and not n.immutable, live
    assert not walk(tree, "/pods/web/info.json").cache_content
    assert not walk(tree, "/pods/web/latest").immutable  # moves with every checkpoint
    assert walk(tree, "/pods/web/by-time").listing(tree)[0][1].immutable


def test_errors(tree):
    def err(fn, *a):
        with pytest.raises(nodes.ViewError) as e:
            fn(*a)
        return e.value.errno

    assert err(walk, tree, "/pods/nope") == errno.ENOENT
    assert err(walk, tree, "/pods/web/checkpoints/9") == errno.ENOENT
    assert err(walk, tree, "/pods/web/checkpoints/01") == errno.ENOENT  # one name per checkpoint
    assert err(walk, tree, "/pods/../etc") == errno.ENOENT
    assert err(walk, tree, "/pods/web/checkpoints/1/fs/nope") == errno.ENOENT
    assert err(tree.entries, walk(tree, "/pods/web/info.json")) == errno.ENOTDIR
    assert err(tree.contents, walk(tree, "/pods/web")) == errno.EISDIR
    assert err(tree.readlink, walk(tree, "/pods/web")) == errno.EINVAL
    assert err(tree.make_branch, walk(tree, "/pods/web"), "x") == errno.EROFS
    assert err(tree.getxattr, walk(tree, "/pods/web"), "user.x") == errno.ENODATA
    assert tree.xattrs(walk(tree, "/pods/web")) == []


def test_allow_other_hides_the_environment(tree):
    tree.allow_other = True
    assert json.loads(tree.contents(walk(tree, "/pods/web/info.json")))["env"] == {"SECRET": "(hidden: see `zap show`)"}
