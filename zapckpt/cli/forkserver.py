"""The zap server: zap's modules imported once, a process forked for each command (the `zap`
command, zapckpt/client.c or client.py, sends them), so that a command costs its own work, not
Python's and SQLAlchemy's start-up.

One per checkout and virtualenv (wire.key()), listening on a Unix socket in /run/zapckpt
(root's alone, 0700; only root's connections are served). It runs the source files it started
with: when one of them changes (inotify), it stops taking commands and ends once the running
ones are done, and the next command starts a new server. For each connection it
forks a worker, which takes the client's standard input, output and error, environment,
working directory and umask, runs the command as `zap` would (cli.main), and exits with its
status; the server sends the client that status (or the signal the worker died of). A worker
reads the connection for the signals the client passes on, and kills itself with SIGKILL if
the client goes away, as a command does when its terminal's `zap` is killed. The server ends
after IDLE_S seconds without work (`zap server --stop` ends it now).

Nothing is done in the server itself but accepting and forking: no catalog opened, no thread
started, so that a fork is a clean copy."""

from __future__ import annotations

import atexit
import fcntl
import gc
import io
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from zapckpt.common import wire

IDLE_S = float(os.environ.get("ZAP_SERVER_IDLE", "600"))


def pidfile(k: str) -> Path:
    return Path(wire.RUN_DIR) / f"server-{k}.pid"


