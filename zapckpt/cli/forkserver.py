"""The zap server: zap's modules imported once, a process forked for each command (zapckpt/client.py
sends them), so that a command costs its own work, not Python's and SQLAlchemy's start-up.

One per interpreter and version of the code (wire.key()), listening on a Unix socket in
/run/zapckpt (root's alone, 0700; only root's connections are served). For each connection it
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

    catalog.Catalog, catalog.Pod  # noqa: B018 - the engine and the models


def serve(k: str) -> int:
    os.chdir("/")  # a server must pin no directory (a mount someone will unmount)
    os.makedirs(wire.RUN_DIR, mode=0o700, exist_ok=True)
    os.chmod(wire.RUN_DIR, 0o700)
    lock = os.open(os.path.join(wire.RUN_DIR, f"server-{k}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one was started at the same moment
    _preload()
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
    try:
        while not stop:
            if not workers and time.monotonic() - last >= IDLE_S:
                break
            timeout = None if workers else IDLE_S - (time.monotonic() - last)
            try:
                ready, _, _ = select.select([listener, wake_r], [], [], max(timeout, 0.0) if timeout is not None else None)
            except InterruptedError:
                ready = []
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
                    pid = _start_worker(conn, [listener, wake_r, wake_w, lock, *workers.values()])
                    if pid:
                        workers[pid] = conn
                    else:
                        conn.close()
            if _reap(workers):
                last = time.monotonic()
    finally:
        try:
            if pidfile(k).read_text() == str(os.getpid()):
                os.unlink(path)
                pidfile(k).unlink()
        except OSError:
            pass
    return 0


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
        reply = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.waitstatus_to_exitcode(status)}
        try:
            wire.send_msg(conn, reply)
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
    if len(data) < 4:
        return None
    n = struct.unpack(">I", data[:4])[0]
    body = data[4:]
    while len(body) < n:
        more = conn.recv(n - len(body))
        if not more:
            return None
        body += more
    import json

    return json.loads(body), list(fds)


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
        else:
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

    return main(req["argv"])


def _watch_client(conn: socket.socket) -> None:
    """Signals the client passes on are ours; the client gone (killed) ends us as it would have
    ended a command it ran itself."""
    while True:
        try:
            msg = wire.recv_msg(conn)
        except (OSError, ValueError):
            msg = None
        if msg is None:
            os.kill(os.getpid(), signal.SIGKILL)
            return
        sig = msg.get("signal")
        if isinstance(sig, int) and 0 < sig < 65:
            os.kill(os.getpid(), sig)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
