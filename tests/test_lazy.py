"""Lazy restore and branch (ops/revive.py, criu/lazy.py, criu/pageserver.py): the processes run
as soon as everything but their memory is back, their pages come from zap's page server, and
whatever fails on the way (zap, its background half, CRIU's lazy-pages daemon killed; a damaged
frame) never leaves a process running on memory that did not come: the pod is killed and put
back as it was. Each workload checks its own memory (tests/workloads/memhog.py hashes it again
on request; Redis answers with its data)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import WORKLOADS, catalog_db, memory_intact, pack_files, proc_state, wait_for

MEMHOG = WORKLOADS / "memhog.py"


def run_memhog(zap, name: str, mib: int) -> Path:
    zap("run", name, "--env", f"MEMHOG_MIB={mib}", "--", "python3", str(MEMHOG))
    vol = zap.volume(name)
    wait_for(lambda: (vol / "memsum.start").exists(), timeout=180, what=f"{name} to fill its memory")
    return vol


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            out[int(e)] = Path(f"/proc/{e}/cmdline").read_bytes()
        except OSError:
            continue
    return out


def memhogs() -> list[int]:
    return [p for p, c in _cmdlines().items() if c.split(b"\0")[:2] == [b"python3", str(MEMHOG).encode()]
            and proc_state(p) not in (None, "Z")]  # fmt: skip


def lazy_daemons(zap) -> list[int]:
    """CRIU lazy-pages daemons of this test's state directory (their images are in its staging)."""
    tag = hashlib.sha1(str(zap.home).encode()).hexdigest()[:10]
    return [p for p, c in _cmdlines().items() if b"lazy-pages" in c and tag.encode() in c]


def assert_whole(zap, name: str, running: bool = True) -> dict:
    """After everything settled: the pod runs once (or not at all), its memory is exactly what it
    was, no daemon is left, nothing unrecorded, no staging."""
    again = zap.json("recover")
    assert again["operations"] == [], again
    pod = zap.settled(name)
    assert pod["state"] == ("running" if running else "stopped"), pod
    assert len(memhogs()) == (1 if running else 0), memhogs()
    if running:
        assert proc_state(pod["pid"]) not in ("T", "t")
        assert memory_intact(Path(pod["volume"]), timeout=120)
    wait_for(lambda: not lazy_daemons(zap), what="no lazy-pages daemon left")
    doc = zap.json("verify")
    assert doc["ok"] and doc["unrecorded"] == [], doc
    return pod


@pytest.mark.parametrize("mib", [64, 1024])
def test_lazy_restore_and_branch_memory_exact(zap, mib):
    run_memhog(zap, "m", mib)
    zap("checkpoint", "m")
    pid = zap.pod("m")["pid"]
    # The running pod is saved (its images stored after the restored one runs), then restored.
    out = zap("restore", "m@1")
    assert out.stdout.strip() == "restored m@1" and "m@2" in out.stderr
    assert zap.json("show", "m")["state"] in ("restoring", "running")
    pod = zap.settled("m")
    assert pod["state"] == "running" and pod["pid"] != pid
    assert memory_intact(zap.volume("m"), timeout=120)
    # stored after the restored pod runs (in the background)
    saved = wait_for(lambda: (c := zap.json("show", "m@2"))["image_format"] == "cas" and c, timeout=120,
                     what="the replaced state to be stored")  # fmt: skip
    assert saved["has_processes"] and saved["raw_bytes"] > mib << 20
    # A branch of the saved state, while the original runs: its own memory, exact.
    zap("branch", "m@2", "mb")
    assert memory_intact(zap.volume("mb"), timeout=120) and memory_intact(zap.volume("m"), timeout=120)
    assert len(memhogs()) == 2
    # The rollback can be undone: the saved state restores (lazily) with its memory.
    zap("restore", "m@2")
    assert memory_intact(zap.settled("m") and zap.volume("m"), timeout=120)
    zap("rm", "--force", "mb")
    assert_whole(zap, "m")


