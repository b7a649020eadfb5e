"""Test hook: ZAP_FAULT=<point> makes zap kill itself (SIGKILL) when it reaches that point, to
prove that recovery (recovery.py) handles a death there (tests/test_crash.py); ZAP_FAULT=
hook-stall makes the action scripts CRIU runs inside its work hang (stall()), so that a CRIU
timeout can be tested without guessing how long CRIU takes. Unset in use."""

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
