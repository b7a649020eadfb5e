"""The two guest boots of tests/test_vm_runner.py, started in the background when the session
collects that test, so that the minutes of software emulation overlap the host tests instead of
following them (this machine has two CPUs; the host tests use about one). The boots run one
after the other on the same disks (the second resumes what the first suspended); the test waits
for them and checks their results. Interrupting the session stops the guest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

from helpers import ROOT

RUNNER = ROOT / "vagrant" / "run-vm-tests"
TIMEOUT = 1500  # each boot; the runner's own limit (ZAP_VM_TIMEOUT) is 900 s

FIRST = ("tests/vm", "tests/vm_reboot/test_reboot.py::test_phase1_suspend_then_power_off")
SECOND = ("tests/vm_reboot/test_reboot.py::test_phase2_resume_after_the_reboot",
          "tests/vm_reboot/test_reboot.py::test_the_runner_reports_this_failure")  # fmt: skip


@dataclass
class Boot:
    returncode: int
    output: str  # stdout and stderr, the guest's console included


@dataclass
class GuestRuns:
    boots: list[Boot] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _proc: subprocess.Popen | None = None
    _stopped: bool = False
    _disks: str | None = None
    # Held while a boot is being started or stopped: no boot starts once stop() has run.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="guest", daemon=True)
            self._thread.start()

    def wait(self) -> list[Boot]:
        self.start()
        self._thread.join()
        return self.boots

    def stop(self) -> None:
        """Ends a boot still running (an interrupted session): its whole process group, qemu too;
        then the disks go."""
        with self._lock:
            self._stopped = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join()
        if self._disks:
            shutil.rmtree(self._disks, ignore_errors=True)

    def _run(self) -> None:
        self._disks = disks = tempfile.mkdtemp(prefix="zapvm-disks-")
        try:
            for args in (FIRST, SECOND):
                boot = self._boot(args, disks)
                if boot is None:
                    return  # stopped
                self.boots.append(boot)
                if boot.returncode != 0:
                    return  # the second boot needs the first one's suspended pod
        finally:
            shutil.rmtree(disks, ignore_errors=True)

    def _boot(self, args: tuple[str, ...], disks: str) -> Boot | None:
        with self._lock:
            if self._stopped:
                return None
            # nice: the host tests wait on real timeouts; the guest takes the CPU they leave.
            self._proc = proc = subprocess.Popen(["nice", "-n", "10", str(RUNNER), *args], stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                                 env=dict(os.environ, ZAP_VM_DISKS=disks))  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            out += f"\n(the guest did not finish within {TIMEOUT} s)"
        return Boot(proc.returncode, out)


GUEST = GuestRuns()
