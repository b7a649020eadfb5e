#!/usr/bin/env python3
"""Checkpoint and restore times of a small and a 256 MiB pod, with raw `criu dump` of the same
process into tmpfs measured in the same run, alternating ours and the baseline.

    .venv/bin/python bench/checkpoint_restore.py [--runs 5] [--sizes 0,256]

Uses its own temporary state directory and removes it at the end. Prints a Markdown table and
writes bench/results/checkpoint_restore.json. Python start-up of the CLI is excluded (the
operations are called in-process); `zap` adds ~0.6 s of interpreter and import time per command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MEMHOG = ROOT / "tests" / "workloads" / "memhog.py"


def med(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def raw_dump(pid: int, out: Path) -> tuple[float, float | None]:
    from zapckpt import criu
    from zapckpt.criu_images import read_dump_stats

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run(["nsenter", "-t", str(pid), "-m", "--", criu.criu_binary(), "dump", "-t", str(pid), "-D", str(out),
                    "-o", "dump.log", "--leave-running", "--file-locks"], check=True, capture_output=True)  # fmt: skip
    wall = (time.perf_counter() - t0) * 1000
    frozen = read_dump_stats(out).frozen_ms
    shutil.rmtree(out, ignore_errors=True)
    return wall, frozen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="0,256")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="zapbench-"))
    os.environ["ZAP_HOME"] = str(home)
    from zapckpt import checkpoint, pods, restore
    from zapckpt.context import Context
    from zapckpt.pool import init_pool
    from zapckpt.teardown import deinit

    ctx = Context()
    init_pool(ctx.state, ctx.catalog, size="8G")
    results = []
    try:
        for mib in [int(x) for x in args.sizes.split(",")]:
            name = f"hog{mib}"
            pods.run(ctx, name, ["python3", str(MEMHOG)], {"MEMHOG_MIB": str(mib)}, None)
            log = ctx.pool.volume_of(name) / ".zap" / "console.log"
            deadline = time.time() + 120
            while "holding" not in (log.read_text() if log.exists() else ""):
                if time.time() > deadline:
                    raise SystemExit(f"{name} did not start")
                time.sleep(0.1)
            ours = {"frozen_ms": [], "checkpoint_ms": [], "restore_ms": [], "raw_bytes": [], "stored_bytes": []}
            raw = {"frozen_ms": [], "dump_ms": []}
            for _ in range(args.runs):
                with ctx.catalog.session() as s:
                    pid = pods.queries.get_pod(s, name).init_pid
                w, f = raw_dump(pid, ctx.state.staging / "rawbench")
                raw["dump_ms"].append(w)
                raw["frozen_ms"].append(f)
                t0 = time.perf_counter()
                ck = checkpoint.checkpoint(ctx, name, "bench")
                ours["checkpoint_ms"].append((time.perf_counter() - t0) * 1000)
                ours["frozen_ms"].append(ck.frozen_ms)
                ours["raw_bytes"].append(ck.raw_bytes)
                ours["stored_bytes"].append(ck.stored_bytes)
                t0 = time.perf_counter()
                restore.restore(ctx, f"{name}@{ck.seq}")
                ours["restore_ms"].append((time.perf_counter() - t0) * 1000)
            row = {"pod_mib": mib, "ours": {k: med(v) for k, v in ours.items()},
                   "raw_criu": {k: med(v) for k, v in raw.items()}}  # fmt: skip
            row["frozen_ratio_median"] = row["ours"]["frozen_ms"]["median"] / row["raw_criu"]["frozen_ms"]["median"]
            results.append(row)
            pods.remove(ctx, name, force=True)
    finally:
        deinit(ctx, purge=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_restore.json").write_text(json.dumps(results, indent=2))
    print("| pod | frozen ms (ours) | frozen ms (raw criu dump) | ratio | zap checkpoint ms | raw criu dump ms | restore ms | images raw -> stored MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        o, b = r["ours"], r["raw_criu"]
        print(f"| +{r['pod_mib']} MiB | {o['frozen_ms']['median']:.1f} ({o['frozen_ms']['min']:.1f}-{o['frozen_ms']['max']:.1f}) "
              f"| {b['frozen_ms']['median']:.1f} | {r['frozen_ratio_median']:.2f} | {o['checkpoint_ms']['median']:.0f} "
              f"| {b['dump_ms']['median']:.0f} | {o['restore_ms']['median']:.0f} "
              f"| {o['raw_bytes']['median'] / 2**20:.1f} -> {o['stored_bytes']['median'] / 2**20:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
