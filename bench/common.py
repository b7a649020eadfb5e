"""What the benchmark scripts share: run statistics and the Markdown table of figures (the
figure shape of bench/results/latest.json)."""

from __future__ import annotations

import statistics


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def print_table(figures: list[dict]) -> None:
    print("| figure | unit | ours median (min-max) | baseline median | ratio | target | met |")
    print("|---|---|---|---|---|---|---|")
    for f in figures:
        o, b = f["ours"], f["baseline"]
        ratio = f"{f['ratio_median']:.2f}" if f["ratio_median"] is not None else "-"
        met = "-" if f["met"] is None else "yes" if f["met"] else "NO"
        target = f["target"] if f["target"] is not None else "-"
        base = f"{b['median']:.3g}" if b else "-"
        print(f"| {f['name']} | {f['unit']} | {o['median']:.3g} ({o['min']:.3g}-{o['max']:.3g}) | {base} | {ratio} | {target} | {met} |")
