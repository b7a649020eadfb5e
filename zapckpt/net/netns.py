"""Working inside a pod's network namespace from zap's own process, and the namespace's own
settings (the net.* sysctls), which CRIU does not dump when the namespace is not its to dump.

A pod may change its namespace's settings: a program that opens ICMP sockets sets
net.ipv4.ping_group_range, a server raises net.core.somaxconn. A restore in place keeps the
namespace, but a branch (a new namespace), a restore after a reboot (the namespace made again)
or an import would bring the processes back without them, and CRIU fails ("Can't create inet
socket: Permission denied") or the program behaves otherwise. So each checkpoint keeps them
(SETTINGS in its image set), and a restore or branch sets them first."""

from __future__ import annotations

import ctypes
import json
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

CLONE_NEWNET = 0x40000000
SETTINGS = "zap-net.json"  # in an image set: {"sysctl": {"net/ipv4/ping_group_range": "0\t0", ...}}
# The namespace-wide settings (about 200 files, ~4 ms to read); not those of interfaces
# (conf/, neigh/: a branch's interfaces are its own) nor netfilter's.
_DIRS = ("core", "ipv4", "ipv6", "unix")

T = TypeVar("T")


def inside(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() run in the network namespace at path netns (None: ours). setns(CLONE_NEWNET) moves
    only the calling thread: a thread of its own runs fn there, and then ends."""
    if netns is None:
        return fn()
    result: dict = {}

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result["ok"] = fn()
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=run, name="netns")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["ok"]


def _read_all() -> dict[str, str]:
    out = {}
    for d in _DIRS:
        try:
            entries = list(os.scandir(f"/proc/sys/net/{d}"))
        except OSError:
            continue
        for e in entries:
            if e.is_dir():
                continue
            try:
                fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # write-only (a flush)
            try:
                out[f"{d}/{e.name}"] = os.read(fd, 4096).decode(errors="replace").strip()
            except OSError:
                pass
            finally:
                os.close(fd)
    return out


def read_settings(netns: str | None) -> dict[str, str]:
    return inside(netns, _read_all)


def apply_settings(netns: str | None, wanted: dict[str, str]) -> list[str]:
    """Set, in the namespace, the settings that differ from wanted; returns those it could not
    set (the kernel refuses some in a namespace other than the first)."""

    def run() -> list[str]:
        have = _read_all()
        failed = []
        for key, value in wanted.items():
            if have.get(key, value) == value or "/" not in key or ".." in key.split("/"):
                continue
            try:
                with open(Path("/proc/sys/net") / key, "w") as f:
                    f.write(value)
            except OSError:
                failed.append(key)
        return failed

    return inside(netns, run)


def save(images: Path, netns: str | None) -> None:
    """Keep the namespace's settings with a dumped image set (read back by load)."""
    (images / SETTINGS).write_text(json.dumps({"sysctl": read_settings(netns)}))


def load(images: Path) -> dict[str, str]:
    try:
        doc = json.loads((images / SETTINGS).read_text())
    except (OSError, ValueError):
        return {}  # image sets from before: nothing kept
    values = doc.get("sysctl") if isinstance(doc, dict) else None
    return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(values, dict) else {}
