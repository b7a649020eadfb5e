"""Runs inside the Debian 12 guest that vagrant/run-vm-tests boots (tests/test_vm_runner.py does
that as part of the suite); not collected on the host, whose kernel has no NILFS2.

The NILFS2 backend, inside the guest (Debian 12's kernel and CRIU 3.17): the pool on the
scratch disk, snapshots by `mkcp -s -p` in the frozen window, the atomicity check (a counter in
memory against its file), restore in place, branch, FUSE browse, and prune handing snapshots
back to the cleaner. In-process (one Python start-up: this guest runs in software emulation)."""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import COUNTER, assert_continuous, counter_values, wait_for  # noqa: E402

pytestmark = pytest.mark.system  # the guest's NILFS2, CRIU and disk (conftest copies the workloads)

DEVICE = "/dev/vda"


def _snapshots() -> set[int]:
    out = subprocess.run(["lscp", "-s", DEVICE], capture_output=True, text=True, check=True).stdout
    return {int(ln.split()[0]) for ln in out.splitlines()[1:] if ln.strip()}


def test_nilfs_checkpoint_is_atomic_and_restores_branches_and_prunes(ctx):
    from catalog import queries
    from zapckpt.ops import checkpoint as ckpt
    from zapckpt.pod import lifecycle as pods
    from zapckpt.ops import restore
    from zapckpt.ops import remove

    # No network: what is tested is the file system (a pod network costs seconds per branch here).
    pod = pods.run(ctx, "ctr", ["python3", str(COUNTER)], {"COUNTER_INTERVAL": "0.002"}, None, net="none")
    vol = Path(pod.volume)
    wait_for(lambda: len(counter_values(vol)) > 20, timeout=120, what="the counter")
    assert ctx.pool.backend.name == "nilfs"

    refs = []
    for i in range(4):
        time.sleep(random.uniform(0.1, 0.8))
        ck = ckpt.checkpoint(ctx, "ctr", f"n{i}")
        with ctx.catalog.session() as s:
            row = queries.resolve_ref(s, ck.id)
            refs.append((row.ref, row.snapshot_path, row.snapshot_generation, row.fs_snapshot_ms))
    cps = [g for _r, _p, g, _ms in refs]
    assert cps == sorted(cps) and set(cps) <= _snapshots()
    print(f"\nmkcp in the frozen window: {[round(ms, 1) for *_x, ms in refs]} ms", file=sys.stderr)

    # Each snapshot is readable (mounted on demand) and holds the counter's file as it was at
    # its checkpoint: without a gap, each one extending the one before.
    before: list[int] = []
    for ref, path, _cp, _ms in refs:
        ctx.pool.backend.ensure_browsable(Path(path))
        at = counter_values(Path(path))
        assert at and at[: len(before)] == before and len(at) > len(before), ref
        assert_continuous(at)
        before = at
    # Its memory matches its files: a branch of the first continues the counter's file without a
    # gap (one branch: each costs minutes under emulation; the restore in place below checks
    # the third's memory the same way).
    branches = []
    for ref, path, _cp, _ms in refs[:1]:
        ctx.pool.backend.ensure_browsable(Path(path))
        at = counter_values(Path(path))
        assert at, ref
        name = "b" + ref.split("@")[1]
        b = restore.branch(ctx, ref, name)
        vals = wait_for(lambda: (v := counter_values(Path(b.volume))) and len(v) > len(at) + 20 and v,
                        timeout=120, what=f"branch {name}")  # fmt: skip
        assert vals[: len(at)] == at
        assert_continuous(vals)
        branches.append(b.name)
    # A branch's volume is an overlay on the snapshot (O(1)), its changes on the pool.
    b1 = Path(ctx.pool.path / "pods" / branches[0])
    assert f" {b1} " in Path("/proc/self/mountinfo").read_text().replace(" - overlay ", " ")
    assert (ctx.pool.path / ".layers" / branches[0] / "upper" / "counter.txt").exists()
    # A checkpoint of the branch is browsable (its upper layer at that snapshot, over its lower),
    # and the branch rolls back to it in place.
    bck = ckpt.checkpoint(ctx, branches[0], "branch state")
    with ctx.catalog.session() as s:
        brow = queries.resolve_ref(s, bck.id)
        bref, bpath = brow.ref, brow.snapshot_path
    assert "+" in bpath
    ctx.pool.backend.ensure_browsable(Path(bpath))
    bat = counter_values(Path(bpath))
    assert len(bat) > 20
    restore.restore(ctx, bref)
    vals = wait_for(lambda: (v := counter_values(b1)) and len(v) > len(bat) + 20 and v, timeout=120,
                    what="the branch rolled back")  # fmt: skip
    assert vals[: len(bat)] == bat
    assert_continuous(vals)
    for name in branches:
        remove.rm(ctx, name, force=True)
    assert not (ctx.pool.path / ".layers" / branches[0]).exists()

    # Restore in place: files and memory back to the third checkpoint; the replaced state kept.
    ref, path, _cp, _ms = refs[2]
    at = counter_values(Path(path))
    _ck, saved = restore.restore(ctx, ref)
    vals = wait_for(lambda: (v := counter_values(vol)) and len(v) > len(at) + 20 and v, timeout=120, what="restored")
    assert vals[: len(at)] == at
    assert_continuous(vals)

    # The FUSE view shows NILFS checkpoints, mounting them as it goes. Its server is started as
    # `zap mount` starts it, from here (a CLI process more is a minute of start-up in this guest).
    from zapckpt.view.mount import start_daemon, unmount

    mp = Path(tempfile.mkdtemp(prefix="zapvm-view-"))
    start_daemon(ctx, mp, allow_other=False)
    try:
        fs = mp / "pods" / "ctr" / "checkpoints" / "1" / "fs"
        assert counter_values(fs) == counter_values(Path(refs[0][1]))
    finally:
        unmount(ctx, mp)

    # Removing checkpoints hands their snapshots back to the cleaner (plain checkpoints again).
    with ctx.catalog.session() as s:
        gone = [queries.resolve_ref(s, r) for r, *_x in refs[:2]]
        remove.remove_checkpoints(ctx, s, gone)
    left = _snapshots()
    assert not {cps[0], cps[1]} & left and {cps[2], cps[3]} <= left
    remove.rm(ctx, "ctr", force=True)
