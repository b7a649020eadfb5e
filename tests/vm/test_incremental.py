"""Incremental dumps, inside the guest (its Debian 6.1 kernel tracks soft-dirty pages; this host's
does not): every checkpoint pre-dumps the pod's memory while it runs and the frozen window dumps
only the pages written since. A pod whose memory content is a function of its step count
(tests/workloads/pagewriter.py) is checkpointed 10 times while it writes pages, 8 of the
checkpoints are removed, and every remaining one is branched and restored in place: its files
continue exactly, and its memory, checked page by page against a replay of its steps, is the
memory of the dump (a page taken from the pre-dump where the dump should have written it would
show)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import WORKLOADS, assert_continuous, counter_values, wait_for  # noqa: E402

pytestmark = pytest.mark.system

MIB = 4


def _verified(volume: Path) -> list[str]:
    """The workload's memory checks, complete lines only."""
    try:
        text = (volume / "verified.txt").read_text()
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].splitlines()


def _carries_on(volume: Path, at: list[int], what: str) -> None:
    """The counter goes on from exactly `at`, and a full check of memory after it passes."""
    vals = wait_for(lambda: (v := counter_values(volume)) and len(v) > len(at) + 60 and v, timeout=180, what=what)
    assert vals[: len(at)] == at, what
    assert_continuous(vals)
    checks = wait_for(lambda: [ln for ln in _verified(volume) if int(ln.split()[0]) > len(at)], timeout=180,
                      what=f"a memory check of {what}")  # fmt: skip
    bad = [ln for ln in _verified(volume) if "BAD" in ln]
    assert not bad and checks[0].endswith(" ok"), (what, bad or checks)


def test_incremental_checkpoints_stay_whole_through_removal_restore_and_branch(ctx):
    from catalog import queries
    from zapckpt.criu import incremental
    from zapckpt.criu.runner import criu_binary
    from zapckpt.ops import checkpoint as ckpt
    from zapckpt.ops import remove, restore
    from zapckpt.pod import lifecycle as pods

    assert incremental.dirty_tracking(criu_binary()), "the guest's kernel should track soft-dirty pages"
    env = {"PAGEWRITER_MIB": str(MIB), "PAGEWRITER_VERIFY": "50"}
    # No network: what is tested is memory (and a pod network costs seconds per branch here).
    pod = pods.run(ctx, "pw", ["python3", str(WORKLOADS / "pagewriter.py")], env, None, net="none")
    vol = Path(pod.volume)
    wait_for(lambda: _verified(vol), timeout=180, what="the workload's first memory check")

    t0 = time.monotonic()
    lap = lambda what: print(f"[{time.monotonic() - t0:6.1f}s] {what}", file=sys.stderr)  # noqa: E731
    lap("started")
    refs = []
    for i in range(10):
        time.sleep(random.uniform(0.05, 0.4))
        ck = ckpt.checkpoint(ctx, "pw", f"c{i}")
        assert not ck.warnings, ck.warnings  # no fall-back to a full dump
        with ctx.catalog.session() as s:
            row = queries.resolve_ref(s, ck.id)
            assert row.predump_ms is not None, "not an incremental dump"
            # The stored set is whole: all of the workload's memory, not only the dirty pages.
            assert row.raw_bytes > MIB << 20
            refs.append((row.ref, row.snapshot_path))

    lap("10 checkpoints")
    # Most of them go, the first's neighbours and all; each one left still restores and branches.
    gone = [refs[i] for i in range(1, 9)]
    kept = [refs[i] for i in (0, 9)]
    with ctx.catalog.session() as s:
        remove.remove_checkpoints(ctx, s, [queries.resolve_ref(s, r) for r, _p in gone])

    at = {}
    for ref, path in kept:
        ctx.pool.backend.ensure_browsable(Path(path))
        at[ref] = counter_values(Path(path))
        assert at[ref], ref
    branches = {ref: restore.branch(ctx, ref, "b" + ref.split("@")[1]) for ref, _p in kept}
    lap("2 branches")
    for ref, b in branches.items():
        _carries_on(Path(b.volume), at[ref], f"branch {b.name} of {ref}")
    lap("2 branches checked")
    for b in branches.values():
        remove.rm(ctx, b.name, force=True)
    lap("2 branches removed")

    for ref, _p in kept:
        restore.restore(ctx, ref)
        _carries_on(vol, at[ref], f"pw restored to {ref}")
        lap(f"restored {ref}")
    remove.rm(ctx, "pw", force=True)
