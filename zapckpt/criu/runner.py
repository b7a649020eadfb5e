"""Running CRIU: where it is, how a pod is dumped and restored, and what its logs say."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from zapckpt.common import proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.system import faults

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


# "A session leader of 45116(4) is outside of its pid namespace": host pid (pid in the pod).
_OUTSIDE_SESSION = re.compile(r"session leader of (\d+)\((\d+)\) is outside of its pid namespace")
_GHOST = re.compile(r"Can't dump ghost file (.+) of (\d+) size, increase limit")
_RELATIVE_RENAMED = re.compile(r"Unable too cut (.+) from (.+)")
_LOOKUP_MOUNT = re.compile(r"Can't lookup mount=\d+ for fd=(\d+) path=(\S+)")


def _seen(path: str, view_root: str | None) -> str:
    """A path CRIU names (from the root of the pod's mount namespace) as the pod sees it."""
    if view_root and (path + "/").startswith(view_root.rstrip("/") + "/"):
        return path[len(view_root.rstrip("/")) :] or "/"
    return path


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}{unit}"
    return f"{n} bytes"


def _explain(lines: list[str], view_root: str | None = None, ghost_limit: int | None = None) -> str:
    """What the CRIU errors zap users meet mean, in the pod's terms, and what to do about them."""
    for ln in lines:
        if m := _OUTSIDE_SESSION.search(ln):
            try:
                cmd = Path(f"/proc/{m.group(1)}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = ""
            who = f"process {m.group(2)} of the pod (host pid {m.group(1)}{': ' + cmd.strip() if cmd.strip() else ''})"
            return (f"{who} is in a session that began outside the pod (a background job of `zap exec`?): "
                    f"start daemons with `zap exec -d`, which gives them a session of their own inside the pod")  # fmt: skip
        if m := _GHOST.search(ln):
            limit = f" ({_size(ghost_limit)})" if ghost_limit else ""
            return (f"a process holds the deleted file {_seen(m.group(1), view_root)} open, {_size(int(m.group(2)))}, "
                    f"more than --ghost-limit{limit} lets a checkpoint keep: raise it (`zap checkpoint --ghost-limit "
                    f"SIZE`, or `zap init --ghost-limit SIZE` for every checkpoint), or have the program close it")  # fmt: skip
        if m := _RELATIVE_RENAMED.search(ln):
            return (f"a process bound a unix socket by the relative name {m.group(1)} and then renamed or moved it "
                    f"(it is {_seen(m.group(2), view_root)} now): CRIU can only checkpoint such a socket if it was "
                    f"bound by its absolute path")  # fmt: skip
        if m := _LOOKUP_MOUNT.search(ln):
            return (f"a process holds {m.group(2)} (descriptor {m.group(1)}) on a file system that is not mounted in "
                    f"the pod, such as a POSIX message queue, which CRIU cannot checkpoint")  # fmt: skip
        if "Can't get rlimit" in ln and "not permitted" in ln:
            return ("a process of the pod runs as another user than root, and CRIU needs CAP_SYS_RESOURCE to read "
                    "its resource limits, which zap lacks here: give zap CAP_SYS_RESOURCE, or run it as root")  # fmt: skip
        if "io_uring" in ln:
            return "a process of the pod uses io_uring, which CRIU cannot checkpoint: run it without"
    return ""


class CriuError(ZapError):
    def __init__(self, what: str, log: Path | None, lines: list[str], view_root: str | None = None,
                 ghost_limit: int | None = None):  # fmt: skip
        self.log = log
        self.lines = lines
        detail = "; ".join(lines[-3:]) if lines else "no error in its log"
        if view_root:  # paths as the pod sees them here too (the full log keeps CRIU's own)
            detail = detail.replace(view_root.rstrip("/") + "/", "/")
        where = f"full log: {log}" if log else ""
        meaning = _explain(lines, view_root, ghost_limit)
        if meaning:
            # Ours first; CRIU's own words after, for a bug report.
            super().__init__(f"{what}: {meaning} (CRIU said: {detail}{'; ' + where if where else ''})")
        else:
            super().__init__(f"{what}: {detail}" + (f" ({where})" if where else ""))

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


def net_opts(lock: bool = True) -> list[str]:
    """TCP connections (established, listening, half-closed) are dumped and restored in repair
    mode; the network lock (nftables, in the pod's namespace) lets no packet of theirs in or out
    while the pod is frozen, so peers see no reset. Setting the lock up costs ~10 ms inside the
    frozen window, so a dump without connections to hold leaves CRIU its default method, which
    sets nothing up until it meets a connection (see checkpoint.py; `skip` is unknown to CRIU
    3.x)."""
    return ["--tcp-established", *(["--network-lock", "nftables"] if lock else [])]


NET_OPTS = net_opts()
DEFAULT_TIMEOUT = 300.0
DEFAULT_GHOST_LIMIT = 64 << 20


def timeout() -> float:
    """ZAP_CRIU_TIMEOUT seconds for one CRIU run (default 300)."""
    raw = os.environ.get("ZAP_CRIU_TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not (value > 0 and value < 1e6):
        raise UsageError(f"bad ZAP_CRIU_TIMEOUT {raw!r}: a number of seconds")
    return value


def host_root_pid() -> int:
    """A process whose root (/proc/<pid>/root) is ours, the host's, as seen from inside a pod's
    mount namespace (where /dev/shm, /dev/pts and the state directory are the pod's own): the
    init (pid 1) when it shares our root, since it outlives zap and a CRIU run then still finds
    its images, pidfile and hook if zap dies half-way (recovery.py relies on it); else our own
    (zap in a chroot; looked up each time: a restore's background half is a fork, another pid)."""
    return 1 if _pid1_shares_root() else os.getpid()


@functools.cache  # a property of this machine: looked up once per process, not per path
def _pid1_shares_root() -> bool:
    try:
        a, b = os.stat("/proc/1/root"), os.stat("/")
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and os.readlink("/proc/1/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def host_root() -> str:
    return f"/proc/{host_root_pid()}/root"


def through_host_root(path: Path) -> str:
    return f"{host_root()}{path}"


def _run_bounded(argv: list[str], what: str, own_log: Path, log: Path, env: dict | None = None,
                 limit: float | None = None, umask: int = -1, pass_fds: tuple[int, ...] = (),
                 join_cgroups: list[str] | tuple[str, ...] = (), watch=None) -> proc.Result:  # fmt: skip
    """Run CRIU with the timeout; on expiry its whole process group is killed (the tasks it had
    seized are let go by the kernel when their tracer dies, the ones it was restoring die with
    it) and its log is kept. watch: called with CRIU's pid once it runs (a watchdog that may
    kill its group sooner)."""
    limit = limit or timeout()
    action = next((a for a in ("dump", "restore") if a in argv), "criu")

    def started(pid: int) -> None:
        if watch is not None:
            watch(pid)
        faults.point(f"criu-{action}", delay=0.05)

    started.wants_pid = True  # type: ignore[attr-defined]
    try:
        return proc.run(argv, check=False, own_session=True, timeout=limit, kill_group=True, env=env, umask=umask,
                        on_start=started, pass_fds=pass_fds, join_cgroups=join_cgroups)  # fmt: skip
    except proc.CommandError:
        _keep_log(own_log, log)
        raise CriuError(what, log, [f"CRIU did not finish within {limit:g}s (ZAP_CRIU_TIMEOUT) and was killed"]) from None


def pre_dump(init_pid: int, images: Path, log: Path) -> float:
    """Copy the tree's memory into images while it runs (CRIU stops it only to collect its
    pages, then writes them out with the tree running) and start tracking the pages it writes
    from now on, for an incremental dump (incremental.py); returns the wall time in ms."""
    argv = ["nsenter", "-t", str(init_pid), "-m", "-n", "--",
            criu_binary(), "pre-dump", "-t", str(init_pid), "-D", through_host_root(images), "-o", "pre-dump.log",
            "--track-mem"]  # fmt: skip
    images.mkdir(mode=0o700, parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = _run_bounded(argv, "CRIU pre-dump failed", images / "pre-dump.log", log, umask=0o077)
    if res.returncode != 0:
        _keep_log(images / "pre-dump.log", log)
        raise CriuError("CRIU could not pre-dump the pod", log, log_errors(log) or [f"exit {res.returncode}"])
    return (time.perf_counter() - t0) * 1000


def dump(init_pid: int, images: Path, hook: Path, log: Path, *, leave_stopped: bool,
         ghost_limit: int = DEFAULT_GHOST_LIMIT, network_lock: bool = True, parent: str | None = None,
         view_root: str | None = None) -> float:  # fmt: skip
    """Dump the tree rooted at init_pid into images; returns the wall time in ms.

    CRIU runs inside the pod's mount and network namespaces, so it does not try to dump those
    (the files are covered by the snapshot instead, and the network namespace outlives the
    processes); pid, ipc and uts namespaces are dumped, and so is every socket. With parent (a
    pre-dump's directory, relative to images), only the pages written since it are dumped.
    view_root: where the processes have their root (paths in errors are given as they see them).
    """
    attempt = 0
    while True:
        attempt += 1
        argv = [
            "nsenter", "-t", str(init_pid), "-m", "-n", "--",
            criu_binary(), "dump", "-t", str(init_pid), "-D", through_host_root(images), "-o", "dump.log",
            "--leave-stopped" if leave_stopped else "--leave-running", "--file-locks", "--link-remap",
            "--action-script", through_host_root(hook), *net_opts(network_lock), "--ghost-limit", str(ghost_limit),
            *(["--prev-images-dir", parent, "--track-mem"] if parent else []),
        ]  # fmt: skip
        images.mkdir(mode=0o700, parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # Its own session: a Ctrl-C at the terminal must not kill CRIU while its parasite code
        # runs inside the pod (zap defers the interrupt until CRIU is done, see signals.py).
        # Images 0600 (umask): they are the pod's memory.
        res = _run_bounded(argv, "CRIU dump failed", images / "dump.log", log, umask=0o077)
        ms = (time.perf_counter() - t0) * 1000
        if res.returncode == 0:
            return ms
        _keep_log(images / "dump.log", log)
        err = CriuError("CRIU refused to dump the pod", log, log_errors(log), view_root, ghost_limit)
        if not err.lines:
            err = CriuError("CRIU dump failed", None, [proc.CommandError(argv, res.returncode, res.stderr).reason()])
        if not network_lock and any("ptables" in ln for ln in err.lines):
            # A connection opened between our look and the freeze met CRIU's default lock
            # (iptables, often absent): dump again with ours.
            network_lock = True
        elif not err.transient or attempt > RETRIES:
            raise err
        if parent:
            # The failed run may have reset the dirty bits after reading them: the pre-dump is
            # no longer a sound base, so the retry dumps every page.
            parent = None
            (images / "parent").unlink(missing_ok=True)
        time.sleep(0.05 * attempt)


def restore(images: Path, pidfile: Path, prepare: list[str], proc_mount: str, netns: str | None, log: Path,
            limit: float | None = None, inherit: dict[int, int] | None = None,
            join_cgroups: list[str] | None = None, leave_stopped: bool = False,
            extra: tuple[str, ...] = (), watch=None) -> int:  # fmt: skip
    """Restore the tree detached, in a fresh mount namespace made like the pod's own, inside
    the network namespace `netns` (None: the host's); returns the host pid of the restored init.
    prepare: the command that makes the pod's mounts there and then execs what follows it (the
    caller's: pod/mounts.py knows the pod's mounts; CRIU is run after it). The pod's own /proc
    (at proc_mount) is mounted again, from inside its new pid namespace, before its processes
    come back. inherit: {our descriptor: inode} of pipes the
    images hold whose other end is outside the tree (the console), joined to ours instead.
    join_cgroups: the pod's control groups (system/cgroups.py), which CRIU runs in: it is told
    to leave groups alone, so the tasks it forks stay in them (and with no limits, in ours).
    leave_stopped: the tasks are left stopped (SIGSTOP) for the caller to finish and resume."""
    criu = [criu_binary(), "restore", "-d", "-D", through_host_root(images), "-o", "restore.log",
            "--file-locks", "--pidfile", through_host_root(pidfile), "--manage-cgroups=ignore", *NET_OPTS,
            *(["--leave-stopped"] if leave_stopped else []), *extra]  # fmt: skip
    for fd, inode in (inherit or {}).items():
        criu += ["--inherit-fd", f"fd[{fd}]:pipe:[{inode}]"]
    hook = images.parent / "restore-hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        '[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0\n'
        f"{faults.stall()}"
        f'exec nsenter -t "$CRTOOLS_INIT_PID" -p -- mount -t proc -o nosuid,nodev,noexec proc {shlex.quote(proc_mount)}\n'
    )
    hook.chmod(0o700)
    criu += ["--action-script", through_host_root(hook)]
    enter = ["nsenter", f"--net={netns}", "--"] if netns else []
    # slave: the pod's namespace follows the host's unmounts (pod/mounts.py), its own mounts stay its own
    argv = [*enter, "unshare", "--mount", "--propagation", "slave", "--", *prepare, *criu]
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
    res = _run_bounded(argv, "CRIU restore failed", images / "restore.log", log, env, limit, pass_fds=tuple(inherit or ()),
                       join_cgroups=join_cgroups or [], watch=watch)  # fmt: skip
    if res.returncode != 0:
        _keep_log(images / "restore.log", log)
        lines = log_errors(log) or [proc.CommandError(argv, res.returncode, res.stderr).reason()]
        raise CriuError("CRIU could not restore the pod", log, lines)
    return int(pidfile.read_text().strip())
