#!/usr/bin/env python3
"""Image store benchmark (issue 3): 10 successive checkpoints of a process with CHURN_MIB MiB of
resident data where 2% of pages change between checkpoints.

For each checkpoint the same real CRIU dump (into tmpfs) is stored three ways, in the same run:
  ours     the content-addressed store (zapckpt.store.chunkstore), timed (ingest, then materialise)
  raw      the CRIU image directory as it is
  tar|zstd one `tar -cf - | zstd -3 -T0` per checkpoint (what Podman's export does)
Target: total stored <= 1.5x the first checkpoint; ingest >= 200 MB/s; materialise >= 400 MB/s.

    .venv/bin/python bench/dedup.py [--mib 512] [--checkpoints 10] [--pct 2]
"""

from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(ROOT / "bench"))
from common import figure, pod_program, wait_for, write_part, zap_env  # noqa: E402

CHURN = ROOT / "tests" / "workloads" / "churn.py"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--pct", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "dedup.json")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="zapbench-"))
    os.environ.update(zap_env(home))
    from catalog import Checkpoint, Pod
    from zapckpt.criu import runner as criu
    from zapckpt.pod import lifecycle as pods
    from zapckpt.store.chunkstore import ChunkStore
    from zapckpt.context import Context
    from zapckpt.system.pool import init_pool
    from zapckpt.ops.deinit import deinit

    ctx = Context()
    init_pool(ctx.state, ctx.catalog, ctx.host_id, size="4G")
    store = ChunkStore(home / "store", hash_name=ctx.store.hash_name)  # the hash a new store uses
    rows = []
    try:
        pods.run(ctx, "churn", ["python3", str(pod_program(CHURN))], {"CHURN_MIB": str(args.mib), "CHURN_PCT": str(args.pct)}, None)
        marks = home / "pool" / "pods" / "churn" / "churned.txt"
        wait = lambda n: wait_for(lambda: marks.exists() and len(marks.read_text().split()) >= n,  # noqa: E731
                                  what=f"the workload's churn round {n}")
        wait(1)
        with ctx.catalog.session() as s:
            pod = s.query(Pod).one()
            pid = pod.init_pid
        for i in range(args.checkpoints):
            if i:
                os.kill(pid, 10)  # SIGUSR1: change pct% of the pages
                wait(i + 1)
            dump = ctx.state.staging / "benchdump"
            shutil.rmtree(dump, ignore_errors=True)
            dump.mkdir(parents=True)
            subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "--", criu.criu_binary(), "dump", "-t", str(pid),
                            "-D", criu.through_host_root(dump), "-o", "dump.log", "--leave-running", *criu.NET_OPTS],
                           check=True, capture_output=True)  # fmt: skip
            (dump / "dump.log").unlink()
            raw = sum(f.stat().st_size for f in dump.iterdir())
            digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in dump.iterdir()}
            # tar | zstd, as one export per checkpoint
            t0 = time.perf_counter()
            tz = subprocess.run(f"tar -C {dump} -cf - . | zstd -q -3 -T0 -c | wc -c", shell=True, check=True,
                                capture_output=True, text=True)  # fmt: skip
            tar_s = time.perf_counter() - t0
            # ours
            with ctx.catalog.session() as s:
                ck_id = f"bench{i:07d}"
                s.add(Checkpoint(id=ck_id, pod_id=pod.id, seq=i + 1, backend="btrfs", snapshot_path="-",
                                 processes=[], image_format="cas"))  # fmt: skip
                s.flush()
                t0 = time.perf_counter()
                with store.lock():
                    pending = store.ingest(s, dump)
                    pending.commit(s, ck_id)
                    s.commit()
                ingest_s = time.perf_counter() - t0
            target = ctx.state.staging / "benchout"
            shutil.rmtree(target, ignore_errors=True)
            with ctx.catalog.session() as s:
                t0 = time.perf_counter()
                store.materialize(s, ck_id, target)
                mat_s = time.perf_counter() - t0
            same = all(hashlib.sha256((target / n).read_bytes()).hexdigest() == h for n, h in digest.items())
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(dump, ignore_errors=True)
            rows.append({"i": i + 1, "raw_bytes": raw, "ours_new_bytes": pending.stored_bytes,
                         "tar_zstd_bytes": int(tz.stdout.strip()), "ingest_s": ingest_s, "materialize_s": mat_s,
                         "tar_zstd_s": tar_s, "identical": same})  # fmt: skip
            print(f"checkpoint {i + 1}: raw {raw / 2**20:.0f} MiB, ours +{pending.stored_bytes / 2**20:.1f} MiB "
                  f"(ingest {raw / 2**20 / ingest_s:.0f} MB/s, materialise {raw / 2**20 / mat_s:.0f} MB/s), "
                  f"tar|zstd {int(tz.stdout) / 2**20:.0f} MiB, identical={same}", flush=True)  # fmt: skip
    finally:
        deinit(ctx, purge=True)
    first = rows[0]["ours_new_bytes"]
    ours_total = sum(r["ours_new_bytes"] for r in rows)
    summary = {
        "mib": args.mib, "checkpoints": args.checkpoints, "pct": args.pct,
        "ours_total_bytes": ours_total, "ours_first_bytes": first, "ours_ratio_to_first": ours_total / first,
        "raw_total_bytes": sum(r["raw_bytes"] for r in rows),
        "tar_zstd_total_bytes": sum(r["tar_zstd_bytes"] for r in rows),
        "ingest_MBps_median": statistics.median(r["raw_bytes"] / 2**20 / r["ingest_s"] for r in rows),
        "ingest_MBps_first": rows[0]["raw_bytes"] / 2**20 / rows[0]["ingest_s"],
        "materialize_MBps_median": statistics.median(r["raw_bytes"] / 2**20 / r["materialize_s"] for r in rows),
        "tar_zstd_MBps_median": statistics.median(r["raw_bytes"] / 2**20 / r["tar_zstd_s"] for r in rows),
        "all_identical": all(r["identical"] for r in rows), "rows": rows,
    }  # fmt: skip
    mb = lambda r, k: r["raw_bytes"] / 2**20 / r[k]  # noqa: E731
    name = f"dedup_{args.checkpoints}x{args.pct:g}pct"
    figures = [
        figure(name, "x first checkpoint", [ours_total / first],
               [summary["tar_zstd_total_bytes"] / rows[0]["tar_zstd_bytes"]],
               "tar | zstd -3 of each image set (Podman's export), total over its first", target=1.5, target_on="ours",
               ours_bytes=ours_total, tar_zstd_bytes=summary["tar_zstd_total_bytes"], raw_bytes=summary["raw_total_bytes"]),
        figure(f"{name}_ingest", "MiB/s", [mb(r, "ingest_s") for r in rows], [mb(r, "tar_zstd_s") for r in rows],
               "tar | zstd -3 -T0 of the same image set", better="higher", target=200, target_on="ours"),
        figure(f"{name}_materialize", "MiB/s", [mb(r, "materialize_s") for r in rows], None, None,
               better="higher", target=400, target_on="ours"),
    ]  # fmt: skip
    if not summary["all_identical"]:
        raise SystemExit("a materialised image set differs from what CRIU wrote")
    write_part(args.out, figures, vars(args) | {"out": str(args.out)}, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
