#!/usr/bin/env python3
"""Figure 1: how long a checkpoint keeps the pod frozen, against raw CRIU.

For pods holding 16 MiB, 256 MiB and 1 GiB of resident data (tests/workloads/memhog.py), runs
alternate, pair by pair:
  ours      `zap checkpoint` (the CLI as typed): CRIU's frozen_time for the dump whose post-dump
            hook takes the btrfs snapshot, and the command's wall time;
  baseline  `criu dump --leave-running` of the same process into tmpfs (the same flags zap uses,
            no hook): its frozen_time and wall time.
Figures: frozen_<size> (target <= 1.10x at 256 MiB and 1 GiB), checkpoint_wall_<size> (the whole
command, Python start-up included) and checkpoint_inner_<size> (timings_ms.total: the same work
without the interpreter start-up), with CRIU's memdump/memwrite times kept for the profile.

    .venv/bin/python bench/frozen.py [--runs 5] [--sizes 16,256,1024] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, figure, raw_dump, size_name, start_memhog, state_dir, write_part, zap  # noqa: E402

RAW = Path("/dev/shm/zapbench-raw-dump")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="16,256,1024")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "frozen.json")
    args = ap.parse_args()
    figures, curves = [], []
    with state_dir("16G") as home:
        for mib in (int(x) for x in args.sizes.split(",")):
            sz, name = size_name(mib), f"hog{mib}"
            pid = start_memhog(home, name, mib)
            ours = {"frozen": [], "wall": [], "inner": [], "fs": []}
            raw = {"frozen": [], "wall": [], "memdump": [], "memwrite": []}
            for r in range(args.runs):
                print(f"frozen {sz}: run {r + 1}/{args.runs}", file=sys.stderr, flush=True)
                for side in (("raw", "ours") if r % 2 == 0 else ("ours", "raw")):
                    if side == "raw":
                        d = raw_dump(pid, RAW)
                        raw["frozen"].append(d["frozen_ms"])
                        raw["wall"].append(d["wall_s"])
                        raw["memdump"].append(d["memdump_ms"])
                        raw["memwrite"].append(d["memwrite_ms"])
                        shutil.rmtree(RAW, ignore_errors=True)
                    else:
                        t = time.perf_counter()
                        rec = json.loads(zap(home, "checkpoint", name, "--json", "-m", "bench").stdout)
                        ours["wall"].append(time.perf_counter() - t)
                        ours["frozen"].append(rec["timings_ms"]["frozen"])
                        ours["inner"].append(rec["timings_ms"]["total"] / 1000)
                        ours["fs"].append(rec["timings_ms"]["fs_snapshot"])
            raw_name = "criu dump --leave-running into tmpfs, same process"
            figures += [
                figure(f"frozen_{sz}", "ms", ours["frozen"], raw["frozen"], f"{raw_name} (frozen_time)",
                       target=1.10 if mib >= 256 else None,
                       profile={"ours_fs_snapshot_ms": ours["fs"], "raw_memdump_ms": raw["memdump"],
                                "raw_memwrite_ms": raw["memwrite"]}),
                figure(f"checkpoint_wall_{sz}", "s", ours["wall"], raw["wall"], f"{raw_name} (wall time)"),
                figure(f"checkpoint_inner_{sz}", "s", ours["inner"], raw["wall"], f"{raw_name} (wall time)"),
            ]  # fmt: skip
            curves.append({"mib": mib, "ours_frozen_ms": ours["frozen"], "raw_frozen_ms": raw["frozen"],
                           "ours_wall_s": ours["wall"], "raw_wall_s": raw["wall"]})  # fmt: skip
            zap(home, "rm", "--force", name)
    write_part(args.out, figures, vars(args) | {"out": str(args.out)}, curves={"frozen": curves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
