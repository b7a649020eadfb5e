#!/usr/bin/env python3
"""Figures 3 and 4: restore and branch, against raw CRIU (and `cp -a`), alternating pair by pair.

restore_256m   `zap restore POD@N` of a stopped pod holding 256 MiB (the CLI as typed, until it
               reports: a writable snapshot as the volume, CRIU's lazy restore, its memory coming
               after from zap's page server), against raw `criu restore -d` of an uncompressed
               image set of the same process already in tmpfs, run the way zap runs it (a private
               mount namespace where the volume is bound at the pod's path). Target <= 1.0x.
restore_256m_inner  the same restore called in-process (no Python start-up).
branch_<size>  `zap branch POD@1 NEW` until the branch runs, for volumes of 100 MiB and 4 GiB of
               files, against `cp -a` of the volume + the same raw restore into the copy.
branch_<big>_vs_<small>  branch time of the big volume over the small one: O(1) means <= 1.2.

    .venv/bin/python bench/restore_branch.py [--runs 5] [--restore-mib 256] [--volumes 100,4096]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fill_volume, figure, pod_info, raw_dump, size_name, start_memhog, state_dir, write_part, zap, zap_env  # noqa: E402

sys.path.insert(0, str(ROOT))
RAW = Path("/dev/shm/zapbench-raw-restore")


def raw_restore(images: Path, volume: Path, mount_path: Path, log: Path) -> float:
    """criu restore -d of an image set in tmpfs; the restored tree is killed after timing."""
    from zapckpt.criu import runner as criu
    from zapckpt.pod.mounts import pod_root, restore_argv
    from zapckpt.system import procinfo

    pidfile = images.with_name(images.name + ".pid")
    pidfile.unlink(missing_ok=True)
    t = time.perf_counter()
    # as zap mounts a pod: the volume at its path, on a tmpfs over the state directory, in the
    # copy of the tree the pod's processes have as their root (pod/mounts.py)
    mounts = {"volume": str(volume), "mount_path": str(mount_path), "system": False, "volumes": [],
              "state_root": str(mount_path.parent.parent), "private_tmp": True}  # fmt: skip
    pid = criu.restore(images, pidfile, restore_argv(mounts), os.path.join(pod_root(str(mount_path)), "proc"), None, log)
    took = time.perf_counter() - t
    pidfile.unlink()
    procinfo.kill_pod_tree(pid)
    return took


def in_process_restore(home: Path, ref: str) -> float:
    os.environ.update(zap_env(home))
    from zapckpt.ops import restore
    from zapckpt.context import Context

    ctx = Context()
    try:
        t = time.perf_counter()
        restore.restore(ctx, ref)
        return time.perf_counter() - t
    finally:
        ctx.close()


def bench_restore(home: Path, runs: int, mib: int) -> list[dict]:
    name = f"r{mib}"
    pid = start_memhog(home, name, mib)
    ref = json.loads(zap(home, "checkpoint", name, "--json").stdout)["ref"]
    raw_dump(pid, RAW)  # the baseline's image set, uncompressed, in tmpfs
    info = pod_info(home, name)
    volume, mount_path = Path(info["volume"]), Path(info["path"])
    ours, inner, raw = [], [], []
    for r in range(runs):
        print(f"restore {mib} MiB: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        for side in (("raw", "ours", "inner") if r % 2 == 0 else ("inner", "ours", "raw")):
            if pod_info(home, name)["state"] in ("running", "restoring"):
                zap(home, "stop", name, "-t", "2")
            if side == "raw":
                raw.append(raw_restore(RAW, volume, mount_path, home / "raw-restore.log"))
            elif side == "ours":
                t = time.perf_counter()
                zap(home, "restore", ref)
                ours.append(time.perf_counter() - t)
            else:
                inner.append(in_process_restore(home, ref))
    shutil.rmtree(RAW, ignore_errors=True)
    zap(home, "rm", "--force", name)
    base = "criu restore -d of an uncompressed image set in tmpfs, same process"
    sz = size_name(mib)
    return [figure(f"restore_{sz}", "s", ours, raw, base, target=1.0),
            figure(f"restore_{sz}_inner", "s", inner, raw, base)]  # fmt: skip


def bench_branch(home: Path, runs: int, volumes: list[int]) -> tuple[list[dict], dict]:
    times: dict[int, list[float]] = {}
    bases: dict[int, list[float]] = {}
    figures = []
    for mib in volumes:
        name = f"b{mib}"
        pid = start_memhog(home, name, 16)
        info = pod_info(home, name)
        volume, mount_path = Path(info["volume"]), Path(info["path"])
        fill_volume(volume / "data", mib)
        ref = json.loads(zap(home, "checkpoint", name, "--json").stdout)["ref"]
        raw_dump(pid, RAW)
        copy = home / "pool" / "cp-a-copy"
        ours, base = [], []
        for r in range(runs):
            print(f"branch {size_name(mib)}: run {r + 1}/{runs}", file=sys.stderr, flush=True)
            for side in (("raw", "ours") if r % 2 == 0 else ("ours", "raw")):
                if side == "ours":
                    t = time.perf_counter()
                    zap(home, "branch", ref, f"{name}-br")
                    ours.append(time.perf_counter() - t)
                    zap(home, "rm", "--force", f"{name}-br")
                    subprocess.run(["sync"], check=True)  # untimed: the next run starts from a quiet disk
                else:
                    subprocess.run(["sync"], check=True)
                    t = time.perf_counter()
                    subprocess.run(["cp", "-a", "--reflink=never", str(volume), str(copy)], check=True)
                    took = time.perf_counter() - t
                    base.append(took + raw_restore(RAW, copy, mount_path, home / "raw-restore.log"))
                    shutil.rmtree(copy)
                    subprocess.run(["sync"], check=True)  # untimed: the copy's write-back must not land on ours
        times[mib], bases[mib] = ours, base
        figures.append(figure(f"branch_{size_name(mib)}", "s", ours, base,
                              "cp -a --reflink=never of the volume + criu restore -d from tmpfs into the copy"))  # fmt: skip
        zap(home, "rm", "--force", name)
        shutil.rmtree(RAW, ignore_errors=True)
    lo, hi = min(volumes), max(volumes)
    figures.append(figure(f"branch_{size_name(hi)}_vs_{size_name(lo)}", "s", times[hi], times[lo],
                          f"zap branch of the {size_name(lo)} volume", target=1.2))  # fmt: skip
    return figures, {"branch": [{"mib": m, "ours_s": t, "base_s": bases[m]} for m, t in times.items()]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--restore-mib", type=int, default=256)
    ap.add_argument("--volumes", default="100,4096")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "restore_branch.json")
    args = ap.parse_args()
    volumes = [int(x) for x in args.volumes.split(",")]
    with state_dir(f"{max(12, 3 * max(volumes) // 1024 + 4)}G") as home:
        figures = bench_restore(home, args.runs, args.restore_mib)
        more, curves = bench_branch(home, args.runs, volumes)
    write_part(args.out, figures + more, vars(args) | {"out": str(args.out)}, curves=curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
