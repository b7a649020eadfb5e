"""The `zap` command as it starts (where zapckpt/client.c is not built; it does the same in C, and
runs this when there is no server): hand the command to the zap server (cli/forkserver.py), which has
Python, SQLAlchemy and zap already imported and forks a process for it, or run it here.

Importing what a command needs costs about half a second on a small machine, more than most
commands take (a small checkpoint is ~0.1 s): so the first command starts the server in the
background, and later ones pay only this module's start-up. The command runs in a process of
its own either way, with our standard input, output and error, environment, working directory
and umask; its exit status is ours, Ctrl-C and the other signals we get are passed on, and if
we are killed it is killed too, as a command running here would be. `ZAP_SERVER=0` runs every
command here. Commands that take the terminal (`exec`, `guard`) and long-lived servers of
their own (`mount --foreground`, `watch-serve`) always run here.

This module imports nothing of zap until it must run the command itself."""

from __future__ import annotations

import os
import signal
import socket
import sys

from zapckpt.common import wire
from zapckpt.common.wire import RUN_DIR, key, socket_path

# Not through the server: they use the terminal as a terminal (job control, window size), or
# are servers themselves.
HERE = {"exec", "guard", "mount", "watch-serve", "server"}


def _served(argv: list[str]) -> bool:
    if os.environ.get("ZAP_SERVER", "1") == "0" or os.geteuid() != 0:
        return False
    try:
        for fd in (0, 1, 2):  # each is handed over: a closed one stays closed here, with us
            os.fstat(fd)
    except OSError:
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    return command not in HERE


def _start_server(k: str) -> None:
    """In the background, for the commands after this one (it refuses to run twice)."""
    import subprocess

    try:
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        env = {k2: v for k2, v in os.environ.items() if k2 in ("PATH", "LANG", "LC_ALL")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        with open(os.path.join(RUN_DIR, f"server-{k}.log"), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "zapckpt.cli.forkserver", k], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=log, env=env, start_new_session=True, close_fds=True, cwd="/")  # fmt: skip
    except OSError:
        pass  # no server: every command runs in its own process, as before


def _here(argv: list[str]) -> int:
    from zapckpt.cli import main as cli_main

    return cli_main(argv)


def _through(sock: socket.socket, argv: list[str]) -> int:
    umask = os.umask(0)
    os.umask(umask)
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                 signal.SIGWINCH)  # fmt: skip

    def forward(sig, _frame) -> None:
        try:
            wire.send_signal(sock, int(sig))
        except OSError:
            pass

    for sig in forwarded:
        signal.signal(sig, forward)
    wire.send_request(sock, argv, dict(os.environ), os.getcwd(), umask)
    reply = wire.recv_reply(sock)
    if reply is None:
        print("zap: error: the zap server ended before the command did (`ZAP_SERVER=0 zap ...` runs it "
              "without one)", file=sys.stderr)  # fmt: skip
        return 1
    kind, value = reply
    if kind == wire.SIGNAL:  # it was killed: so are we, by the same signal
        if value not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(value, signal.SIG_DFL)
        os.kill(os.getpid(), value)
        return 128 + value
    return value


def main() -> int:
    argv = sys.argv[1:]
    if not _served(argv):
        return _here(argv)
    k = key()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_path(k))
    except OSError:
        sock.close()
        _start_server(k)
        return _here(argv)
    with sock:
        return _through(sock, argv)


if __name__ == "__main__":
    sys.exit(main())
