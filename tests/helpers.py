"""What the tests share besides fixtures: where things are, waiting, reading a counter pod's
output, and looking into a state directory's store and catalog."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `zap` as a user runs it: the C client make install builds (zapckpt/client.c; the Python one,
# zapckpt/client.py, where it is not built), through the zap server once it runs
_CLIENT = ROOT / ".venv" / "libexec" / "zap"
ZAP_CMD = [str(_CLIENT)] if _CLIENT.exists() else [sys.executable, "-m", "zapckpt"]
# Pods without --rootfs have a /tmp of their own, and this checkout may live in the host's /tmp
# (CI clones there): the programs the pods run are copied for the session to where pods see them.
WORKLOADS = Path(f"/run/zaptest-{os.getpid()}") / "workloads"
COUNTER = WORKLOADS / "counter.py"


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def counter_values(volume: Path, name: str = "counter.txt") -> list[int]:
    """The numbers a counting workload has written to volume/name, complete lines only."""
    try:
        data = (volume / name).read_bytes()
    except FileNotFoundError:
        return []
    return [int(x) for x in data[: data.rfind(b"\n") + 1].split()]  # complete lines only


def counted_past(volume: Path, n: int, what: str, name: str = "counter.txt", timeout: float = 20.0) -> list[int]:
    """Wait until a counting workload has written more than n values to volume/name; returns
    them (the wait that almost every restore and branch test makes)."""
    return wait_for(lambda: (v := counter_values(volume, name)) and len(v) > n and v, timeout, what)


def assert_continuous(values: list[int], start: int = 1) -> None:
    assert values, "no values"
    assert values[0] == start, f"starts at {values[0]}, not {start}"
    for a, b in zip(values, values[1:]):
        assert b == a + 1, f"discontinuity: {a} followed by {b}"


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return data[data.rindex(")") + 2]


def pack_files(zap) -> list[Path]:
    """The image store's pack files of a test's state directory."""
    d = zap.home / "store" / "packs"
    return sorted(d.iterdir()) if d.is_dir() else []


def catalog_db(zap) -> sqlite3.Connection:
    """The test's catalog as raw SQLite: for damaging it on purpose (close it after)."""
    return sqlite3.connect(zap.home / "catalog.db")


def store_index(zap, what):
    """what(ChunkIndex) on the test's catalog: the store's index as zap itself reads it."""
    from catalog import Catalog
    from catalog.chunks import ChunkIndex

    cat = Catalog(zap.home / "catalog.db")
    try:
        with cat.session() as s:
            return what(ChunkIndex(s))
    finally:
        cat.dispose()


def varint(n: int) -> bytes:
    """A protobuf varint, for building CRIU images by hand in unit tests."""
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def memory_intact(volume: Path, timeout: float = 60.0) -> bool:
    """Ask a memhog workload (tests/workloads/memhog.py) in volume to hash its memory again;
    whether that is the hash it had when it started (its memory never changes)."""
    (volume / "memsum").unlink(missing_ok=True)
    (volume / "memsum.req").touch()
    wait_for(lambda: (volume / "memsum").exists(), timeout, what="the process to hash its memory")
    return (volume / "memsum").read_text() == (volume / "memsum.start").read_text()


def pod_runs(zap, name: str, needle: bytes) -> bool:
    """Whether a process of the running pod has needle in its command line (NUL-separated)."""
    init = zap.pod(name)["pid"]
    if not init:
        return False
    ns = os.stat(f"/proc/{init}/ns/pid").st_ino
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{e}/ns/pid").st_ino == ns and needle in Path(f"/proc/{e}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def pod_processes(zap, name: str) -> list[int]:
    """Host pids of the running pod's processes."""
    init = zap.pod(name)["pid"]
    if not init:
        return []
    ns = os.stat(f"/proc/{init}/ns/pid").st_ino
    out = []
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{e}/ns/pid").st_ino == ns:
                out.append(int(e))
        except OSError:
            continue
    return out


def pod_holds(zap, name: str, path: str) -> bool:
    """Whether a process of the pod holds a descriptor to path (as the host names it)."""
    for pid in pod_processes(zap, name):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(ln == path or ln.endswith(path) for ln in links):
            return True
    return False


def process_age(pid: int) -> float:
    """Seconds since pid started (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return 0.0
    start = int(stat[stat.rindex(")") + 2 :].split()[19])
    return uptime - start / os.sysconf("SC_CLK_TCK")
