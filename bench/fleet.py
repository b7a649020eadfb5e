#!/usr/bin/env python3
"""Fleet benchmark (issue 24): the shared catalog and store, measured against the raw tools in the
same run. A private PostgreSQL 15 cluster and a SeaweedFS server are started for it (on a Unix
socket and loopback only, as the tests do: tests/services.py) and stopped at the end.

  store_scale_checkpoint_16m      a 16 MiB pod's checkpoint (timings_ms.total) with 10^6 chunks
                                  already in the store, against the same with 10^4 (target ratio
                                  <= 1.2: the cost must not grow with the store). The extra chunks
                                  are index rows of a pack of their own; the checkpoints are real.
  store_scale_checkpoint_16m_pg   the same on the PostgreSQL catalog (the same target)
  fleet_upload_256m               a 256 MiB pod's first checkpoint into SeaweedFS: its pack and
                                  volume stream in MB/s of upload (timings_ms.upload), against
                                  boto3 uploading the same number of bytes as one object (target
                                  >= 0.8x)
  fleet_branch_cold               a branch on another host whose cache holds nothing (packs and
                                  volume fetched from the store), against the same branch on the
                                  host that took the checkpoint (target <= 2x)
  fleet_ps_postgresql             `zap ps` with the PostgreSQL catalog, as typed (target < 0.25 s);
  fleet_ps_postgresql_no_server   the same without the zap server (ZAP_SERVER=0), reported

    .venv/bin/python bench/fleet.py [--runs 5] [--chunks 1000000]
Writes bench/results/parts/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from common import ZAP, figure, start_memhog, write_part, zap_env  # noqa: E402
from services import PostgreSQL, SeaweedFS  # noqa: E402

CLIENT = ROOT / ".venv" / "libexec" / "zap"


def run(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*ZAP, *args], env={**zap_env(home), **(env or {})}, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    if res.returncode:
        raise RuntimeError(f"zap {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def fill_chunks(home: Path, n: int, env: dict | None = None) -> None:
    """n chunk rows of random hashes in a pack of their own (only the index matters here)."""
    os.environ.update({**zap_env(home), **(env or {})})
    from catalog.chunks import ChunkIndex, NewChunk
    from zapckpt.context import Context

    ctx = Context()
    batch = 50_000
    with ctx.catalog.session() as s:
        idx = ChunkIndex(s)
        for start in range(0, n, batch):
            chunks = [NewChunk(os.urandom(32), i * 4096, 4096, 0, 4096) for i in range(start, min(n, start + batch))]
            idx.add_pack(f"filler-{start}.pack", 4096 * len(chunks), chunks)
            s.commit()
    # what autovacuum does after a store grew this much (bulk-loaded in seconds here, where a
    # real one grows over months): without it a timing may catch the analysis mid-way
    ctx.catalog.analyze("chunks")
    ctx.close()


def checkpoint_ms(home: Path, pod: str, runs: int, env: dict | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        rec = json.loads(run(home, "checkpoint", pod, "--json", env=env).stdout)
        out.append(rec["timings_ms"]["total"])
    return out


def purge(home: Path, env: dict | None = None) -> None:
    subprocess.run([*ZAP, "deinit", "--purge", "--yes"], env={**zap_env(home), **(env or {})}, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def scale(runs: int, chunks: int, catalog: str | None, env: dict) -> tuple[list[float], list[float]]:
    """(10^4 chunks, `chunks` chunks): the checkpoint times of a 16 MiB pod."""
    times = []
    for n in (10_000, chunks):
        home = Path(tempfile.mkdtemp(prefix=f"zapbench-scale{n}-"))
        try:
            if catalog:
                db = catalog()
                run(home, "init", "--size", "2G", "--catalog", db, env=env)
            else:
                run(home, "init", "--size", "2G")
            fill_chunks(home, n, env)
            start_memhog(home, "small", 16)
            run(home, "checkpoint", "small", env=env)  # the first: its pages go in; the rest find them
            times.append(checkpoint_ms(home, "small", runs, env))
        finally:
            purge(home, env)
    return times[0], times[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--upload-mib", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "fleet.json")
    args = ap.parse_args()
    pg, s3 = PostgreSQL().start(), SeaweedFS().start()
    env = s3.env
    homes: list[Path] = []
    figures = []
    try:
        small, big = scale(args.runs, args.chunks, None, env)
        e = f"1e{len(str(args.chunks)) - 1}"
        figures.append(figure(f"store_scale_checkpoint_16m_{e}", "ms", big, small,
                              "the same checkpoint with 10^4 chunks in the store", 1.2))  # fmt: skip
        small_pg, big_pg = scale(args.runs, args.chunks, lambda: pg.url(pg.new_database()), env)
        figures.append(figure(f"store_scale_checkpoint_16m_{e}_pg", "ms", big_pg, small_pg,
                              "the same on PostgreSQL with 10^4 chunks in the store", 1.2))  # fmt: skip

        # two hosts of one fleet
        url = pg.url(pg.new_database())
        bucket = s3.new_bucket()
        a, b = (Path(tempfile.mkdtemp(prefix=f"zapbench-fleet-{n}-")) for n in "ab")
        homes += [b, a]
        run(a, "init", "--size", "4G", "--catalog", url, "--host", "a", "--store", f"s3://{bucket}/fleet", "--s3-endpoint",
            s3.endpoint, env=env)  # fmt: skip
        run(b, "init", "--size", "4G", "--catalog", url, "--host", "b", "--cache-size", "1", env=env)
        up, base, up_bytes = [], [], []
        for i in range(args.runs):
            pod = f"big{i}"
            start_memhog(a, pod, args.upload_mib)
            blob = a / "blob.bin"
            raw = s3.client()

            def baseline(sent: int) -> None:
                with open(blob, "wb") as f:
                    f.write(os.urandom(sent))
                t = time.perf_counter()
                raw.upload_file(str(blob), bucket, f"raw/{i}")
                base.append(sent / (time.perf_counter() - t) / 1e6)
                blob.unlink()
                raw.delete_object(Bucket=bucket, Key=f"raw/{i}")

            if i % 2:  # the raw upload first every other run: neither always meets a warmer server
                baseline(up_bytes[-1])
            rec = json.loads(run(a, "checkpoint", pod, "--json", env=env).stdout)
            stream = int(pg.psql(url.split("/")[3].split("?")[0], f"SELECT bytes FROM volume_streams WHERE id = '{rec['id']}'"))
            sent = rec["stored_bytes"] + stream
            up_bytes.append(sent)
            up.append(sent / (rec["timings_ms"]["upload"] / 1000) / 1e6)
            if not i % 2:
                baseline(sent)
            if i:
                run(a, "rm", "--force", "--yes", pod, env=env)
        mib = args.upload_mib
        figures.append(figure(f"fleet_upload_{mib}m", "MB/s", up, base, "boto3 upload_file of as many bytes, one object",
                              0.8, better="higher"))  # fmt: skip
        cold, local = [], []
        for i in range(args.runs):
            t = time.perf_counter()
            run(a, "branch", "big0@1", f"la{i}", env=env)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            run(b, "branch", "big0@1", f"rb{i}", env=env)  # b's cache holds nothing: --cache-size 1
            cold.append(time.perf_counter() - t)
            run(a, "rm", "--force", "--yes", f"la{i}", env=env)
            run(b, "rm", "--force", "--yes", f"rb{i}", env=env)
            # b's copy of the snapshot goes too: each run receives it again
            copy = b / "pool" / "snapshots" / json.loads(run(a, "show", "big0@1", "--json", env=env).stdout)["id"]
            subprocess.run(["btrfs", "-q", "subvolume", "delete", str(copy)], check=True)
        figures.append(figure(f"fleet_branch_cold_{mib}m", "s", cold, local, "the same branch on the host that took it", 2.0))
        ps, ps_plain = [], []
        typed = [str(CLIENT)] if CLIENT.exists() else ZAP  # the `zap` users type (scripts/install.sh builds it)
        for _ in range(max(args.runs, 10)):
            for argv, extra, out in ((typed, {}, ps), (ZAP, {"ZAP_SERVER": "0"}, ps_plain)):
                t = time.perf_counter()
                subprocess.run([*argv, "ps"], env={**zap_env(a), **extra}, capture_output=True, check=True)
                out.append(time.perf_counter() - t)
        figures.append(figure("fleet_ps_postgresql", "s", ps, target=0.25, target_on="ours"))
        figures.append(figure("fleet_ps_postgresql_no_server", "s", ps_plain))
    finally:
        for h in homes:
            purge(h, env)
        subprocess.run([*ZAP, "server", "--stop"], capture_output=True)
        s3.stop()
        pg.stop()
    write_part(args.out, figures, {"runs": args.runs, "chunks": args.chunks, "upload_mib": args.upload_mib})
    return 0


if __name__ == "__main__":
    sys.exit(main())
