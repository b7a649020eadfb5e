#!/usr/bin/env python3
"""Catalog benchmark (issue 7, figure 7): does catalog work grow with catalog size?

  catalog_list_100k         `zap list --json` with 100,000 checkpoints in the catalog (target < 2 s);
                            baseline: the same command with 100 checkpoints.
  catalog_checkpoint_100k   `zap checkpoint` wall time of a small pod with 100,000 checkpoint rows
                            in the catalog, against the same with 100 rows (no target: start-up noise).
  catalog_checkpoint_inner_100k  the checkpoint's own time (timings_ms.total), same comparison
                            (target ratio <= 1.2: the catalog work must not grow with the catalog).

The extra rows are files-only checkpoints of a second pod, inserted directly (only the catalog
matters here); the checkpoints measured are real (CRIU, btrfs, the store). Runs alternate
between two state directories, one per catalog size.

    .venv/bin/python bench/catalog_scale.py [--runs 5] [--rows 100000]
Writes bench/results/parts/catalog.json (figures in the shape of bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import figure, write_part, zap, zap_env  # noqa: E402



def make_home(rows: int) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"zapbench-cat{rows}-"))
    zap(home, "init", "--size", "2G")
    zap(home, "run", "small", "--", "sleep", "100000")
    snap = json.loads(zap(home, "checkpoint", "small", "--json").stdout)["snapshot"]["path"]
    os.environ.update(zap_env(home))
    from catalog import Checkpoint, Pod
    from zapckpt.context import Context

    ctx = Context()
    with ctx.catalog.session() as s:
        filler = Pod(name="filler", volume="/nonexistent", mount_path="/nonexistent", command=["true"], env={},
                     cwd="/", desired_state="stopped", last_seq=rows)  # fmt: skip
        s.add(filler)
        s.flush()
        t0 = datetime.now(timezone.utc) - timedelta(days=400)
        s.add_all(
            Checkpoint(id=f"f{i:011x}", pod_id=filler.id, seq=i + 1, created_at=t0 + timedelta(minutes=i),
                       backend="btrfs", snapshot_path=snap, message=f"filler {i}")
            for i in range(rows)
        )  # fmt: skip
    ctx.close()
    return home


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "catalog.json")
    args = ap.parse_args()
    small, big = make_home(100), make_home(args.rows)
    list_small, list_big, ck_small, ck_big, ck_ms_small, ck_ms_big = [], [], [], [], [], []
    try:
        for r in range(args.runs):
            print(f"run {r + 1}/{args.runs}", file=sys.stderr)
            for home, out in ((small, list_small), (big, list_big)):
                t = time.perf_counter()
                res = zap(home, "list", "--json")
                out.append(time.perf_counter() - t)  # the command, not this script parsing its output
                n = len(json.loads(res.stdout)["checkpoints"])
                assert n >= 100
            for home, wall, inner in ((small, ck_small, ck_ms_small), (big, ck_big, ck_ms_big)):
                t = time.perf_counter()
                rec = json.loads(zap(home, "checkpoint", "small", "--json").stdout)
                wall.append(time.perf_counter() - t)
                inner.append(rec["timings_ms"]["total"])
    finally:
        for home in (small, big):
            subprocess.run([sys.executable, "-m", "zapckpt", "deinit", "--purge"], capture_output=True,
                           env=zap_env(home))  # fmt: skip
    k = f"{args.rows // 1000}k"
    figures = [
        figure(f"catalog_list_{k}", "s", list_big, list_small, "zap list --json with 100 checkpoints", 2.0,
               target_on="ours"),
        # The command as typed, for the record; the target is on the catalog work itself (below),
        # which this wall time buries under ~0.6 s of noisy interpreter start-up.
        figure(f"catalog_checkpoint_{k}", "s", ck_big, ck_small, "zap checkpoint with 100 checkpoints in the catalog"),
        figure(f"catalog_checkpoint_inner_{k}", "ms", ck_ms_big, ck_ms_small,
               "the same, 100 checkpoints (timings_ms.total: no Python start-up)", 1.2),
    ]
    write_part(args.out, figures, {"runs": args.runs, "rows": args.rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
