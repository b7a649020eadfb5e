"""Reading /proc: is a pod's init alive, which processes share its pid namespace."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stat:
    state: str
    ppid: int
    starttime: int
    cpu: int  # clock ticks of CPU used: its own and its reaped children's (user + system)


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2 :].split()
    return Stat(state=rest[0], ppid=int(rest[1]), starttime=int(rest[19]), cpu=sum(map(int, rest[11:15])))


def starttime(pid: int) -> int | None:
    st = read_stat(pid)
    return st.starttime if st else None


def is_alive(pid: int | None, start: int | None) -> bool:
    """True if pid runs and is the same process as when we recorded its start time."""
    if not pid:
        return False
    st = read_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return start is None or st.starttime == start


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids_naming(needle: bytes) -> list[int]:
    """Processes (other than this one) whose command line contains needle."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def pids_in_pidns(init_pid: int) -> list[int]:
    """Host pids of every live process in init_pid's pid namespace (init first)."""
    ns = _pidns(init_pid)
    if ns is None:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pid = int(entry)
            if _pidns(pid) == ns:
                st = read_stat(pid)
                if st and st.state not in ("Z", "X"):
                    out.append(pid)
    out.sort(key=lambda p: (p != init_pid, p))
    return out


def any_stopped(init_pid: int) -> bool:
    """Whether a process of init_pid's pid namespace is stopped (state T)."""
    return any((st := read_stat(p)) and st.state in "Tt" for p in pids_in_pidns(init_pid))


def host_pids(init_pid: int) -> dict[int, int]:
    """{pid inside the pod: host pid} of every live process in init_pid's pid namespace."""
    out = {}
    for pid in pids_in_pidns(init_pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), None)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if nspid:
            out[int(nspid[-1])] = pid
    return out


def cpu_ticks(init_pid: int) -> int:
    """CPU time used so far by the processes of init_pid's pid namespace (and those they reaped)."""
    return sum(st.cpu for pid in pids_in_pidns(init_pid) if (st := read_stat(pid)) is not None)


def describe(pid: int) -> dict | None:
    """pid (host), pid inside the pod, command line and cwd of one process (as it sees it,
    from its own root)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:  # EIO: its arguments are in memory a lazy restore has not brought in yet
        argv = []
    try:
        with open(f"/proc/{pid}/status") as f:
            nspid = next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), [str(pid)])
        cwd, root = os.readlink(f"/proc/{pid}/cwd"), os.readlink(f"/proc/{pid}/root")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if root != "/" and (cwd + "/").startswith(root + "/"):
        cwd = cwd[len(root):] or "/"
    st = read_stat(pid)
    age = _uptime() - st.starttime / _CLK_TCK if st else 0.0
    return {"host_pid": pid, "pid": int(nspid[-1]), "cmdline": argv, "cwd": cwd, "age_s": round(max(age, 0.0), 2)}


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of pids is alive (zombies count as gone); True if they all went."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if is_alive(p, None)]
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def catches(pid: int, sig: int) -> bool:
    """Whether pid handles sig: a handler (/proc/PID/status SigCgt), or the signal blocked to be
    read from a signalfd (SigBlk: catatonit, the pods' init). The init of a pid namespace
    receives only the signals it handles: a shell as pid 1 never sees a SIGTERM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("SigCgt:", "SigBlk:")) and int(line.split()[1], 16) >> (sig - 1) & 1:
                return True
    except (OSError, ValueError):
        pass
    return False


def comm(pid: int) -> str:
    """The process's name (/proc/PID/comm), or "?" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kill_pod_tree(init_pid: int, timeout: float = 5.0) -> None:
    """SIGKILL the pod's init (the kernel then kills its whole pid namespace) and wait."""
    pids = pids_in_pidns(init_pid)
    signal_all(pids, signal.SIGKILL)
    wait_gone(pids, timeout)


