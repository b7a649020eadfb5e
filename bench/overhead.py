#!/usr/bin/env python3
"""Figure 8: what checkpointing costs a running workload.

A pod runs bench/workloads/cpumem.py (hashes and dirties random pages of a 64 MiB working set,
reporting its step count). Windows of the same length alternate: one with no checkpoint (the
baseline), one with a checkpoint every N seconds (10, 2 and 1). The checkpoints are taken by this
one long-running process, in-process (as a scheduler would take them: Python start-up is not
counted; through the CLI each one costs ~0.6 s more CPU). The figure is the workload's throughput
(steps/s) in each window; 1 - ratio is the loss. No target is set by the issue; DejaView's goal
is no noticeable slowdown.

    .venv/bin/python bench/overhead.py [--runs 5] [--intervals 10,2,1] [--window 20]

Each figure also carries pair_ratio_median: the median over runs of ours/baseline within each
adjacent pair of windows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, figure, pod_info, pod_program, state_dir, wait_for, write_part, zap, zap_env  # noqa: E402

sys.path.insert(0, str(ROOT))
WORKLOAD = ROOT / "bench" / "workloads" / "cpumem.py"


def progress(volume: Path) -> tuple[float, int]:
    t, n = (volume / "progress").read_text().split()
    return float(t), int(n)


def window(volume: Path, seconds: float, every: float | None, take) -> tuple[float, int]:
    """The workload's steps/s over `seconds`, taking a checkpoint every `every` seconds (first
    one at every/2, so a window of k*every holds k checkpoints); returns (rate, checkpoints)."""
    t0, n0 = progress(volume)
    start = time.monotonic()
    taken = 0
    if every:
        next_at = start + every / 2
        while True:
            now = time.monotonic()
            if next_at >= start + seconds:
                break
            if now < next_at:
                time.sleep(next_at - now)
            take()
            taken += 1
            next_at += every
    left = start + seconds - time.monotonic()
    if left > 0:
        time.sleep(left)
    time.sleep(0.25)  # the workload reports every 0.2 s
    t1, n1 = progress(volume)
    return (n1 - n0) / (t1 - t0), taken


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--intervals", default="10,2,1")
    ap.add_argument("--window", type=float, default=20, help="seconds per window (at least 2 intervals)")
    ap.add_argument("--work-mib", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "overhead.json")
    args = ap.parse_args()
    figures, curve = [], []
    with state_dir("8G") as home:
        zap(home, "run", "work", "--env", f"WORK_MIB={args.work_mib}", "--", "python3", str(pod_program(WORKLOAD)))
        volume = Path(pod_info(home, "work")["volume"])
        wait_for(lambda: (volume / "progress").exists() and progress(volume)[1] > 0, what="the workload to start")
        time.sleep(2)
        os.environ.update(zap_env(home))
        from zapckpt.ops import checkpoint
        from zapckpt.context import Context

        ctx = Context()
        try:
            take = lambda: checkpoint.checkpoint(ctx, "work", "overhead", kind="auto")  # noqa: E731
            for every in (float(x) for x in args.intervals.split(",")):
                seconds = max(args.window, 2 * every)
                ours, base, counts = [], [], []
                for r in range(args.runs):
                    print(f"overhead every {every:g}s: run {r + 1}/{args.runs}", file=sys.stderr, flush=True)
                    for side in (("base", "ours") if r % 2 == 0 else ("ours", "base")):
                        rate, n = window(volume, seconds, every if side == "ours" else None, take)
                        (ours if side == "ours" else base).append(rate)
                        if side == "ours":
                            counts.append(n)
                name = f"overhead_{every:g}s"
                # Pair by pair as well: the workload's rate drifts (~±8% between windows), and a
                # ratio within each adjacent pair of windows is less exposed to that drift.
                pair_ratio = statistics.median(o / b for o, b in zip(ours, base))
                figures.append(figure(name, "steps/s", ours, base, "the same workload, no checkpoints (alternating windows)",
                                      better="higher", checkpoints_per_window=counts, window_s=seconds,
                                      pair_ratio_median=pair_ratio))  # fmt: skip
                curve.append({"every_s": every, "ours": ours, "base": base})
        finally:
            ctx.close()
    for f in figures:
        f["loss_median"] = 1 - f["ratio_median"]
    write_part(args.out, figures, vars(args) | {"out": str(args.out)}, curves={"overhead": curve})
    return 0


if __name__ == "__main__":
    sys.exit(main())
