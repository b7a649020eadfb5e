"""PNG plots of the scaling curves in a latest.json document (matplotlib, no display)."""

from __future__ import annotations

import statistics
from pathlib import Path


def _band(ax, xs, runs, label, marker):
    """Median line with the min-max range as error bars."""
    med = [statistics.median(r) for r in runs]
    lo = [m - min(r) for m, r in zip(med, runs)]
    hi = [max(r) - m for m, r in zip(med, runs)]
    ax.errorbar(xs, med, yerr=[lo, hi], label=label, marker=marker, capsize=3)


def plot_all(doc: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = doc.get("curves", {})
    made = []

    def save(fig, name):
        path = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)

    if c := curves.get("frozen"):
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r["mib"] for r in c]
        _band(a, xs, [r["ours_frozen_ms"] for r in c], "zap checkpoint", "o")
        _band(a, xs, [r["raw_frozen_ms"] for r in c], "raw criu dump (tmpfs)", "s")
        a.set(xscale="log", yscale="log", xlabel="pod resident data (MiB)", ylabel="frozen time (ms)",
              title="Frozen window")  # fmt: skip
        _band(b, xs, [r["ours_wall_s"] for r in c], "zap checkpoint (CLI)", "o")
        _band(b, xs, [r["raw_wall_s"] for r in c], "raw criu dump (tmpfs)", "s")
        b.set(xscale="log", yscale="log", xlabel="pod resident data (MiB)", ylabel="wall time (s)",
              title="Whole command")  # fmt: skip
        for ax in (a, b):
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
        save(fig, "frozen")
    if c := [r for r in curves.get("fs_window", []) if not r["dirty_mib"]]:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["mib"] for r in c]
        _band(ax, xs, [r["ours_ms"] for r in c], "zap: snapshot inside the frozen window", "o")
        _band(ax, xs, [r["lxd_gap_ms"] for r in c], "LXD way: snapshot after thaw (not atomic)", "^")
        _band(ax, xs, [r["rsync_ms"] for r in c], "rsync -a of the volume (OpenVZ)", "s")
        ax.axhline(10, color="grey", linestyle="--", label="target 10 ms")
        ax.set(xscale="log", yscale="log", xlabel="volume (MiB of files)", ylabel="ms", title="File system part of the checkpoint")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        save(fig, "fs_window")
    if c := curves.get("branch"):
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["mib"] for r in c]
        _band(ax, xs, [r["ours_s"] for r in c], "zap branch (until it runs)", "o")
        _band(ax, xs, [r["base_s"] for r in c], "cp -a + raw criu restore", "s")
        ax.set(xscale="log", yscale="log", xlabel="volume (MiB of files)", ylabel="s", title="Branch")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        save(fig, "branch")
    if c := curves.get("overhead"):
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["every_s"] for r in c]
        loss = [100 * (1 - statistics.median(r["ours"]) / statistics.median(r["base"])) for r in c]
        ax.plot(xs, loss, marker="o", label="median throughput loss")
        ax.set(xscale="log", xlabel="checkpoint interval (s)", ylabel="throughput loss (%)",
               title="Checkpointing a running workload")  # fmt: skip
        ax.set_ylim(bottom=min(0, min(loss) - 1))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "overhead")
    return made
