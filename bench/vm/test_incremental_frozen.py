"""The frozen window of an incremental dump against a full one, in the guest (its 6.1 kernel
tracks soft-dirty pages; the build machine's does not): a 256 MiB pod rewriting 2% of its pages
per second (bench/workloads/dirtier.py) on a NILFS2 pool, checkpointed by zap with pre-dump
(ZAP_PREDUMP=auto) and without (ZAP_PREDUMP=off), alternating, ROUNDS times each; once with the
workload's memory kept off transparent huge pages, once with the kernel's default for them (a
written 4 KiB page then marks its whole 2 MiB page dirty); and at 1 MiB, for the window's fixed
part.
Run:  vagrant/run-vm-tests -s bench/vm/test_incremental_frozen.py
The guest runs in software emulation: compare the two, do not quote the absolute times."""

import json
import os
import statistics
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "bench" / "workloads" / "dirtier.py"
MIB, PCT, ROUNDS = 256, 2, 3



def _measure(ctx, work: Path, thp: bool, mib: int = MIB) -> dict:
    from catalog import queries
    from zapckpt.ops import checkpoint as ckpt
    from zapckpt.ops import remove
    from zapckpt.pod import lifecycle as pods

    rows = {"full": [], "incremental": []}
    # CRIU's own figures of each dump (pages written in the frozen window, ...), as zap reads them.
    dumps = []
    real_stats = ckpt.read_dump_stats
    ckpt.read_dump_stats = lambda d: dumps.append(real_stats(d)) or dumps[-1]
    env = {"DIRTY_MIB": str(mib), "DIRTY_PCT": str(PCT), "DIRTY_THP": "1" if thp else "0"}
    try:
        pod = pods.run(ctx, "dirty", ["python3", str(work / "dirtier.py")], env, None, net="none")
        ready = Path(pod.volume) / "ready.txt"
        deadline = time.monotonic() + 600
        while not ready.exists():
            assert time.monotonic() < deadline, "the workload did not start"
            time.sleep(0.5)
        time.sleep(2)
        for _ in range(ROUNDS):
            for mode in ("full", "incremental"):
                os.environ["ZAP_PREDUMP"] = "off" if mode == "full" else "auto"
                dumps.clear()
                ck = ckpt.checkpoint(ctx, "dirty", mode)
                st = dumps[-1]
                with ctx.catalog.session() as s:
                    row = queries.resolve_ref(s, ck.id)
                    assert (row.predump_ms is not None) == (mode == "incremental")
                    rows[mode].append({"frozen_ms": row.frozen_ms, "dump_ms": row.dump_ms, "predump_ms": row.predump_ms,
                                       "total_ms": row.total_ms, "fs_snapshot_ms": row.fs_snapshot_ms,
                                       "memdump_ms": st.memdump_ms, "memwrite_ms": st.memwrite_ms,
                                       "pages_written": st.pages_written, "pages_skipped_parent": st.pages_skipped_parent,
                                       "raw_bytes": row.raw_bytes})  # fmt: skip
                    remove.remove_checkpoints(ctx, s, [row])
                time.sleep(1)
        remove.rm(ctx, "dirty", force=True)
    finally:
        os.environ.pop("ZAP_PREDUMP", None)
        ckpt.read_dump_stats = real_stats
    keys = ("frozen_ms", "dump_ms", "total_ms", "fs_snapshot_ms", "memdump_ms", "memwrite_ms", "pages_written")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in keys} for m, rs in rows.items()}
    med["incremental"]["predump_pause_ms"] = statistics.median(r["predump_ms"] for r in rows["incremental"])
    return {"mib": mib, "transparent_huge_pages": thp, "median": med,
            "frozen_ratio": med["incremental"]["frozen_ms"] / med["full"]["frozen_ms"], "runs": rows}  # fmt: skip


def test_incremental_versus_full_frozen_window():
    home = Path(tempfile.mkdtemp(prefix="zapvm-bench-"))
    os.environ["ZAP_HOME"] = str(home)
    from zapckpt.context import Context
    from zapckpt.criu import incremental
    from zapckpt.criu.runner import criu_binary
    from zapckpt.ops.deinit import deinit
    from zapckpt.system.pool import init_pool

    assert incremental.dirty_tracking(criu_binary())
    ctx = Context()
    init_pool(ctx.state, ctx.catalog, ctx.host_id, backend_name="nilfs", device="/dev/vda")
    # The workload runs from a copy outside the host's /tmp (a clone may live there).
    work = Path(f"/run/zapbench-{os.getpid()}")
    work.mkdir()
    (work / "dirtier.py").write_bytes(WORKLOAD.read_bytes())
    try:
        # Without huge pages (what databases advise), then with the kernel's default for them;
        # and the floor: the same workload at 1 MiB, whose frozen window is nearly all fixed cost
        # (CRIU's work besides the pages, the snapshot).
        cases = [_measure(ctx, work, thp=False), _measure(ctx, work, thp=True), _measure(ctx, work, thp=False, mib=1)]
    finally:
        deinit(ctx, purge=True)
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    thp_mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    out = {"mib": MIB, "dirty_pct_per_s": PCT, "rounds": ROUNDS, "kernel_thp": thp_mode, "cases": cases}
    print("\nINCREMENTAL-FROZEN " + json.dumps(out))
