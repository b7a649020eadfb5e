#!/usr/bin/env python3
"""FUSE view benchmark (issue 4): the view (`zap mount`, daemon as users run it) against
reading the same btrfs data directly, alternating the two in the same run.

  fuse_ls_10k        `ls -l` of a checkpoints/ directory with 10,000 checkpoints (cold caches);
                     baseline: `ls -l` of a btrfs directory of 10,000 directories. Target < 1 s.
  fuse_ls_names_10k  `ls` (names only) of the same directory: no target, shows what -l adds.
  fuse_read_cold     sequential read of a 1 GiB file in fs/ after dropping caches (MB/s);
                     baseline: the same file in the snapshot. Target >= 50% of it.
  fuse_read_warm     the same, read again (page cache). Target >= 90%.
  fuse_find_100k     `find fs/ | wc -l` on a snapshot of 100,000 files, cold and warm;
                     baseline: the same find on the snapshot. Target <= 3x.
  fuse_request_us    one request's round trip (listxattr of the root, answered without I/O),
                     microseconds; baseline: the cheapest possible libfuse3 file system in C
                     (bench/c/fuse_floor.c). No target: it says what every request costs here.
  fuse_request_worker_us  the same for a request answered on a worker thread (listxattr of a
                     snapshot file: the thread's round trip is most of it).
Cold runs of the view start a new view server (nothing in its memory) and drop the kernel's
caches; each run alternates which side goes first.

    .venv/bin/python bench/fuse_view.py [--runs 5] [--files 100000] [--checkpoints 10000] [--gib 1]
Writes bench/results/parts/fuse_view.json (figures in the shape of bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import drop_caches, figure, write_part, zap_env  # noqa: E402
ZAP = [sys.executable, "-m", "zapckpt"]


def timed(argv: list[str] | str, shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def read_all(path: Path) -> float:
    """Seconds to read a file sequentially, 1 MiB at a time."""
    buf = bytearray(1 << 20)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t



def round_trip_us(path: Path, n: int = 3000) -> float:
    t = time.perf_counter()
    for _ in range(n):
        os.listxattr(path)
    return (time.perf_counter() - t) / n * 1e6


def floor_fs(workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Build and mount bench/c/fuse_floor.c."""
    exe, mnt = workdir / "fuse_floor", workdir / "floor-mnt"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True)
    subprocess.run(["gcc", "-O2", str(ROOT / "bench" / "c" / "fuse_floor.c"), "-o", str(exe), *flags.stdout.split()],
                   check=True)  # fmt: skip
    mnt.mkdir()
    child = subprocess.Popen([str(exe), str(mnt)])
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline or child.poll() is not None:
            raise RuntimeError("the C floor file system did not mount")
        time.sleep(0.05)
    return child, mnt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--checkpoints", type=int, default=10_000)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "fuse_view.json")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="zapbench-"))
    mp = Path(tempfile.mkdtemp(prefix="zapbench-view-"))
    os.environ.update(zap_env(home))
    env = dict(os.environ)
    from catalog import Checkpoint, Pod
    from zapckpt.ops import checkpoint as ckpt
    from zapckpt.pod import lifecycle as pods
    from zapckpt.context import Context
    from zapckpt.system.pool import init_pool
    from zapckpt.ops.deinit import deinit

    ctx = Context()
    init_pool(ctx.state, ctx.catalog, ctx.host_id, size=f"{int(args.gib) + 6}G")
    figures = []
    try:
        pods.run(ctx, "data", ["sleep", "1000000"], {}, None)
        vol = ctx.pool.volume_of("data")
        print("populating the volume ...", file=sys.stderr)
        block = os.urandom(1 << 20)
        with open(vol / "big.bin", "wb") as f:
            for i in range(int(args.gib * 1024)):
                f.write(block[i % 7 :] + block[: i % 7])  # distinct blocks, cheap to make
        per_dir = 1000
        for d in range((args.files + per_dir - 1) // per_dir):
            sub = vol / "tree" / f"d{d:04d}"
            sub.mkdir(parents=True)
            for i in range(min(per_dir, args.files - d * per_dir)):
                (sub / f"f{i:05d}").write_bytes(b"x")
        ck = ckpt.checkpoint(ctx, "data", "bench")
        snap = Path(ck.snapshot_path)
        # 10,000 checkpoint rows of a second pod (files-only; only the catalog matters to ls).
        with ctx.catalog.session() as s:
            many = Pod(name="many", volume=str(ctx.pool.volume_of("many")), mount_path=str(ctx.state.mount_path("many")),
                       command=["true"], env={}, cwd="/", desired_state="stopped", last_seq=args.checkpoints)  # fmt: skip
            s.add(many)
            s.flush()
            t0 = datetime.now(timezone.utc) - timedelta(days=30)
            s.add_all(
                Checkpoint(id=f"b{i:011x}", pod_id=many.id, seq=i + 1, created_at=t0 + timedelta(seconds=60 * i),
                           backend="btrfs", snapshot_path=str(snap), message=f"m{i}")
                for i in range(args.checkpoints)
            )  # fmt: skip
        lsdir = ctx.pool.path / "bench-ls"
        for i in range(args.checkpoints):
            (lsdir / str(i + 1)).mkdir(parents=True)
        subprocess.run([*ZAP, "mount", str(mp)], check=True, env=env, stdout=subprocess.DEVNULL)
        view_ck = mp / "pods" / "data" / "checkpoints" / str(ck.seq) / "fs"
        view_ls = mp / "pods" / "many" / "checkpoints"
        assert len(os.listdir(view_ls)) == args.checkpoints

        floor, floor_mnt = floor_fs(home)
        rt_ours, rt_base = [], []
        ln_ours, ln_base = [], []
        ls_ours, ls_base, rc_ours, rc_base, rw_ours, rw_base = [], [], [], [], [], []
        fc_ours, fc_base, fw_ours, fw_base = [], [], [], []
        size_mb = (vol / "big.bin").stat().st_size / 1e6
        rt_worker = []

        def remount() -> None:
            """A new view server: nothing of an earlier run in its memory (a truly cold run)."""
            subprocess.run([*ZAP, "umount", str(mp)], check=True, env=env, capture_output=True)
            subprocess.run([*ZAP, "mount", str(mp)], check=True, env=env, stdout=subprocess.DEVNULL)

        def pairs(base, ours):  # alternate which side runs first, run by run
            return (base, ours) if r % 2 == 0 else (ours, base)

        for r in range(args.runs):
            print(f"run {r + 1}/{args.runs}", file=sys.stderr)
            rt_base.append(round_trip_us(floor_mnt))
            rt_ours.append(round_trip_us(mp))
            rt_worker.append(round_trip_us(view_ck / "big.bin"))  # a snapshot file's: on a worker thread
            for path, out in pairs((lsdir, ls_base), (view_ls, ls_ours)):
                drop_caches()
                out.append(timed(["ls", "-l", str(path)]))
            for path, out in pairs((lsdir, ln_base), (view_ls, ln_ours)):
                drop_caches()
                out.append(timed(["ls", str(path)]))
            for path, cold, warm in pairs((snap / "big.bin", rc_base, rw_base), (view_ck / "big.bin", rc_ours, rw_ours)):
                if cold is rc_ours:
                    remount()
                drop_caches()
                cold.append(size_mb / read_all(path))
                warm.append(size_mb / read_all(path))
            for path, cold, warm in pairs((snap / "tree", fc_base, fw_base), (view_ck / "tree", fc_ours, fw_ours)):
                if cold is fc_ours:
                    remount()
                drop_caches()
                cold.append(timed(f"find {path} | wc -l", shell=True))
                warm.append(timed(f"find {path} | wc -l", shell=True))
        n, c = f"{args.files // 1000}k", f"{args.checkpoints // 1000}k"
        figures = [
            figure(f"fuse_ls_{c}", "s", ls_ours, ls_base, "ls -l of a btrfs directory of as many directories", 1.0,
                   target_on="ours"),
            figure(f"fuse_ls_names_{c}", "s", ln_ours, ln_base, "ls of a btrfs directory of as many directories"),
            figure("fuse_read_cold", "MB/s", rc_ours, rc_base, "read of the file in the snapshot, cold", 0.5, "higher"),
            figure("fuse_read_warm", "MB/s", rw_ours, rw_base, "read of the file in the snapshot, warm", 0.9, "higher"),
            figure(f"fuse_find_{n}_cold", "s", fc_ours, fc_base, "find on the snapshot, cold", 3.0),
            figure(f"fuse_find_{n}_warm", "s", fw_ours, fw_base, "find on the snapshot, warm", 3.0),
            figure("fuse_request_us", "us", rt_ours, rt_base, "minimal C libfuse3 file system"),
            figure("fuse_request_worker_us", "us", rt_worker, rt_base, "minimal C libfuse3 file system"),
        ]
        subprocess.run(["umount", str(floor_mnt)], check=False)
        floor.wait(timeout=10)
    finally:
        subprocess.run([*ZAP, "umount", str(mp)], env=env, capture_output=True)
        if (home / "floor-mnt").is_dir() and os.path.ismount(home / "floor-mnt"):
            subprocess.run(["umount", "--lazy", str(home / "floor-mnt")], check=False)
        deinit(ctx, purge=True)
        shutil.rmtree(mp, ignore_errors=True)
    write_part(args.out, figures, vars(args) | {"out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
