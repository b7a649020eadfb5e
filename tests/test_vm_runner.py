"""The VM runner (vagrant/run-vm-tests): the NILFS2 suite in a Debian 12 guest (kernel 6.1,
Debian's CRIU 3.17) under qemu, and the runner's own failure paths. `make test-fast` leaves
this file out; `make test` and CI run it (make install installs qemu)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from guest import GUEST
from helpers import ROOT

pytestmark = pytest.mark.system  # a real guest under qemu

RUNNER = ROOT / "vagrant" / "run-vm-tests"


def _run(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([str(RUNNER), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))  # fmt: skip


def _summary(output: str) -> str | None:
    """The counts of pytest's last summary line ("1 failed, 1 passed in 3.2s", between rows of
    "=" unless pytest runs with -q), or None."""
    found = re.findall(r"^(?:=+ )?(\d+ [a-z]+(?:, \d+ [a-z]+)*) in [0-9.]+s(?: \([0-9:]+\))?(?: =+)?$", output, re.M)
    return found[-1] if found else None


def test_without_qemu_the_runner_says_so():
    cp = _run(env={"ZAP_VM_QEMU": "/nonexistent/qemu-system-x86_64"})
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines() == [
        "run-vm-tests: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86, or make install)"
    ]


def test_nilfs_suite_passes_and_a_suspended_pod_outlives_a_guest_reboot():
    """Two boots on the same disks (ZAP_VM_DISKS), started in the background at collection
    (tests/guest.py). The first runs the guest suite (tests/vm: the NILFS2 backend, incremental
    dumps and resource limits on cgroup v2, which this host's kernel cannot do), then suspends a
    counter pod and kills one with a restart policy (tests/vm_reboot, phase 1) and powers the
    guest off; the second, a new guest, resumes the first, which counts on from exactly where it
    stopped (issue 14), and restarts the second (issue 15). The second boot also runs a test that
    fails on purpose: a guest's failure must come back as a failure (pytest's exit code) with the
    guest's own output."""
    assert shutil.which("qemu-system-x86_64"), "qemu is missing: make install installs it"
    boots = GUEST.wait()
    first = boots[0]
    assert first.returncode == 0, first.output[-4000:]
    # NILFS2, incremental dumps, cgroup v2 limits, and the reboot's first phase: all of them ran
    # and passed (pytest's own summary line, exactly: a skip in the guest is a failure here)
    assert "kernel 6.1." in first.output and "criu Version: 3.17" in first.output
    assert _summary(first.output) == "4 passed", first.output[-4000:]
    assert len(boots) == 2, "the second boot did not run"
    out = boots[1].output
    assert boots[1].returncode == 1, out[-4000:]
    assert _summary(out) == "1 failed, 1 passed" and "deliberate failure from inside the guest" in out, out[-4000:]
    assert "FAILED tests/vm_reboot/test_reboot.py::test_the_runner_reports_this_failure" in out
    assert "guest pytest exit code: 1" in out
