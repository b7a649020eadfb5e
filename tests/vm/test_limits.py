"""Resource limits on cgroup v2, inside the guest (vagrant/guest-run.sh mounts the unified
hierarchy at /sys/fs/cgroup, where its 6.1 kernel has the memory and cpu controllers; this
host's are on v1, tested by tests/test_pods_cli.py). In-process, as the other guest tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import wait_for  # noqa: E402

pytestmark = pytest.mark.system

CGROUP = Path("/sys/fs/cgroup")
BUSY = "import time\nwhile True: pass"


def _group(pid: int) -> Path:
    (line,) = [ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ln.startswith("0::")]
    return CGROUP / line[3:].lstrip("/")


def _child(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def test_limits_on_cgroup_v2_through_start_restore_branch_and_update(ctx):
    from zapckpt.ops import checkpoint as ckpt
    from zapckpt.ops import remove, restore, update
    from zapckpt.pod import lifecycle as pods
    from zapckpt.system import cgroups

    assert (CGROUP / "cgroup.controllers").exists(), "the guest should mount cgroup v2 at /sys/fs/cgroup"
    pod = pods.run(ctx, "lim", ["python3", "-c", BUSY], {}, None, net="none", limits=cgroups.Limits(48 << 20, 0.5))
    group = _group(pod.init_pid)
    assert group.parent == CGROUP / "zapckpt" and _group(_child(pod.init_pid)) == group
    assert (group / "memory.max").read_text().strip() == str(48 << 20)
    assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    assert {"memory", "cpu"} <= set((CGROUP / "zapckpt" / "cgroup.subtree_control").read_text().split())
    stat = lambda: dict(ln.split() for ln in (group / "cpu.stat").read_text().splitlines())  # noqa: E731
    wait_for(lambda: int(stat()["nr_throttled"]) > 0, timeout=60, what="throttling at half a CPU")

    ckpt.checkpoint(ctx, "lim")
    restore.restore(ctx, "lim@1")
    with ctx.catalog.session() as s:
        from catalog import queries

        init = queries.get_pod(s, "lim").init_pid
    assert _group(init) == group and _group(_child(init)) == group  # CRIU forked them inside
    branch = restore.branch(ctx, "lim@1", "limb")
    bgroup = _group(branch.init_pid)
    assert bgroup != group and (bgroup / "memory.max").read_text().strip() == str(48 << 20)

    # update: a pod without limits is moved into groups of its own, at once
    other = pods.run(ctx, "up", ["python3", "-c", BUSY], {}, None, net="none")
    before = _group(other.init_pid)
    update.update(ctx, "up", 64 << 20, 0.25, None)
    after = _group(other.init_pid)
    assert after != before and _group(_child(other.init_pid)) == after
    assert (after / "cpu.max").read_text().split() == ["25000", "100000"]

    for name in ("limb", "lim", "up"):
        remove.rm(ctx, name, force=True)
    assert not any(g.exists() for g in (group, bgroup, after))
