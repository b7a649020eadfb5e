"""`zap server [--stop]`: the state of the zap server (cli/forkserver.py says what it is and
does), or stop it."""

from __future__ import annotations

import os
import signal
import time

from zapckpt.common import wire


def register(sub) -> None:
    p = sub.add_parser("server", help="the zap server that runs commands without Python's start-up cost: "
                       "its state, or --stop it (ZAP_SERVER=0 runs commands without it)")  # fmt: skip
    p.add_argument("--stop", action="store_true", help="end it (the next command starts it again)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_server)


def cmd_server(args) -> int:
    from . import forkserver
    from .output import emit_json

    k = wire.key()
    pid = forkserver.running_pid(k)
    if args.stop and pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(500):
            if forkserver.running_pid(k) is None:
                break
            time.sleep(0.01)
    doc = {"running": bool(pid) and not args.stop, "pid": pid if not args.stop else None,
           "socket": wire.socket_path(k), "idle_exit_s": forkserver.IDLE_S}  # fmt: skip
    if args.json:
        emit_json(doc)
    elif args.stop:
        print(f"stopped the zap server (pid {pid})" if pid else "no zap server was running")
    else:
        print(f"zap server: {'running, pid ' + str(pid) if pid else 'not running'} ({doc['socket']}; it ends "
              f"after {forkserver.IDLE_S:g} s without work)")  # fmt: skip
    return 0
