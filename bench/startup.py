#!/usr/bin/env python3
"""Start-up benchmark (issues 13 and 23): how long the commands people type most, or run in loops
and from tab-completion, take from exec to exit, against a bare interpreter in the same run.

  startup_help      `zap --help`          (target < 0.1 s)
  startup_version   `zap --version`       (target < 0.1 s)
  startup_ps        `zap ps` with a running pod holding 10 checkpoints (target < 0.25 s)
  startup_list      `zap list` of the same (target < 0.25 s)
  startup_logs, startup_log, startup_tag, startup_show: `zap logs`, `log`, `tag` + `untag`
                    (a write), `show` of the same pod (target: as `ps`, < 0.25 s)
  checkpoint_wall_vs_total  a small pod's `zap checkpoint`: the command's wall time against the
                    total it reports itself (target <= 1.5x, on an idle machine)
  baseline          `python3 -c pass` with the interpreter zap runs on (the venv's), each run
                    interleaved with ours: what any Python command costs here

zap runs as a user runs it: .venv/libexec/zap, the C client /usr/local/bin/zap links to (falls
back to python -m zapckpt),
through the zap server it starts (warmed up before the runs; `--no-server` measures without).

    .venv/bin/python bench/startup.py [--runs 30]
Writes bench/results/parts/startup.json (figures in the shape of bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import figure, state_dir, write_part, zap, zap_env  # noqa: E402

SCRIPT = ROOT / ".venv" / "libexec" / "zap"  # what make install links /usr/local/bin/zap to
ZAP_CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "zapckpt"]
# The interpreter zap's own script runs on (the venv's), not whatever `python3` is first on the
# PATH: that may be a wrapper (a pyenv shim alone takes ~0.1 s here).
PYTHON = sys.executable

COMMANDS = {
    "help": (["--help"], 0.1),
    "version": (["--version"], 0.1),
    "ps": (["ps"], 0.25),
    "list": (["list"], 0.25),
    "logs": (["logs", "idle"], 0.25),
    "log": (["log", "idle"], 0.25),
    "show": (["show", "idle"], 0.25),
    "tag": (["tag", "idle@1", "bench"], 0.25),  # each run untags it again, untimed
}


def timed(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-server", action="store_true", help="every command in its own process (ZAP_SERVER=0)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "startup.json")
    args = ap.parse_args()
    ours: dict[str, list[float]] = {k: [] for k in COMMANDS}
    base: list[float] = []
    with state_dir("1G", prefix="zapbench-startup-") as home:
        zap(home, "run", "idle", "--", "sleep", "100000")
        for i in range(10):
            zap(home, "checkpoint", "idle", "-m", f"c{i}")
        env = zap_env(home)
        if args.no_server:
            env["ZAP_SERVER"] = "0"
        untag = ZAP_CMD + ["untag", "idle@1", "bench"]
        for k, (argv, _t) in COMMANDS.items():  # warm the page cache, .pyc files and the server first
            timed(ZAP_CMD + argv, env)
            if k == "tag":
                timed(untag, env)
        time.sleep(1)
        walls, totals = [], []
        for r in range(args.runs):
            base.append(timed([PYTHON, "-c", "pass"], env))
            for k, (argv, _t) in COMMANDS.items():
                ours[k].append(timed(ZAP_CMD + argv, env))
                if k == "tag":
                    timed(untag, env)
            if r < 10:  # the checkpoint: wall time against the total it reports
                t = time.perf_counter()
                out = subprocess.run(ZAP_CMD + ["checkpoint", "idle", "--json"], env=env, capture_output=True,
                                     text=True, check=True).stdout  # fmt: skip
                walls.append(time.perf_counter() - t)
                totals.append(json.loads(out)["timings_ms"]["total"] / 1000)
        zap(home, "stop", "idle", "-t", "1")
    figures = [
        figure(f"startup_{k}", "s", ours[k], base, "python3 -c pass", target, target_on="ours")
        for k, (_argv, target) in COMMANDS.items()
    ]
    figures.append(figure("checkpoint_wall_vs_total", "s", walls, totals, "its reported total", 1.5))
    for f in figures:
        print(f"{f['name']}: median {f['ours']['median'] * 1000:.0f} ms, python3 -c pass "
              f"{f['baseline']['median'] * 1000:.0f} ms, ratio {f['ratio_median']:.1f}", file=sys.stderr)  # fmt: skip
    write_part(args.out, figures, {"runs": args.runs, "zap": " ".join(ZAP_CMD), "server": not args.no_server,
                                   "pid": os.getpid()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