def running_pid(k: str) -> int | None:
    try:
        pid = int(pidfile(k).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# --- the server --------------------------------------------------------------------------------


def _preload() -> None:
    """Import what the commands use, as they would import it themselves (cli/lazy.py)."""
    from importlib import import_module

    import zapckpt.cli as cli
    from zapckpt.cli.lazy import LazyModule

    cli.parser()  # made once, used by every command
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("zapckpt.cli"):
            for v in list(vars(mod).values()):
                if isinstance(v, LazyModule):
                    try:
                        import_module(v._name)
                    except ImportError:
                        pass
    import catalog
    from sqlalchemy import create_engine
    from sqlalchemy.orm import configure_mappers

    catalog.Catalog, catalog.Pod  # noqa: B018 - the engine and the models
    configure_mappers()  # ~20 ms a command otherwise: every worker's first query did it
    create_engine("sqlite://").dispose()  # the dialect's own imports (no file, no connection kept)


def serve(k: str) -> int:
    os.chdir("/")  # a server must pin no directory (a mount someone will unmount)
    os.makedirs(wire.RUN_DIR, mode=0o700, exist_ok=True)
    os.chmod(wire.RUN_DIR, 0o700)
    lock = os.open(os.path.join(wire.RUN_DIR, f"server-{k}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one was started at the same moment
    before = wire.fingerprint()
    _preload()
    changes = _watch_sources()
    if wire.fingerprint() != before:
        return 0  # changed while we imported it: the next command starts a server of the new code
    path = wire.socket_path(k)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    listener.bind(path)
    os.umask(old)
    listener.listen(64)
    pidfile(k).write_text(str(os.getpid()))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    stop: list[int] = []
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.append(1))
    gc.freeze()  # what is imported now is shared by every worker, untouched by its collector
    workers: dict[int, socket.socket] = {}
    last = time.monotonic()
    retiring = False  # our source files changed: no more commands, and end when the last is done
    try:
        while not stop:
            if not workers and (retiring or time.monotonic() - last >= IDLE_S):
                break
            timeout = None if workers else IDLE_S - (time.monotonic() - last)
            watched = [wake_r, *([] if retiring else [listener]), *([changes] if changes >= 0 and not retiring else [])]
            try:
                ready, _, _ = select.select(watched, [], [], max(timeout, 0.0) if timeout is not None else None)
            except InterruptedError:
                ready = []
            if changes in ready and _source_changed(changes):
                retiring = True
                Path(path).unlink(missing_ok=True)
                listener.close()
                os.close(lock)  # a server of the new code may start now
                lock = -1
                continue
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if listener in ready:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    conn = None
                if conn is not None:
                    pid = _start_worker(conn, [listener, wake_r, wake_w, lock, changes, *workers.values()])
                    if pid:
                        workers[pid] = conn
                    else:
                        conn.close()
            if _reap(workers):
                last = time.monotonic()
    finally:
        try:
            if pidfile(k).read_text() == str(os.getpid()):  # not a newer server's by now
                Path(path).unlink(missing_ok=True)
                pidfile(k).unlink(missing_ok=True)
            log = Path(wire.RUN_DIR) / f"server-{k}.log"
            if log.exists() and log.stat().st_size == 0:
                log.unlink()
        except OSError:
            pass
    return 0


IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x4, 0x40, 0x80, 0x100, 0x200


def _watch_sources() -> int:
    """An inotify descriptor that becomes readable when a source file of the code changes (-1
    where inotify is missing: then a server runs until it is idle, as before)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return -1
    mask = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    for pkg in wire.CODE:
        for d, dirs, _files in os.walk(os.path.join(wire.root(), pkg)):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            libc.inotify_add_watch(fd, os.fsencode(d), mask)
    return fd


def _source_changed(fd: int) -> bool:
    """Whether the inotify events waiting on fd name a source file (not a byte-code cache)."""
    changed = False
    try:
        while data := os.read(fd, 65536):
            i = 0
            while i + 16 <= len(data):
                _wd, _mask, _cookie, n = struct.unpack_from("iIII", data, i)
                name = data[i + 16 : i + 16 + n].split(b"\0", 1)[0]
                changed |= name.endswith(b".py")
                i += 16 + n
    except BlockingIOError:
        pass
    return changed


def _reap(workers: dict[int, socket.socket]) -> bool:
    """Tell the clients of the workers that ended how they ended; True if any did."""
    ended = False
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended = True
        conn = workers.pop(pid, None)
        if conn is None:
            continue
        kind, value = (wire.SIGNAL, os.WTERMSIG(status)) if os.WIFSIGNALED(status) else \
            (wire.EXIT, os.waitstatus_to_exitcode(status))  # fmt: skip
        try:
            wire.send_reply(conn, kind, value)
        except OSError:
            pass
        conn.close()
    return ended


def _request(conn: socket.socket) -> tuple[dict, list[int]] | None:
    """The client's request and the descriptors that came with it (its stdin, stdout, stderr)."""
    import array

    fds = array.array("i")
    data, anc, _flags, _ = conn.recvmsg(1 << 16, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    head = wire.recv_exactly(conn, 4, data[:4]) if len(data) < 4 else data[:4]
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    body = wire.recv_exactly(conn, n, data[4:]) if n < (1 << 24) else None
    req = wire.parse_request(body) if body is not None else None
    if req is None:
        for fd in fds:
            os.close(fd)
        return None
    return req, list(fds)


def _start_worker(conn: socket.socket, server_fds: list) -> int | None:
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    if uid != 0:
        return None  # zap is root's (the directory of the socket lets nobody else near it anyway)
    try:
        got = _request(conn)
    except (OSError, ValueError):
        return None
    if got is None:
        return None
    req, fds = got
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    # --- the worker: never returns into the server's loop
    code = 1
    try:
        code = _work(conn, req, fds, server_fds)
    except SystemExit as e:  # `--help` and `--version`: argparse exits, as Python would
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - whatever happens, the worker must not go on as the server
        import traceback

        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code & 0xFF)


def _work(conn: socket.socket, req: dict, fds: list[int], server_fds) -> int:
    for fd in server_fds:
        if isinstance(fd, socket.socket):
            fd.close()
        elif fd >= 0:
            os.close(fd)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    gc.unfreeze()
    os.setsid()  # a session of its own, as the server's children are
    for i, fd in enumerate(fds):
        os.dup2(fd, i, inheritable=True)
        os.close(fd)
    # Python's own streams, made again on the client's descriptors (as at a start-up)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
                                 errors="surrogateescape")  # fmt: skip
    for n, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(n, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace" if n == 2 else "strict",
                                  line_buffering=os.isatty(n) or n == 2, write_through=n == 2)  # fmt: skip
        setattr(sys, name, stream)
    os.environ.clear()
    os.environ.update(req["env"])
    os.umask(int(req.get("umask", 0o022)))
    try:
        os.chdir(req["cwd"])
    except OSError:
        os.chdir("/")
    sys.argv = ["zap", *req["argv"]]
    threading.Thread(target=_watch_client, args=(conn,), name="client", daemon=True).start()
    from zapckpt.cli import main
    from zapckpt.system import detach

    detach.forget_on_detach(conn.fileno())  # a command that goes on in the background lets the client go

    return main(req["argv"])


def _watch_client(conn: socket.socket) -> None:
    """Signals the client passes on are ours; the client gone (killed) ends us as it would have
    ended a command it ran itself."""
    while True:
        try:
            sig = wire.recv_signal(conn)
        except OSError:
            sig = None
        if sig is None:
            os.kill(os.getpid(), signal.SIGKILL)
            return
        if 0 < sig < 65:
            os.kill(os.getpid(), sig)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
