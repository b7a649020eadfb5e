"""The benchmark driver on every part in quick mode (bench/run.py --quick): real pods, real CRIU,
real btrfs, real services. Checks that each part runs and the result files' shape, not the
numbers (speed is bench/'s business)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # real pods, pools and CRIU

ROOT = Path(__file__).resolve().parent.parent


def _mounts_and_loops() -> tuple[str, str]:
    mounts = "".join(l for l in Path("/proc/self/mountinfo").read_text().splitlines(True) if "zapbench-" in l)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return mounts, "".join(l for l in loops.splitlines(True) if "zapbench-" in l)


def test_every_quick_part_runs_and_writes_figures_table_and_plot(tmp_path):
    # Every part of the suite, in quick mode: a part that no longer runs fails here, not in the
    # next full run nobody makes (restore_branch once crashed for weeks unnoticed).
    sys.path.insert(0, str(ROOT / "bench"))
    from run import SUITE

    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert {"kernel", "cpus", "criu"} <= set(doc["machine"]) and doc["failed"] == []
    for part in SUITE:
        figs = json.loads((tmp_path / "parts" / f"{part}.json").read_text())["figures"]
        assert figs and all(f["ours"]["median"] > 0 for f in figs), part
    frozen = json.loads((tmp_path / "parts" / "frozen.json").read_text())["figures"]
    names = [f["name"] for f in frozen]
    assert names == ["frozen_16m", "checkpoint_wall_16m", "checkpoint_inner_16m",
                     "frozen_256m", "checkpoint_wall_256m", "checkpoint_inner_256m"]  # fmt: skip
    for f in frozen:
        assert set(f) >= {"name", "unit", "ours", "baseline", "ratio_median", "target", "met"}
        o, b = f["ours"], f["baseline"]
        assert o["runs"] == 3 and o["min"] <= o["median"] <= o["max"] and o["min"] > 0
        assert b["name"] and b["runs"] == 3
        assert abs(f["ratio_median"] - o["median"] / b["median"]) < 1e-9
    big = frozen[3]
    assert big["target"] == 1.10 and big["met"] == (big["ratio_median"] <= 1.10)
    assert frozen[0]["target"] is None and frozen[0]["met"] is None
    md = (tmp_path / "latest.md").read_text()
    assert "| frozen_256m | ms |" in md and "![frozen](frozen.png)" in md
    assert (tmp_path / "frozen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The suite cleans up: no pool mount or loop device of its state directories is left, and
    # no raw image set or pid file in tmpfs.
    assert _mounts_and_loops() == ("", "")
    assert list(Path("/dev/shm").glob("zapbench-*")) == []


def test_unknown_part_is_refused_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown part" in res.stderr
    assert not (tmp_path / "latest.json").exists()
