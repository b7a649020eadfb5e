"""Argument types that refuse what a command cannot mean: NaN, infinities, negatives, numbers
too large to be a duration or a count, and non-ASCII digits."""

from __future__ import annotations

import argparse
import math
import re


def seconds(text: str) -> float:
    try:
        v = float(text) if re.fullmatch(r"[0-9]*\.?[0-9]+(e[+-]?[0-9]+)?", text.strip(), re.ASCII | re.I) else math.nan
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and 0 <= v <= 86400 * 365):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 to one year)")
    return v


def count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text.strip(), re.ASCII):
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 to 999999999)")
    return int(text)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """10s, 2m, 1.5h, 1d, 500ms, or a plain number of seconds."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(ms|s|m|h|d)?", text.strip(), re.ASCII)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 10s, 2m, 1h)")
    v = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not (math.isfinite(v) and 0 < v <= 86400 * 365):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than 0 and at most a year")
    return v


def interval(text: str) -> float:
    """`zap watch --every`: a duration of at least a second."""
    v = duration(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be at least 1s (and at most a year)")
    return v


def signal_name(text: str):
    """KILL, SIGTERM, hup, or a number: the signal it names."""
    import signal

    t = text.strip().upper()
    try:
        if re.fullmatch(r"[0-9]{1,2}", t, re.ASCII):
            return signal.Signals(int(t))
        return signal.Signals[t if t.startswith("SIG") else "SIG" + t]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a signal (a name like TERM or KILL, or a number)") from None


def since(text: str) -> str:
    """A time or a duration ago (`zap logs --since`): the log record time to start from."""
    from zapckpt.pod.console import parse_since

    try:
        return parse_since(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def number_range(text: str) -> list[int]:
    """N, or N-M (N <= M, at most 100,000 numbers): the numbers it names."""
    m = re.fullmatch(r"([0-9]{1,9})(?:-([0-9]{1,9}))?", text.strip(), re.ASCII)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (1, 0)
    if not (m and 1 <= lo <= hi and hi - lo < 100_000):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a range N-M (from 1, N <= M)")
    return list(range(lo, hi + 1))


def memory(text: str) -> int:
    """--memory: 64M, 1G, 512MiB or bytes; at least 6 MiB (as Docker: less cannot run a process)."""
    from zapckpt.common.sizes import parse_size

    try:
        v = parse_size(text)
    except ValueError:
        v = 0
    if not 6 << 20 <= v <= 1 << 50:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size of at least 6M (like 64M, 1G)")
    return v


def cpus(text: str) -> float:
    """--cpus: how many CPUs' worth of time, from 0.01 to the machine's CPU count (as Docker)."""
    import os

    try:
        v = float(text) if re.fullmatch(r"[0-9]*\.?[0-9]+", text.strip(), re.ASCII) else math.nan
    except ValueError:
        v = math.nan
    n = os.cpu_count() or 1
    if not (math.isfinite(v) and 0.01 <= v <= n):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of CPUs from 0.01 to {n} (this machine's)")
    return v
