"""Test hook: ZAP_FAULT=<point> makes zap kill itself (SIGKILL) when it reaches that point, to
prove that recovery (recovery.py) handles a death there (tests/test_crash.py); ZAP_FAULT=
hook-stall makes the action scripts CRIU runs inside its work hang (stall()), so that a CRIU
timeout can be tested without guessing how long CRIU takes; ZAP_FAULT=wait@<point> makes zap
stop there until the test has done something (cut the link to the store or the catalog): it
creates $ZAP_FAULT_DIR/<point>.reached and waits for <point>.go. Unset in use."""

from __future__ import annotations

import os
import time

def active(name: str) -> bool:
    return os.environ.get("ZAP_FAULT") == name


def stall() -> str:
    """A line for an action script: with ZAP_FAULT=hook-stall, it hangs there."""
    return "sleep 3600\n" if active("hook-stall") else ""


def point(name: str, delay: float = 0) -> None:
    """ZAP_FAULT=NAME: SIGKILL here; ZAP_FAULT=sigint@NAME: a Ctrl-C here (SIGINT to ourselves),
    and go on. delay: let a child just started (CRIU) get into its work first. (The variable is
    read at each point, not once: a command forked by the zap server has its own environment.)"""
    fault = os.environ.get("ZAP_FAULT")
    if fault == name:
        time.sleep(delay)
        os.kill(os.getpid(), 9)
    elif fault == f"sigint@{name}":
        time.sleep(delay)
        os.kill(os.getpid(), 2)
    elif fault == f"wait@{name}":
        where = os.environ.get("ZAP_FAULT_DIR", "/tmp")
        open(os.path.join(where, f"{name}.reached"), "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(where, f"{name}.go")) and time.monotonic() < deadline:
            time.sleep(0.02)
