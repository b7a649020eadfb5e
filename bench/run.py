#!/usr/bin/env python3
"""The benchmark suite: `make bench` (full, up to ~30 min) or `make bench-quick` (< 3 min smoke).

Runs each benchmark script in its own process and state directory, then merges their figures
into RESULTS/latest.json ({"machine", "figures"}), a Markdown table RESULTS/latest.md and PNG
plots of the scaling curves. RESULTS is bench/results (full) or bench/results/quick (--quick, so
a smoke run never overwrites the committed full set). A script that fails is reported, the others
still run, and the exit code is 1.

    .venv/bin/python bench/run.py [--quick] [--only frozen,fs_window,...] [--merge-only] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, markdown_table  # noqa: E402

# name -> (script, full arguments, quick arguments)
SUITE = {
    "frozen": ("frozen.py", ["--runs", "5", "--sizes", "16,256,1024"], ["--runs", "3", "--sizes", "16,256"]),
    "fs_window": ("fs_window.py", ["--runs", "5", "--volumes", "100,4096", "--dirty-mib", "256"],
                  ["--runs", "3", "--volumes", "50,200", "--dirty-mib", "32"]),
    "restore_branch": ("restore_branch.py", ["--runs", "5", "--restore-mib", "256", "--volumes", "100,4096"],
                       ["--runs", "3", "--restore-mib", "128", "--volumes", "50,200"]),
    "lazy_restore": ("lazy_restore.py", ["--runs", "5", "--sizes", "64,1024"], ["--runs", "2", "--sizes", "32,128"]),
    "dedup": ("dedup.py", ["--mib", "512", "--checkpoints", "10", "--pct", "2"],
              ["--mib", "64", "--checkpoints", "10", "--pct", "2"]),
    "fuse_view": ("fuse_view.py", ["--runs", "5", "--files", "100000", "--checkpoints", "10000", "--gib", "1"],
                  ["--runs", "3", "--files", "10000", "--checkpoints", "1000", "--gib", "0.125"]),
    "catalog": ("catalog_scale.py", ["--runs", "5", "--rows", "100000"], ["--runs", "2", "--rows", "5000"]),
    "overhead": ("overhead.py", ["--runs", "5", "--intervals", "10,2,1", "--window", "20"],
                 ["--runs", "2", "--intervals", "1", "--window", "3"]),
    "network": ("network.py", ["--runs", "5"], ["--runs", "2"]),
    "startup": ("startup.py", ["--runs", "30"], ["--runs", "5"]),
    "pod_memory": ("pod_memory.py", ["--pods", "1,50"], ["--pods", "1,5"]),
    "fleet": ("fleet.py", ["--runs", "5", "--chunks", "1000000", "--upload-mib", "256"],
              ["--runs", "2", "--chunks", "20000", "--upload-mib", "32"]),
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description="zapckpt benchmark suite")
    ap.add_argument("--quick", action="store_true", help="small sizes and fewer runs (< 3 min)")
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(SUITE)}")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results, or bench/results/quick)")
    ap.add_argument("--merge-only", action="store_true", help="run nothing: rebuild latest.* and the plots from parts/")
    args = ap.parse_args()
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    names = [] if args.merge_only else args.only.split(",") if args.only else list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        print(f"bench: unknown part(s) {', '.join(unknown)}; known: {', '.join(SUITE)}", file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    figures, curves, failed, durations = [], {}, [], {}
    for name in names:
        script, full, quick = SUITE[name]
        part = out / "parts" / f"{name}.json"
        part.unlink(missing_ok=True)
        print(f"== {name}", file=sys.stderr, flush=True)
        t = time.monotonic()
        res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *(quick if args.quick else full),
                              "--out", str(part)], stdout=subprocess.DEVNULL)  # fmt: skip
        durations[name] = round(time.monotonic() - t, 1)
        if res.returncode or not part.exists():
            failed.append({"part": name, "exit": res.returncode})
            print(f"bench: {name} failed (exit {res.returncode})", file=sys.stderr)
            continue
    # latest.json holds every part present: those just run, and (after a partial run with
    # --only) the earlier results of the others, each with the time it was written.
    written = {}
    try:
        durations = json.loads((out / "latest.json").read_text())["part_durations_s"] | durations
    except (OSError, ValueError, KeyError):
        pass
    for name in SUITE:
        part = out / "parts" / f"{name}.json"
        if part.exists():
            doc = json.loads(part.read_text())
            figures += doc["figures"]
            curves.update(doc.get("curves", {}))
            written[name] = datetime.fromtimestamp(part.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    doc = {
        "machine": machine(), "mode": ("quick" if args.quick else "full") + (", merged from parts/" if args.merge_only else "" if names == list(SUITE) else f", re-ran: {', '.join(names)}"), "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t0, 1), "part_durations_s": durations, "parts_written": written,
        "failed": failed,
        "figures": figures, "curves": curves,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    from plots import plot_all

    pngs = plot_all(doc, out)
    (out / "latest.md").write_text(report(doc, pngs))
    print(markdown_table(figures))
    print(f"bench: {len(figures)} figures, {sum(1 for f in figures if f['met'] is False)} targets missed, "
          f"{len(failed)} part(s) failed, {doc['duration_s']:.0f} s; results in {out}", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def report(doc: dict, pngs: list[Path]) -> str:
    m = doc["machine"]
    lines = [
        f"# zapckpt benchmarks ({doc['mode']})", "",
        f"Machine: {m['os']}, kernel {m['kernel']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_mib']} MiB RAM, "
        f"CRIU {m['criu']}, {m['btrfs_progs']}, Python {m['python']}.", "",
        "Median (min-max) of the runs; every baseline was measured in the same run, alternating with ours; "
        "the ratio is ours/baseline of the medians. How each figure is measured: the docstring of its script "
        "in bench/ and docs/benchmarks.md.", "",
        "Parts, and when each was measured: " + ", ".join(f"{k} ({v})" for k, v in doc["parts_written"].items())
        + f". Total time of the parts: {sum(doc['part_durations_s'].values()) / 60:.0f} min.",
        "", markdown_table(doc["figures"]), "",
    ]  # fmt: skip
    others = [(f["name"], o) for f in doc["figures"] for o in f.get("other_baselines", [])]
    if others:
        lines += ["Other baselines:", "", "| figure | baseline | median (min-max) |", "|---|---|---|"]
        lines += [f"| {n} | {o['name']} | {o['median']:.3g} ({o['min']:.3g}-{o['max']:.3g}) |" for n, o in others]
        lines.append("")
    if doc["failed"]:
        lines += ["Failed parts (no figures): " + ", ".join(f"{f['part']} (exit {f['exit']})" for f in doc["failed"]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
