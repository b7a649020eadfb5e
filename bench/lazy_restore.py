#!/usr/bin/env python3
"""Lazy restore and branch (issue 25): does their time stay flat as a pod's memory grows?

lazy_restore_<size>       `zap restore POD@1` of a stopped pod holding <size> of memory (the CLI
                          as typed, until it reports: the processes run, their pages still come
                          in), against raw `criu restore -d` of the same image set, uncompressed
                          in tmpfs, eager, run the way zap runs it.
lazy_restore_<big>_vs_<small>   the same restore of the big pod over the small one. Target <= 1.5.
lazy_all_pages_<size>     until every page is in (`zap ps` no longer says restoring).
lazy_branch_<size>, lazy_branch_<big>_vs_<small>   `zap branch POD@1 NEW` until it reports.
lazy_restore_running_<size>, ..._vs_...   the restore of a RUNNING pod: it first dumps the state it
                          replaces (CRIU's own dump of <size>, whose store is put off until the
                          restored pod runs): the floor here is that dump, not the restore.
redis_first_answer_<size>, ..._vs_...   from `zap restore` of a stopped Redis holding <size> of
                          data (DEBUG POPULATE) to its first answer (GET) on its address. Target
                          big/small <= 2.

    .venv/bin/python bench/lazy_restore.py [--runs 5] [--sizes 64,1024]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ZAP, figure, pod_info, raw_dump, size_name, start_memhog, state_dir, wait_for, write_part, zap, zap_env  # noqa: E402
from restore_branch import RAW, raw_restore  # noqa: E402

sys.path.insert(0, str(ROOT))


def timed(home: Path, *args: str) -> float:
    t = time.perf_counter()
    zap(home, *args)
    return time.perf_counter() - t


def settled(home: Path, name: str) -> float:
    """Seconds until the pod is no longer restoring (every page in)."""
    t = time.perf_counter()
    wait_for(lambda: pod_info(home, name)["state"] != "restoring", what=f"{name}'s pages", timeout=300)
    return time.perf_counter() - t


def bench_memhog(home: Path, runs: int, mib: int) -> dict[str, list[float]]:
    name = f"m{mib}"
    pid = start_memhog(home, name, mib)
    ref = json.loads(zap(home, "checkpoint", name, "--json").stdout)["ref"]
    raw_dump(pid, RAW)
    info = pod_info(home, name)
    out: dict[str, list[float]] = {k: [] for k in ("restore", "all_pages", "raw", "branch", "running")}
    for r in range(runs):
        print(f"lazy {mib} MiB: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        for side in (("raw", "ours") if r % 2 == 0 else ("ours", "raw")):
            if pod_info(home, name)["state"] in ("running", "restoring"):
                zap(home, "stop", name, "-t", "2")
            if side == "raw":
                out["raw"].append(raw_restore(RAW, Path(info["volume"]), Path(info["path"]), home / "raw.log"))
            else:
                t0 = time.perf_counter()
                zap(home, "restore", ref)
                out["restore"].append(time.perf_counter() - t0)
                out["all_pages"].append(out["restore"][-1] + settled(home, name))
        # a running pod: its state is dumped first
        zap(home, "restore", ref)
        settled(home, name)
        out["running"].append(timed(home, "restore", ref))
        settled(home, name)
        out["branch"].append(timed(home, "branch", ref, f"{name}-b"))
        settled(home, f"{name}-b")
        zap(home, "rm", "--force", f"{name}-b")
    zap(home, "rm", "--force", name)
    subprocess.run(["rm", "-rf", str(RAW)], check=True)
    return out


REDIS = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--enable-debug-command", "yes"]  # fmt: skip


def _ask(addr: str, cmd: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection((addr, 6379), timeout=timeout) as c:
        c.sendall(cmd)
        return c.recv(65536)


def first_answer(home: Path, ref: str, addr: str) -> float:
    """From the start of `zap restore` to Redis's first answer (GET) on its address."""
    t0 = time.perf_counter()
    p = subprocess.Popen([*ZAP, "restore", ref], env=zap_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        try:
            if _ask(addr, b"GET key:1\r\n", timeout=2).startswith(b"$"):
                break
        except OSError:
            time.sleep(0.002)
    took = time.perf_counter() - t0
    if p.wait(120):
        raise RuntimeError(f"zap restore failed: {p.stderr.read().decode()}")
    return took


def bench_redis(home: Path, runs: int, mib: int) -> list[float]:
    name = f"rd{mib}"
    zap(home, "run", name, "--", *REDIS)
    addr = pod_info(home, name)["address"]
    wait_for(lambda: _try(addr, b"PING\r\n") == b"+PONG\r\n", what="redis")
    _ask(addr, f"DEBUG POPULATE {mib * 256} key 4096\r\n".encode(), timeout=300)
    ref = json.loads(zap(home, "checkpoint", name, "--json").stdout)["ref"]
    times = []
    for r in range(runs):
        print(f"redis {mib} MiB: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        zap(home, "stop", name, "-t", "2")
        times.append(first_answer(home, ref, addr))
        settled(home, name)
        got = _ask(addr, b"DBSIZE\r\n")
        if got != b":%d\r\n" % (mib * 256):
            raise RuntimeError(f"redis came back with {got!r} keys")
    zap(home, "rm", "--force", name)
    return times


def _try(addr: str, cmd: bytes) -> bytes:
    try:
        return _ask(addr, cmd)
    except OSError:
        return b""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "lazy_restore.json")
    args = ap.parse_args()
    small, big = (int(x) for x in args.sizes.split(","))
    figures = []
    res, redis = {}, {}
    with state_dir(f"{max(8, 4 * big // 1024 + 4)}G") as home:
        for mib in (small, big):
            res[mib] = bench_memhog(home, args.runs, mib)
            redis[mib] = bench_redis(home, args.runs, mib)
    base = "criu restore -d of an uncompressed image set in tmpfs (eager), same process"
    for mib in (small, big):
        s, r = size_name(mib), res[mib]
        figures += [figure(f"lazy_restore_{s}", "s", r["restore"], r["raw"], base),
                    figure(f"lazy_all_pages_{s}", "s", r["all_pages"], r["raw"], base),
                    figure(f"lazy_branch_{s}", "s", r["branch"], r["raw"], base),
                    figure(f"lazy_restore_running_{s}", "s", r["running"], r["raw"], base),
                    figure(f"redis_first_answer_{s}", "s", redis[mib])]  # fmt: skip
    sb, ss = size_name(big), size_name(small)
    for what, key, target in (("restore", "restore", 1.5), ("branch", "branch", 1.5), ("restore_running", "running", None)):
        figures.append(figure(f"lazy_{what}_{sb}_vs_{ss}", "s", res[big][key], res[small][key],
                              f"the same for the {ss} pod", target=target))  # fmt: skip
    figures.append(figure(f"redis_first_answer_{sb}_vs_{ss}", "s", redis[big], redis[small],
                          f"the same for a Redis holding {ss}", target=2.0))  # fmt: skip
    write_part(args.out, figures, vars(args) | {"out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
