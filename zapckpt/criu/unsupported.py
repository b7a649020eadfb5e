"""What CRIU cannot checkpoint, found before the freeze and refused in words that say what it
means and what to do, instead of CRIU's own text after a frozen window:

- io_uring ("Unknown shit 600 (anon_inode:[io_uring])");
- POSIX message queues ("Can't lookup mount=N for fd=M path=/q");
- a terminal from outside the pod (`zap exec -it` relays one in): CRIU would dump it, and the
  restored shell would lose it at once;
- a process running as another user than root where zap lacks CAP_SYS_RESOURCE: CRIU must read
  its resource limits ("Can't get rlimit 0: Operation not permitted").
"""

from __future__ import annotations

import os
import pwd
import stat

from zapckpt.common.errors import ZapError
from zapckpt.system import procinfo

MQUEUE_MAGIC = 0x19800202
CAP_SYS_RESOURCE = 24
# Character devices that are terminals: virtual consoles and serial lines (4), /dev/tty,
# /dev/console and /dev/ptmx (5), pty slaves (136-143).
_TTY_MAJORS = {4, 5, *range(136, 144)}


def _who(proc: dict) -> str:
    cmd = " ".join(proc.get("cmdline") or [])[:60] or "?"
    return f"process {proc['pid']} ({cmd})"


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check(processes: list[dict], fds: list[tuple[int, int, str]], init_pid: int) -> None:
    """Raise ZapError naming the first process of the pod that CRIU could not dump (processes:
    procinfo.describe() of each; fds: procinfo.open_fds() of the same)."""
    by_host = {p["host_pid"]: p for p in processes}
    try:
        own_pts = os.stat(f"/proc/{init_pid}/root/dev/pts/ptmx").st_dev
    except OSError:
        own_pts = None
    for pid, fd, target in fds:
        proc = by_host.get(pid)
        if proc is None:
            continue  # started after we listed the processes: CRIU speaks for it
        if target == "anon_inode:[io_uring]":
            raise ZapError(f"{_who(proc)} uses io_uring, which CRIU cannot checkpoint: run it without (MariaDB: "
                           f"--innodb-use-native-aio=0; programs on liburing often have a switch); nothing was frozen")  # fmt: skip
        if target.startswith("/"):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _TTY_MAJORS and st.st_dev != own_pts:
                raise ZapError(f"{_who(proc)} holds a terminal from outside the pod ({target}, descriptor {fd}; "
                               f"`zap exec -it` gives its shell one): CRIU cannot checkpoint it; end that session "
                               f"first, and start daemons with `zap exec -d`")  # fmt: skip
            if stat.S_ISREG(st.st_mode) and target.count("/") == 1 and \
                    procinfo.fs_type(f"/proc/{pid}/fd/{fd}") == MQUEUE_MAGIC:  # fmt: skip
                raise ZapError(f"{_who(proc)} has the POSIX message queue {target} open, and CRIU cannot "
                               f"checkpoint message queues: the pod cannot be checkpointed while it does")  # fmt: skip
    if procinfo.has_capability(CAP_SYS_RESOURCE):
        return
    for proc in processes:
        cred = procinfo.credentials(proc["host_pid"])
        if cred is None or all(i == 0 for ids in cred for i in ids):
            continue
        who = _user(cred[0][1]) if any(cred[0]) else f"group {cred[1][1]}"
        raise ZapError(f"{_who(proc)} runs as {who}: CRIU must read its resource limits, which "
                       f"needs CAP_SYS_RESOURCE, and zap runs without it here (a container that drops it?): give "
                       f"zap CAP_SYS_RESOURCE, or run that service as root")  # fmt: skip
