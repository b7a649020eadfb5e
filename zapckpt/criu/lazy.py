"""Lazy restore: CRIU restores a pod's processes without their anonymous memory, which its
lazy-pages daemon then brings in through userfaultfd, the pages a process faults on first and
every other page after, from zap's page server (pageserver.py).

The danger is a restored process running on with pages that never came: when the last holder
of a process's userfaultfd goes, the kernel gives any page still missing as zeros. So zap never
lets that happen silently:

- a keeper process (forked from zap before the daemon starts, the daemon's parent) holds
  copies of the daemon's userfaultfds (pidfd_getfd): if the daemon dies, a fault waits, it is
  not answered with zeros;
- the keeper watches zap (a pipe it alone reads, whose other end zap holds until every page is
  in): if zap dies first, the keeper kills the pod (SIGKILL to its init: the whole pid
  namespace goes), and recovery then undoes the restore;
- zap learns from the keeper how the daemon ended (exit status): anything but 0, or a page the
  server could not give (a damaged frame), and zap kills the pod itself and undoes the restore.

Where userfaultfd is missing or ZAP_LAZY=0, restores are eager as before (`zap doctor` says
which)."""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import os
import select
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zapckpt.common import proc
from zapckpt.common.errors import ZapError
from zapckpt.criu import runner as criu
from zapckpt.criu.incremental import kept_for_boot

SOCKET_NAME = "lazy-pages.socket"  # where the daemon waits for `criu restore --lazy-pages`
SYS_PIDFD_GETFD = 438
MSG = struct.Struct("=ci")  # one byte of kind, one int: R(init pid), H(uffds held), D(daemon exit status)
DONE = b"1"


@functools.cache
def userfaultfd_ok(binary: str) -> bool:
    """Whether this kernel and CRIU can restore lazily (`criu check --feature uffd-noncoop`)."""
    res = proc.run([binary, "check", "--feature", "uffd-noncoop"], check=False)
    return res.returncode == 0 and "UFFD is not supported" not in res.stdout + res.stderr


def mode(cache: Path | None = None) -> tuple[bool, str]:
    """(lazy or not, why), for restores and `zap doctor`; cache: where the answer of `criu
    check` is kept for this boot (criu/incremental.kept_for_boot)."""
    if os.environ.get("ZAP_LAZY", "1").lower() in ("0", "off", "no"):
        return False, "eager (ZAP_LAZY=0)"
    try:
        binary = criu.criu_binary()
    except ZapError:
        return False, "eager (no CRIU)"
    if not kept_for_boot(cache, "uffd_noncoop", binary, userfaultfd_ok):
        return False, "eager (no userfaultfd for CRIU here: `criu check --feature uffd-noncoop` fails)"
    return True, "lazy (memory brought in on demand through userfaultfd)"


# --- the connection between the daemon and zap's page server ---------------------------------
def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (CRIU sets TCP options on its end, so not a unix pair):
    (zap's end, the daemon's end). Nothing leaves the host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        theirs = socket.create_connection(lst.getsockname())
        ours, _ = lst.accept()
    for s in (ours, theirs):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


