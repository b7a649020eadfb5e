"""The backend interface seen from above, without a file system: every operation consults the
capability it needs before it changes anything, and the one mount-table parser reads what the
kernel writes (escapes included)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from fsbackend import get_backend
from zapckpt.common import mountinfo
from zapckpt.common.errors import UsageError, ZapError


class _NoCatalog:
    def session(self):
        raise AssertionError("the capability check must come before any catalog work")


def _ctx(**caps):
    backend = get_backend("btrfs")
    backend.capabilities = replace(backend.capabilities, **caps)  # this instance only
    pool = SimpleNamespace(backend=backend)
    return SimpleNamespace(pool=pool, ensure_pool=lambda: pool, catalog=_NoCatalog())


@pytest.mark.parametrize("cap, call, words", [
    ("in_place_rollback", lambda ctx: __import__("zapckpt.ops.restore", fromlist=["x"]).restore(ctx, "web@1"),
     "cannot roll a volume back in place"),
    ("writable_clones", lambda ctx: __import__("zapckpt.ops.restore", fromlist=["x"]).branch(ctx, "web@1", "b"),
     "cannot make writable copies"),
    ("diff", lambda ctx: __import__("zapckpt.ops.diff", fromlist=["x"]).diff(ctx, "web@1", "web@2"),
     "cannot compare checkpoints"),
    ("send_stream", lambda ctx: __import__("zapckpt.ops.transfer", fromlist=["x"]).export(ctx, "web@1", "/nonexistent/x"),
     "export needs a btrfs pool"),
    ("send_stream", lambda ctx: __import__("zapckpt.ops.transfer", fromlist=["x"]).import_(ctx, "/nonexistent/x", None),
     "import needs a btrfs pool"),
])  # fmt: skip
def test_operations_consult_the_capability_they_need(cap, call, words):
    with pytest.raises(ZapError) as e:
        call(_ctx(**{cap: False}))
    assert words in str(e.value)


def test_a_backend_without_device_pools_refuses_them(tmp_path, monkeypatch):
    import zapckpt.system.pool as pool_mod

    monkeypatch.setattr(pool_mod, "_read", lambda _catalog, _host: (None, None, "btrfs"))  # a new state directory
    state = SimpleNamespace(ensure=lambda: None, locks=tmp_path)
    with pytest.raises(UsageError, match="--device goes with --backend nilfs"):
        pool_mod.init_pool(state, _NoCatalog(), 1, device="/dev/nonexistent")
    assert not get_backend("btrfs").capabilities.device_pool and get_backend("nilfs").capabilities.device_pool


def test_mountinfo_parses_escapes_and_optional_fields():
    text = (
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "85 22 0:45 /sub /mnt/with\\040space rw,nosuid master:3 shared:9 - btrfs /dev/loop0 rw,space_cache=v2\n"
        "90 85 0:50 / /mnt/caf\\303\\251 ro - fuse.zapckpt zapckpt rw,user_id=0\n"
    )
    a, b, c = mountinfo.parse(text)
    assert (a.point, a.fstype, a.source) == ("/", "ext4", "/dev/sda1")
    assert (b.point, b.root, b.device, b.fstype, b.super_options) == ("/mnt/with space", "/sub", "0:45", "btrfs",
                                                                       "rw,space_cache=v2")  # fmt: skip
    assert c.point == "/mnt/café" and c.fstype == mountinfo.VIEW_FSTYPE and c.parent_id == 85


def test_mountinfo_of_this_process():
    root = mountinfo.find("/")
    assert root is not None and root.point == "/"
    assert "/proc" in mountinfo.points("proc")
