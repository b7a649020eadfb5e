"""Test hook: ZAP_FAULT=<point> makes zap kill itself (SIGKILL) when it reaches that point, to
prove that recovery (recovery.py) handles a death there (tests/test_crash.py). Unset in use."""

from __future__ import annotations

import os
import time

def point(name: str, delay: float = 0) -> None:
    """delay: let a child just started (CRIU) get into its work first. (The variable is read
    at each point, not once: a command forked by the zap server has its own environment.)"""
    if os.environ.get("ZAP_FAULT") == name:
        time.sleep(delay)
        os.kill(os.getpid(), 9)