def kill_tree(pid: int, level_timeout: float = 1.0) -> None:
    """SIGKILL pid and everything under it, deepest first, so that each parent is still there
    to reap its children: a process killed inside a pod must not be left as a zombie for the
    pod's init, which may never reap it (CRIU then refuses the pod)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := read_stat(int(entry))) is not None:
            children.setdefault(st.ppid, []).append(int(entry))
    levels: list[list[int]] = [[pid]]
    while levels[-1]:
        levels.append([c for p in levels[-1] for c in children.get(p, [])])
    for level in reversed(levels[:-1]):
        signal_all(level, signal.SIGKILL)
        deadline = time.monotonic() + level_timeout
        while any(os.path.exists(f"/proc/{p}") for p in level) and time.monotonic() < deadline:
            if pid in level:
                break  # the caller reaps pid itself
            time.sleep(0.01)


# Open files a checkpoint may hold outside the pod's volume without saying so: devices and
# kernel files (the pod's own /dev/shm and /dev/pts are private and inside it anyway).
_ALWAYS_INSIDE = ("/dev/", "/proc/", "/sys/")


def open_fds(pids: list[int]) -> list[tuple[int, int, str]]:
    """(pid, fd, what /proc/PID/fd/FD names) of every descriptor the processes hold."""
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for fd in fds:
            try:
                out.append((pid, int(fd), os.readlink(f"/proc/{pid}/fd/{fd}")))
            except OSError:
                continue
    return out


def outside_files(fds: list[tuple[int, int, str]], inside: list[str], root: str | None = None) -> list[dict]:
    """Of open_fds(), the regular files and directories held open outside the `inside`
    directories (as the processes see them: from their root, for processes chrooted in
    `root`): the snapshot does not have them, so a restore may not match."""
    roots = [p.rstrip("/") + "/" for p in inside]
    found = []
    for pid, fd, target in fds:
        if not target.startswith("/"):
            continue  # pipe:[..], socket:[..], anon_inode:..
        path = target.removesuffix(" (deleted)")
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        if path.startswith(_ALWAYS_INSIDE) or any((path + "/").startswith(r) for r in roots):
            continue
        found.append({"host_pid": pid, "fd": fd, "path": path})
    return found


_libc = None


def fs_type(path: str) -> int | None:
    """statfs(2)'s f_type of path (os.statvfs has none), or None if it cannot be read."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type (a long) comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value


def credentials(pid: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(real, effective, saved uid), (real, effective, saved gid) of pid."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = {k: v.split() for k, _, v in (ln.partition(":") for ln in f)}
        return tuple(map(int, lines["Uid"][:3])), tuple(map(int, lines["Gid"][:3]))
    except (OSError, KeyError, ValueError):
        return None


def has_capability(bit: int) -> bool:
    """Whether this process has capability `bit` (CAP_SYS_RESOURCE: 24) in its effective set."""
    try:
        with open("/proc/self/status") as f:
            eff = next(ln.split()[1] for ln in f if ln.startswith("CapEff:"))
        return bool(int(eff, 16) >> bit & 1)
    except (OSError, StopIteration, ValueError):
        return False


def has_tcp_connections(pid: int) -> bool:
    """Whether pid's network namespace holds a TCP socket that is not only listening (one a
    network lock would have to hold still)."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)  # the header
                if any(line.split()[3] != "0A" for line in f):  # 0A: LISTEN
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def name_processes(procs: list[dict], most: int = 3) -> str:
    """ "pid 3 (redis-server *:6379), ..." for a message."""
    names = [f"pid {p['pid']} ({' '.join(p['cmdline'])[:60] or '?'})" for p in procs]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def missing_processes(expected: list[dict], init_pid: int | None) -> list[dict]:
    """Of the processes a checkpoint recorded (by pid inside the pod), those not running in
    init_pid's pid namespace now. Short-lived helpers (under a second old at the checkpoint,
    like a shell loop's `sleep`) come and go by themselves and are not counted."""
    present = set()
    for pid in pids_in_pidns(init_pid) if init_pid else []:
        d = describe(pid)
        if d:
            present.add(d["pid"])
    return [p for p in expected if p["pid"] not in present and p.get("age_s", 1e9) >= LONG_LIVED_S]


LONG_LIVED_S = 1.0
