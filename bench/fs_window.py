#!/usr/bin/env python3
"""Figure 2: the filesystem part of the frozen window, as the pod's volume grows.

For volumes of 100 MiB and 4 GiB of files (64 MiB files plus 1,000 small ones), and for the big
volume again with 256 MiB written (not synced) just before each checkpoint, runs alternate:
  ours      `zap checkpoint`: the post-dump hook's time (timings_ms.fs_snapshot: the btrfs
            snapshot inside the frozen window, fork/exec included). Target <= 10 ms, flat.
  baseline  what OpenVZ did: copy the volume with `rsync -a` while the pod would be frozen.
  other     the LXD way: `criu dump --leave-running`, thaw, then `btrfs subvolume snapshot -r`.
            Nothing of the file system is in its frozen window, but the pod runs between the
            dump and the snapshot: the figure is that gap, during which memory and files drift.
fs_window_<big>_vs_<small>: our big-volume time over the small one (flat: <= 1.5).

    .venv/bin/python bench/fs_window.py [--runs 5] [--volumes 100,4096] [--dirty-mib 256]
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
from common import ROOT, fill_volume, figure, pod_info, raw_dump, size_name, start_memhog, state_dir, stats, write_part, zap  # noqa: E402

RAW = Path("/dev/shm/zapbench-raw-fs")


def dirty(volume: Path, mib: int, k: int) -> None:
    """mib of new data in the page cache, not written back (the checkpoint has to deal with it)."""
    block = os.urandom(1 << 20)
    with open(volume / f"dirty{k:03d}.bin", "wb") as f:
        for _ in range(mib):
            f.write(block)


def lxd_way(pid: int, volume: Path, snap: Path) -> float:
    """Dump and thaw, then snapshot: returns the seconds the pod ran between thaw and snapshot."""
    raw_dump(pid, RAW)
    t = time.perf_counter()
    subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(volume), str(snap)], check=True)
    gap = time.perf_counter() - t
    subprocess.run(["btrfs", "-q", "subvolume", "delete", "--commit-after", str(snap)], check=True)
    shutil.rmtree(RAW, ignore_errors=True)
    return gap


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--volumes", default="100,4096")
    ap.add_argument("--dirty-mib", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "fs_window.json")
    args = ap.parse_args()
    volumes = [int(x) for x in args.volumes.split(",")]
    big = max(volumes)
    cases = [(mib, 0) for mib in volumes] + [(big, args.dirty_mib)]
    figures, ours_by_case, curve = [], {}, []
    pool_gib = 2 * big // 1024 + args.runs * 2 * args.dirty_mib // 1024 + 6
    with state_dir(f"{pool_gib}G") as home:
        for mib in volumes:
            name = f"v{mib}"
            start_memhog(home, name, 16)
            fill_volume(Path(pod_info(home, name)["volume"]) / "data", mib)
        for mib, dirty_mib in cases:
            name = f"v{mib}"
            info = pod_info(home, name)
            volume, pid = Path(info["volume"]), info["pid"]
            copy = home / "pool" / "rsync-copy"
            ours, rsync, lxd = [], [], []
            label = size_name(mib) + (f"_dirty{size_name(dirty_mib)}" if dirty_mib else "")
            for r in range(args.runs):
                print(f"fs_window {label}: run {r + 1}/{args.runs}", file=sys.stderr, flush=True)
                for side in (("rsync", "lxd", "ours") if r % 2 == 0 else ("ours", "lxd", "rsync")):
                    if dirty_mib:
                        dirty(volume, dirty_mib, len(ours) + len(rsync) + len(lxd))
                    if side == "ours":
                        rec = json.loads(zap(home, "checkpoint", name, "--json").stdout)
                        ours.append(rec["timings_ms"]["fs_snapshot"])
                        zap(home, "rmckpt", rec["ref"])
                        subprocess.run(["sync"], check=True)  # untimed, as after each baseline
                    elif side == "lxd":
                        lxd.append(lxd_way(pid, volume, home / "pool" / "lxd-snap") * 1000)
                    else:
                        t = time.perf_counter()
                        subprocess.run(["rsync", "-a", f"{volume}/", f"{copy}/"], check=True)
                        rsync.append((time.perf_counter() - t) * 1000)
                        shutil.rmtree(copy)
                        subprocess.run(["sync"], check=True)  # untimed: the copy's write-back must not land on ours
                if dirty_mib:
                    for f in volume.glob("dirty*.bin"):
                        f.unlink()
            ours_by_case[label] = ours
            curve.append({"mib": mib, "dirty_mib": dirty_mib, "ours_ms": ours, "rsync_ms": rsync, "lxd_gap_ms": lxd})
            figures.append(figure(
                f"fs_window_{label}", "ms", ours, rsync, "rsync -a of the volume (OpenVZ's way: files copied while frozen)",
                target=10, target_on="ours",
                other_baselines=[{"name": "LXD way: time between thaw and the snapshot taken after it (not atomic)",
                                  **stats(lxd)}],
            ))  # fmt: skip
        small = size_name(min(volumes))
        figures.append(figure(f"fs_window_{size_name(big)}_vs_{small}", "ms", ours_by_case[size_name(big)],
                              ours_by_case[small], f"zap's fs window with the {small} volume", target=1.5))  # fmt: skip
    write_part(args.out, figures, vars(args) | {"out": str(args.out)}, curves={"fs_window": curve})
    return 0


if __name__ == "__main__":
    sys.exit(main())
