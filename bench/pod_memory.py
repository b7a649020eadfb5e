#!/usr/bin/env python3
"""Host memory per idle pod (issue 23): what zap keeps running beside each pod, outside the pod's
own processes (its init and command count as the pod's). Measured as the proportional set size
(PSS, /proc/PID/smaps_rollup: shared pages split among their users) and the resident set (RSS)
of every process whose command line names the state directory and that is not in a pod's pid
namespace (the console loggers; before issue 23 also a waiting `unshare` and a Python logger per
pod), for 1 and for N pods, as MiB per pod. Target: <= 3 MiB per pod (Podman's conmon costs 1-2).

    .venv/bin/python bench/pod_memory.py [--pods 1,50]
Writes bench/results/parts/pod_memory.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import figure, state_dir, wait_for, write_part, zap  # noqa: E402


def _kib(pid: int, field: str, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def beside_pods(home: Path, pod_pidns: set[int]) -> tuple[int, int, int]:
    """(PSS KiB, RSS KiB, processes) of what runs for home's pods outside them."""
    needle = str(home).encode()
    pss = rss = n = 0
    for e in filter(str.isdigit, os.listdir("/proc")):
        pid = int(e)
        try:
            if needle not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            if os.stat(f"/proc/{pid}/ns/pid").st_ino in pod_pidns:
                continue
        except OSError:
            continue
        pss += _kib(pid, "Pss", "smaps_rollup")
        rss += _kib(pid, "VmRSS", "status")
        n += 1
    return pss, rss, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", default="1,50")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "pod_memory.json")
    args = ap.parse_args()
    figures, detail = [], {}
    for n in (int(x) for x in args.pods.split(",")):
        with state_dir("2G", prefix="zapbench-mem-") as home:
            for i in range(n):
                zap(home, "run", f"p{i}", "--net", "none", "--", "sleep", "100000")
            time.sleep(1)  # what starts a pod has exited by now; what stays, stays
            import json

            pods = json.loads(zap(home, "ps", "--json").stdout)["pods"]
            wait_for(lambda: all(p["state"] == "running" for p in pods), "the pods")
            pidns = {os.stat(f"/proc/{p['pid']}/ns/pid").st_ino for p in pods}
            samples = []
            for _ in range(5):
                samples.append(beside_pods(home, pidns))
                time.sleep(0.2)
            pss = [s[0] / 1024 / n for s in samples]
            rss = [s[1] / 1024 / n for s in samples]
            detail[n] = {"processes": samples[-1][2], "pss_mib_total": samples[-1][0] / 1024}
            figures.append(figure(f"pod_memory_{n}_pods_pss", "MiB/pod", pss, target=3.0, target_on="ours",
                                  processes=samples[-1][2]))  # fmt: skip
            figures.append(figure(f"pod_memory_{n}_pods_rss", "MiB/pod", rss, target=3.0, target_on="ours"))
            for i in range(n):
                zap(home, "stop", f"p{i}", "-t", "1")
    write_part(args.out, figures, {"pods": args.pods}, detail=detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
