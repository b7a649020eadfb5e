"""Runs inside the Debian 12 guest of vagrant/run-vm-tests, one phase per boot, on disks kept
between the two boots (ZAP_VM_DISKS): tests/test_vm_runner.py boots the guest, runs the first
phase, powers it off, boots a new guest on the same disks and runs the second.

The state directory lives on the second disk (/dev/vdb, NILFS2, mounted at /run/zaphome), with
the embedded loop-file pool inside it; everything else of the guest (its /run, /tmp, the pods'
processes) is gone at the power-off, as after a real reboot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import COUNTER, assert_continuous, counted_past, counter_values  # noqa: E402

pytestmark = pytest.mark.system

DISK = "/dev/vdb"
HOME = Path("/run/zaphome")
RECORD = HOME / "before-reboot.json"


def zap(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ZAP_HOME": str(HOME),
           "ZAP_CRIU": "/usr/sbin/criu", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    cp = subprocess.run([sys.executable, "-m", "zapckpt.cli", *args], capture_output=True, text=True, env=env, timeout=600)
    assert cp.returncode == 0, f"zap {' '.join(args)}: {cp.stderr}{cp.stdout}"
    return cp


def _mount_state(fresh: bool) -> None:
    if fresh:
        subprocess.run(["mkfs.nilfs2", "-q", "-f", DISK], check=True)
    HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "nilfs2", DISK, str(HOME)], check=True)


def _volume(name: str) -> Path:
    return Path(json.loads(zap("show", name, "--json").stdout)["volume"])


def test_phase1_suspend_then_power_off():
    _mount_state(fresh=True)
    zap("init", "--backend", "nilfs", "--size", "1G")
    zap("run", "ctr", "--net", "none", "--env", "COUNTER_INTERVAL=0.01", "--", "python3", str(COUNTER))
    volume = _volume("ctr")  # each CLI call costs seconds under emulation
    counted_past(volume, 30, "the counter", timeout=120)
    assert zap("suspend", "--all").stdout.strip() == "ctr: suspended as ctr@1"
    values = counter_values(volume)
    time.sleep(1)
    assert counter_values(volume) == values  # stopped
    # A pod with a restart policy that was running when the power went (not suspended): its
    # processes die, the supervisor with them.
    zap("run", "ap", "--net", "none", "--restart", "always", "--", "sleep", "1000000")
    ap = json.loads(zap("show", "ap", "--json").stdout)["pid"]
    os.kill(json.loads(zap("watch", "--list", "--json").stdout)["supervisor"]["pid"], signal.SIGKILL)
    os.kill(ap, signal.SIGKILL)
    RECORD.write_text(json.dumps({"values": values, "ap": ap}))
    # What a shutdown does after the suspend: the pool and the state disk unmounted.
    zap("deinit")
    subprocess.run(["umount", str(HOME)], check=True)


def test_phase2_resume_after_the_reboot():
    _mount_state(fresh=False)
    before = json.loads(RECORD.read_text())["values"]
    assert zap("resume", "--all").stdout.strip() == "ctr: resumed from ctr@1"
    state = json.loads(zap("show", "ctr", "--json").stdout)
    assert state["state"] == "running" and state["suspended"] is False
    values = counted_past(Path(state["volume"]), len(before) + 30, "the counter after the reboot", timeout=120)
    assert_continuous(values)
    assert values[: len(before)] == before  # the same run, on from where it was suspended
    # `zap resume` (what zapckpt.service runs at boot) starts the supervisor, which restarts the
    # pod whose policy says so: it was running, nobody stopped it.
    ap = json.loads(RECORD.read_text())["ap"]
    deadline = time.monotonic() + 120
    while (pod := json.loads(zap("show", "ap", "--json").stdout))["state"] != "running":
        assert time.monotonic() < deadline, f"the pod with a restart policy was not restarted: {pod}"
        time.sleep(1)
    assert pod["pid"] != ap and pod["restart"]["count"] == 1
    # Nothing to tidy: this guest and its disks are thrown away.


def test_the_runner_reports_this_failure():
    """Fails on purpose, run only in the second boot: the host-side test checks that a guest's
    failure comes back as a failure, with the guest's own words (saves a boot of its own)."""
    raise AssertionError("deliberate failure from inside the guest")