def test_lazy_redis_answers_right_away_with_its_data(zap):
    zap("run", "rd", "--", "redis-server", "--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no",
        "--protected-mode", "no")  # fmt: skip
    addr = zap.pod("rd")["address"]
    wait_for(lambda: _redis(addr, b"PING\r\n") == b"+PONG\r\n", what="redis")
    keys = 4000
    value = lambda i: hashlib.sha256(str(i).encode()).hexdigest().encode() * 64  # noqa: E731 - 4 KiB each
    with socket.create_connection((addr, 6379), timeout=30) as c:
        for lo in range(0, keys, 500):
            c.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$%d\r\n%s\r\n" % (len(b"k%d" % i), i, len(value(i)), value(i))
                               for i in range(lo, min(lo + 500, keys))))  # fmt: skip
            got = b""
            while got.count(b"+OK\r\n") < min(500, keys - lo):
                got += c.recv(65536)
    zap("checkpoint", "rd")
    _redis(addr, b"FLUSHALL\r\n")
    t = time.monotonic()
    zap("restore", "rd@1")
    first = wait_for(lambda: _redis(addr, b"GET k7\r\n"), what="redis to answer after the restore")
    answered = time.monotonic() - t
    assert first.endswith(value(7) + b"\r\n"), first[:80]
    assert _redis(addr, b"DBSIZE\r\n") == b":%d\r\n" % keys
    for i in range(0, keys, 97):
        assert _redis(addr, b"GET k%d\r\n" % i).split(b"\r\n")[1] == value(i)
    zap.settled("rd")
    assert answered < 30


def _redis(addr: str, cmd: bytes) -> bytes:
    try:
        with socket.create_connection((addr, 6379), timeout=5) as c:
            c.sendall(cmd)
            out = c.recv(1 << 20)
            if out.startswith(b"$") and not out.startswith(b"$-1"):
                want = int(out.split(b"\r\n", 1)[0][1:]) + len(out.split(b"\r\n", 1)[0]) + 4
                while len(out) < want:
                    out += c.recv(1 << 20)
            return out
    except OSError:
        return b""


# zap (the command, before it reports) killed at each new phase of a lazy restore, and its
# background half (after it reported) killed with its pages on the way or with only the state it
# replaced left to store.
COMMAND_FAULTS = ["restore:lazy-daemon", "restore:lazy-stopped", "restore:restored"]
BACKGROUND_FAULTS = ["restore:detached", "restore:storing"]


def test_lazy_restore_killed_at_each_phase(zap):
    run_memhog(zap, "m", 128)
    zap("checkpoint", "m")
    for fault in COMMAND_FAULTS:
        cp = zap("restore", "m@1", check=False, env={"ZAP_FAULT": fault})
        assert cp.returncode == -signal.SIGKILL, (fault, cp.returncode, cp.stderr)
        rec = zap.json("recover")
        assert rec["operations"][-1]["outcome"].startswith("undone (the pod was put back"), (fault, rec)
        assert_whole(zap, "m")
    for fault in BACKGROUND_FAULTS:
        cp = zap("restore", "m@1", env={"ZAP_FAULT": fault})  # reported: the background half dies later
        assert cp.stdout.strip() == "restored m@1"
        wait_for(lambda: not _owner_alive(zap), what="the background half to die")
        rec = zap.json("recover")
        outcome = rec["operations"][-1]["outcome"]
        if fault == "restore:storing":
            # every page was in: the restore stands, the replaced state is stored by recovery
            assert outcome.startswith("finished (restored to m@1; the state it replaced is stored"), rec
        else:
            assert outcome.startswith("undone (the pod was put back"), rec
        assert_whole(zap, "m")
    # Every state the restores replaced is a whole checkpoint.
    for ck in zap.json("list", "m")["checkpoints"]:
        assert ck["has_processes"], ck


def _owner_alive(zap) -> bool:
    import sqlite3

    db = sqlite3.connect(zap.home / "catalog.db")
    try:
        rows = db.execute("SELECT owner_pid FROM intents").fetchall()
    finally:
        db.close()
    return any(proc_state(p) not in (None, "Z") for (p,) in rows)