def userfaultfds(pid: int) -> list[int]:
    """Copies, in this process, of every userfaultfd the process pid holds (pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[userfaultfd]":
                    continue
            except OSError:
                continue
            got = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if got < 0:
                err = ctypes.get_errno()
                if err in (errno.EBADF, errno.ESRCH):
                    continue
                raise OSError(err, f"pidfd_getfd of the lazy-pages daemon's descriptor {fd}: {os.strerror(err)}")
            os.set_inheritable(got, False)
            out.append(got)
    finally:
        os.close(pidfd)
    return out


# --- the keeper -----------------------------------------------------------------------------
@dataclass
class Keeper:
    """zap's side of the keeper: the pid, the pipes, and the daemon's socket directory."""

    pid: int
    life: int  # write end: held by zap until every page is in; DONE written then
    ctl: int  # write end: R(init pid) once CRIU restored the tree
    status: int  # read end: H(uffds held), D(daemon exit status)
    images: Path

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the daemon listens for the restore."""
        deadline = time.monotonic() + timeout
        while not (self.images / SOCKET_NAME).exists():
            kind, value = self.poll(0.005)
            if kind == b"D":
                raise ZapError(f"CRIU's lazy-pages daemon ended before the restore (exit status {value}; "
                               f"log: {self.images / 'lazy-pages.log'})")  # fmt: skip
            if time.monotonic() > deadline:
                raise ZapError("CRIU's lazy-pages daemon did not start within 10s")

    def restored(self, init_pid: int, timeout: float = 10.0) -> int:
        """Tell the keeper the tree's init; returns how many userfaultfds it holds now."""
        os.write(self.ctl, MSG.pack(b"R", init_pid))
        kind, value = self.poll(timeout)
        if kind == b"H":
            return value
        if kind == b"D":
            raise ZapError(f"CRIU's lazy-pages daemon ended during the restore (exit status {value})")
        raise ZapError("the lazy restore's keeper did not answer")

    def poll(self, timeout: float | None) -> tuple[bytes | None, int]:
        """The keeper's next word (kind, value), (None, 0) after timeout, (b"", 0) if it is gone."""
        r, _, _ = select.select([self.status], [], [], timeout)
        if not r:
            return None, 0
        data = os.read(self.status, MSG.size)
        if len(data) < MSG.size:
            return b"", 0
        return MSG.unpack(data)

    def done(self) -> None:
        try:
            os.write(self.life, DONE)
        except OSError:
            pass


def start_keeper(images: Path, daemon_end: socket.socket, log_name: str = "lazy-pages.log") -> Keeper:
    """Fork the keeper; it starts CRIU's lazy-pages daemon on images (its socket there, its
    pages from the page server at the other end of daemon_end) and keeps watch (module doc)."""
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    argv = [criu.criu_binary(), "lazy-pages", "-D", criu.through_host_root(images), "-W",
            criu.through_host_root(images), "--page-server", "--ps-socket", str(daemon_end.fileno()), "-o", log_name]  # fmt: skip
    pid = os.fork()
    if pid == 0:  # the keeper
        code = 1
        try:
            gc.disable()  # zap's objects stay as they are here: none is finalised, no fd closed twice
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            _close_all_but({0, 1, 2, life_r, ctl_r, status_w, daemon_end.fileno()})
            os.setsid()  # a Ctrl-C at zap's terminal is zap's, not the keeper's
            code = _keep(argv, daemon_end, life_r, ctl_r, status_w)
        finally:
            os._exit(code)
    daemon_end.close()
    for fd in (life_r, ctl_r, status_w):
        os.close(fd)
    return Keeper(pid, life_w, ctl_w, status_r, images)


def _close_all_but(keep: set[int]) -> None:
    """Nothing of zap's but what the keeper needs: no lock, catalog connection or client of zap's
    held on by it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _keep(argv: list[str], daemon_end: socket.socket, life: int, ctl: int, status: int) -> int:
    daemon = subprocess.Popen(argv, pass_fds=(daemon_end.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    daemon_end.close()
    dfd = os.pidfd_open(daemon.pid)
    held: list[int] = []
    init_fd = -1
    daemon_alive = True
    poller = select.poll()
    for fd in (life, ctl, dfd):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ev in poller.poll():
            if fd == dfd and daemon_alive:
                daemon_alive = False
                poller.unregister(dfd)
                rc = daemon.wait()
                _say(status, b"D", rc if rc >= 0 else 128 - rc)
            elif fd == ctl:
                data = os.read(ctl, MSG.size)
                if len(data) < MSG.size:
                    poller.unregister(ctl)
                    continue
                _kind, init_pid = MSG.unpack(data)
                try:
                    init_fd = os.pidfd_open(init_pid)
                    held += userfaultfds(daemon.pid) if daemon_alive else []
                    _say(status, b"H", len(held))
                except OSError:
                    _say(status, b"H", -1)
            elif fd == life:
                word = os.read(life, 1)
                if word == DONE:
                    return 0
                # zap is gone before every page came: no process of the pod may run on.
                if init_fd >= 0:
                    try:
                        signal.pidfd_send_signal(init_fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if daemon_alive:
                    daemon.kill()
                    daemon.wait()
                return 0


def _say(fd: int, kind: bytes, value: int) -> None:
    try:
        os.write(fd, MSG.pack(kind, value))
    except OSError:
        pass  # zap is gone: the life pipe tells the rest
