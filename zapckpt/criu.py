"""Running CRIU: where it is, how a pod is dumped and restored, and what its logs say."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

from . import proc
from .errors import ZapError

# The private CRIU runtime that scripts/install.sh builds where the distribution's CRIU is too old.
PRIVATE_CRIU = "/opt/zapckpt/bin/criu"
MIN_MAJOR = 4

# Failures caused by a passing state of the tree; a quick retry usually gets past them.
TRANSIENT = (
    "In-flight connection",
    "Unseizable non-zombie",
    "Task pid reused while suspending",
    "zombie found while seizing",
    "can't interrupt task",
    "task not stopped after seize",
    "Collected (",
)
RETRIES = 3


class CriuError(ZapError):
    def __init__(self, what: str, log: Path | None, lines: list[str]):
        self.log = log
        self.lines = lines
        detail = "; ".join(lines[-3:]) if lines else "no error in its log"
        where = f" (full log: {log})" if log else ""
        super().__init__(f"{what}: {detail}{where}")

    @property
    def transient(self) -> bool:
        return any(t in ln for ln in self.lines for t in TRANSIENT)


def criu_binary() -> str:
    """ZAP_CRIU, else the private runtime if installed, else the system's criu."""
    env = os.environ.get("ZAP_CRIU")
    if env:
        return env
    if os.access(PRIVATE_CRIU, os.X_OK):
        return PRIVATE_CRIU
    found = shutil.which("criu")
    if found:
        return found
    raise ZapError("CRIU >= 4 not found: run `make install` (or see `zap doctor`)")


def version(binary: str | None = None) -> str:
    out = proc.run([binary or criu_binary(), "--version"]).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return out.strip()


def log_errors(log: Path) -> list[str]:
    """The lines of a CRIU log that explain a failure (minus the harmless rlimit line)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if ("Error" in line or "rror (" in line) and not any(n in line for n in proc.NOISE):
            # "(00.012345) Error (criu/x.c:12): text" -> "text"
            out.append(line.split("): ", 1)[-1].strip())
    return [ln for ln in out if ln and not ln.startswith("Dumping FAILED") and ln != "Restoring FAILED."]


def _keep_log(src: Path, dst: Path) -> Path:
    """Staging is removed after each operation: a failed run's log goes to the state directory."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        pass
    return dst


def dump(init_pid: int, images: Path, hook: Path, log: Path, *, leave_stopped: bool) -> float:
    """Dump the tree rooted at init_pid into images; returns the wall time in ms.

    CRIU runs inside the pod's mount namespace, so it does not try to dump that namespace
    (the files are covered by the snapshot instead); pid, ipc and uts namespaces are dumped.
    """
    argv = [
        "nsenter", "-t", str(init_pid), "-m", "--",
        criu_binary(), "dump", "-t", str(init_pid), "-D", str(images), "-o", "dump.log",
        "--leave-stopped" if leave_stopped else "--leave-running",
        "--file-locks", "--action-script", str(hook),
    ]  # fmt: skip
    attempt = 0
    while True:
        attempt += 1
        images.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # Its own session: a Ctrl-C at the terminal must not kill CRIU while its parasite code
        # runs inside the pod (zap defers the interrupt until CRIU is done, see signals.py).
        res = proc.run(argv, check=False, own_session=True)
        ms = (time.perf_counter() - t0) * 1000
        if res.returncode == 0:
            return ms
        _keep_log(images / "dump.log", log)
        err = CriuError("CRIU refused to dump the pod", log, log_errors(log))
        if not err.lines:
            err = CriuError("CRIU dump failed", None, [proc.CommandError(argv, res.returncode, res.stderr).reason()])
        if not err.transient or attempt > RETRIES:
            raise err
        time.sleep(0.05 * attempt)


def restore(images: Path, pidfile: Path, volume: Path, mount_path: Path, log: Path, system_root: bool = False) -> int:
    """Restore the tree detached, in a fresh private mount namespace where the volume appears
    at mount_path; returns the host pid of the restored init. A system pod (its root is the
    volume) gets its /proc mounted again, from inside its new pid namespace, before its
    processes come back."""
    criu = [criu_binary(), "restore", "-d", "-D", str(images), "-o", "restore.log",
            "--file-locks", "--pidfile", str(pidfile)]  # fmt: skip
    if system_root:
        hook = images.parent / "restore-hook.sh"
        hook.write_text(
            "#!/bin/sh\n"
            '[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0\n'
            f'exec nsenter -t "$CRTOOLS_INIT_PID" -p -- mount -t proc -o nosuid,nodev,noexec proc {shlex.quote(str(mount_path / "proc"))}\n'
        )
        hook.chmod(0o755)
        criu += ["--action-script", str(hook)]
    # As in podinit: detach `zap mount` views from the copy of the mount table the pod gets.
    inner = ["sh", "-c", 'for m in $(awk \'$0 ~ / - fuse\\.zapckpt / {print $5}\' /proc/self/mountinfo); do '
             'umount --lazy "$m"; done; mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(volume), str(mount_path)]
    argv = ["unshare", "--mount", "--propagation", "private", "--", *inner, *criu]
    res = proc.run(argv, check=False, own_session=True)
    if res.returncode != 0:
        _keep_log(images / "restore.log", log)
        lines = log_errors(log) or [proc.CommandError(argv, res.returncode, res.stderr).reason()]
        raise CriuError("CRIU could not restore the pod", log, lines)
    return int(pidfile.read_text().strip())