def test_lazy_daemon_killed_puts_the_pod_back(zap, tmp_path):
    """CRIU's lazy-pages daemon killed while pages are still to come (here: the tree restored
    and stopped, the keeper holding its userfaultfds): the pod never runs on without them; it
    is put back as it was, and its note says why."""
    run_memhog(zap, "m", 128)
    zap("checkpoint", "m")
    env = dict(zap.env, ZAP_FAULT="wait@restore:lazy-stopped", ZAP_FAULT_DIR=str(tmp_path))
    p = subprocess.Popen([*zap.cmd, "restore", "m@1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "restore:lazy-stopped.reached").exists(), what="the restored tree, stopped")
    (daemon,) = lazy_daemons(zap)
    os.kill(daemon, signal.SIGKILL)
    (tmp_path / "restore:lazy-stopped.go").touch()
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0 and out.strip() == "restored m@1", err  # reported: the failure comes after
    pod = zap.settled("m", timeout=180)
    assert "failed while its memory came in" in (pod.get("note") or ""), pod
    assert "lazy-pages daemon failed" in pod["note"] and "put back as it was" in pod["note"], pod["note"]
    ps = zap("ps")
    assert "m: restore to m@1 failed while its memory came in" in ps.stderr
    assert_whole(zap, "m")
    zap("restore", "m@1")  # a later restore clears the note
    assert not zap.settled("m").get("note")
    assert_whole(zap, "m")


def page_servers(zap) -> list[int]:
    tag = hashlib.sha1(str(zap.home).encode()).hexdigest()[:10]
    return [p for p, c in _cmdlines().items() if b"zap-pages" in c and tag.encode() in c]


def test_page_server_killed_puts_the_pod_back(zap, tmp_path):
    """zap's page server (zap-pages) killed while CRIU restores (a page CRIU waits for would
    never come: CRIU is stopped, the restore fails and the pod is put back), and after the
    restore reported (the pod is killed before it runs on a missing page, and put back)."""
    run_memhog(zap, "m", 128)
    zap("checkpoint", "m")
    for point in ("restore:lazy-daemon", "restore:detached"):
        for f in tmp_path.iterdir():
            f.unlink()
        env = dict(zap.env, ZAP_FAULT=f"wait@{point}", ZAP_FAULT_DIR=str(tmp_path))
        p = subprocess.Popen([*zap.cmd, "restore", "m@1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
        wait_for(lambda: (tmp_path / f"{point}.reached").exists(), what=point)
        if point == "restore:detached":
            out, err = p.communicate(timeout=60)  # reported before the background half waits
            assert p.returncode == 0, err
        (server,) = page_servers(zap)
        os.kill(server, signal.SIGKILL)
        (tmp_path / f"{point}.go").touch()
        if point == "restore:lazy-daemon":
            out, err = p.communicate(timeout=60)
            assert p.returncode == 1 and "could not be served" in err and "put back as it was" in err, err
        pod = zap.settled("m", timeout=120)
        if point == "restore:detached":
            assert "page server was killed" in (pod.get("note") or "") or "daemon failed" in (pod.get("note") or ""), pod
        assert_whole(zap, "m")


def test_lazy_branch_killed_leaves_nothing(zap):
    run_memhog(zap, "m", 128)
    zap("checkpoint", "m")
    for fault in ("branch:restored", "restore:detached"):
        cp = zap("branch", "m@1", "mb", check=False, env={"ZAP_FAULT": fault})
        assert cp.returncode == (-signal.SIGKILL if fault == "branch:restored" else 0), (fault, cp.stderr)
        wait_for(lambda: not _owner_alive(zap), what="the operation to die")
        rec = zap.json("recover")
        assert rec["operations"][-1]["outcome"].startswith("undone"), rec
        assert [p["name"] for p in zap.json("ps")["pods"]] == ["m"]
        assert_whole(zap, "m")
    zap("branch", "m@1", "mb")  # the same name works
    assert memory_intact(zap.volume("mb"), timeout=120)


def test_damaged_frame_found_before_a_process_runs_on_it(zap):
    """A frame damaged in its pack (its presence checked up front, its zstd checksum when its
    pages are served): no process runs on what it would have held. Every frame damaged: the
    first page CRIU asks for fails the restore before anything resumes; the pod is put back."""
    vol = run_memhog(zap, "m", 64)
    zap("checkpoint", "m")
    (pack,) = pack_files(zap)
    good = pack.read_bytes()
    data = bytearray(good)
    for i in range(4096, len(data), 65536):
        data[i] ^= 0xFF
    pack.write_bytes(bytes(data))
    pid = zap.pod("m")["pid"]
    msg = zap.fails("restore", "m@1", code=1)
    assert "cannot be restored" in msg and "damaged" in msg, msg
    assert zap.pod("m")["pid"] == pid  # found before anything changed: an image that is not memory
    msg = zap.fails("branch", "m@1", "mb", code=1)
    assert "damaged" in msg
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["m"]
    pack.write_bytes(good)
    assert_whole(zap, "m")
    # Only a frame of anonymous memory (the middle of the heap) damaged: found when its pages are
    # served; the pod never runs on them: restored and killed, put back as it was.
    pack.write_bytes(good)
    with catalog_db(zap) as db:
        offs = sorted(o for (o,) in db.execute('SELECT "offset" FROM frames WHERE uniform'))
    data = bytearray(good)
    data[offs[len(offs) // 2] + 100] ^= 0xFF
    pack.write_bytes(bytes(data))
    cp = zap("restore", "m@1", check=False)
    pod = zap.settled("m")
    said = cp.stderr + (pod.get("note") or "")
    assert "damaged" in said and "put back as it was" in said, (cp.returncode, said)
    assert pod["state"] == "running" and pod["pid"] != pid
    pack.write_bytes(good)
    assert_whole(zap, "m")


def test_eager_fallback_and_doctor(zap):
    doc = {c["name"]: c for c in zap.json("doctor")["checks"]}
    assert doc["lazy restore"]["ok"] and doc["lazy restore"]["detail"].startswith("lazy")
    cp = zap("doctor", "--json", env={"ZAP_LAZY": "0"})
    assert "eager (ZAP_LAZY=0)" in cp.stdout
    run_memhog(zap, "m", 64)
    zap("checkpoint", "m")
    zap("restore", "m@1", env={"ZAP_LAZY": "0"})
    assert zap.json("show", "m")["state"] == "running"  # eager: every page in before it reports (the state
    # it replaced may still be being stored, in the background)
    assert memory_intact(zap.volume("m"))
    zap("branch", "m@1", "mb", env={"ZAP_LAZY": "0"})
    assert zap.json("show", "mb")["state"] == "running" and memory_intact(zap.volume("mb"))
    zap("rm", "--force", "mb")
    assert_whole(zap, "m")


def test_commands_wait_for_a_restore_in_progress(zap, tmp_path):
    """While its pages come in, the pod is `restoring`: a checkpoint (and any command on the pod)
    waits for the restore to be over, then works on the restored state."""
    run_memhog(zap, "m", 128)
    zap("checkpoint", "m")
    env = {"ZAP_FAULT": "wait@restore:detached", "ZAP_FAULT_DIR": str(tmp_path)}
    zap("restore", "m@1", env=env)
    wait_for(lambda: (tmp_path / "restore:detached.reached").exists(), what="the background half")
    assert zap.json("show", "m")["state"] == "restoring"
    waiting = subprocess.Popen([*zap.cmd, "checkpoint", "m"], env=zap.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)
    assert waiting.poll() is None  # it waits for the pod's lock
    (tmp_path / "restore:detached.go").touch()
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err
    assert out.strip() == "m@3"
    assert zap.json("show", "m@3")["parent"] == "m@1"
    assert_whole(zap, "m")
