"""Bad input and failures: one clear line, the right exit code, and nothing lost: the pod keeps
running (never frozen), the catalog stays consistent, earlier checkpoints stay intact."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (ZAP_CMD, WORKLOADS, assert_continuous, counted_past, counter_values, pack_files, proc_state,
                     store_index, wait_for)


def _assert_running_and_counting(zap, name):
    pod = zap.pod(name)
    assert pod["state"] == "running"
    assert proc_state(pod["pid"]) in ("R", "S", "D"), f"pod init in state {proc_state(pod['pid'])}"
    counted_past(zap.volume(name), len(counter_values(zap.volume(name))) + 20, f"{name} to keep counting")


def _snapshots(zap):
    return sorted(p.name for p in (zap.home / "pool" / "snapshots").iterdir())


def _packs(zap):
    return [p.name for p in pack_files(zap)]


def _catalog_packs(zap):
    return sorted(store_index(zap, lambda index: index.pack_names()))


def test_bad_names_unknown_things_and_taken_names(zap):
    for bad in ("Bad", "a/b", "x" * 64, "", "a b", ".hidden", "a@1"):
        assert "invalid pod name" in zap.fails("run", bad, "--", "true", code=2)
    zap.fails("run", "-x", "--", "true", code=2)  # read as an option: still one line, exit 2
    zap.fails("show", "nope", code=2)
    zap.fails("show", "nope@1", code=2)
    zap.fails("restore", "nope@1", code=2)
    zap.fails("branch", "nope@latest", "x", code=2)
    zap.fails("checkpoint", "nope", code=2)
    zap.fails("logs", "nope", code=2)
    zap.fails("exec", "nope", "--", "true", code=2)
    zap.fails("stop", "nope", code=2)
    zap.fails("rm", "nope", code=2)
    zap.fails("log", "nope", code=2)
    zap.fails("frobnicate", code=2)
    zap.fails("run", "x", code=2)  # no command
    zap.run_counter("web")
    assert "already exists" in zap.fails("run", "web", "--", "true", code=2)
    zap.fails("show", "web@1", code=2)
    zap.fails("show", "web@latest", code=2)
    zap.fails("show", "web@x", code=2)
    zap("checkpoint", "web")
    zap.fails("show", "web@9", code=2)
    assert "already exists" in zap.fails("branch", "web@1", "web", code=2)
    assert "invalid pod name" in zap.fails("branch", "web@1", "Web!", code=2)
    assert "cannot run" in zap.fails("run", "nocmd", "--", "/no/such/binary", code=1)
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["web"]
    assert len(_snapshots(zap)) == 1


def test_checkpoint_of_stopped_pod_is_refused(zap):
    zap.run_counter("idle")
    zap("stop", "-t", "5", "idle")
    assert zap.pod("idle")["state"] == "stopped"
    assert "not running" in zap.fails("checkpoint", "idle", code=2)
    assert zap.json("list")["checkpoints"] == []


@pytest.fixture
def unix_listener(host_dir):
    """A unix socket server on the host, outside any pod: a pod connected to it holds a socket
    whose other end CRIU cannot dump (it is not in the pod)."""
    path = host_dir / "host.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(8)
    yield path
    srv.close()


def test_criu_refusing_the_tree_leaves_pod_running(zap, unix_listener):
    script = (
        "import socket,time,os;s=socket.socket(socket.AF_UNIX);s.connect(%r);"
        "fd=os.open('counter.txt',os.O_WRONLY|os.O_APPEND|os.O_CREAT);i=0\n"
        "while True:\n i+=1;os.write(fd,b'%%d\\n'%%i);time.sleep(0.001)" % str(unix_listener)
    )
    zap("run", "ext", "--", "python3", "-c", script)
    wait_for(lambda: counter_values(zap.volume("ext")), what="ext pod")
    msg = zap.fails("checkpoint", "ext", code=1)
    # the reason is CRIU's own line about the external unix socket, not the pod's name
    reason = msg.split(": ", 2)[2].rsplit(" (full log:", 1)[0]
    assert "CRIU refused to dump the pod" in msg and "full log:" in msg and "unix" in reason.lower(), msg
    log = Path(msg.rsplit("full log: ", 1)[1].rstrip(")"))
    assert log.is_file()
    _assert_running_and_counting(zap, "ext")
    assert zap.json("list", "ext")["checkpoints"] == []
    assert _snapshots(zap) == []
    assert _packs(zap) == [] and _catalog_packs(zap) == []


def test_snapshot_failure_in_the_frozen_window(zap):
    zap.run_counter("web")
    zap("checkpoint", "web")
    snapdir = zap.home / "pool" / "snapshots"
    # An immutable snapshot directory makes the in-window btrfs snapshot fail for real.
    subprocess.run(["chattr", "+i", str(snapdir)], check=True)
    try:
        msg = zap.fails("checkpoint", "web", code=1)
    finally:
        subprocess.run(["chattr", "-i", str(snapdir)], check=True)
    assert "filesystem snapshot failed inside the frozen window" in msg
    _assert_running_and_counting(zap, "web")
    assert [c["ref"] for c in zap.json("list", "web")["checkpoints"]] == ["web@1"]
    assert len(_snapshots(zap)) == 1
    assert _packs(zap) == _catalog_packs(zap) and len(_packs(zap)) == 1
    # Earlier checkpoint intact and the next one gets the next number.
    assert zap("checkpoint", "web").stdout.strip() == "web@2"
    zap("branch", "web@1", "again")
    assert_continuous(wait_for(lambda: counter_values(zap.volume("again")), what="branch"))


def test_concurrent_checkpoints_wait_or_fail_clearly(zap):
    zap.run_counter("web")
    cmd = [*ZAP_CMD, "checkpoint", "web"]
    procs = [subprocess.Popen(cmd, env=zap.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o[0].strip() for o in outs) == ["web@1", "web@2", "web@3"]
    # With no patience, the loser says so in one line.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time;f=open(sys.argv[1],'w');fcntl.flock(f,fcntl.LOCK_EX);"
         "print('locked',flush=True);time.sleep(30)", str(zap.home / "locks" / "web.lock")],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        cp = zap("checkpoint", "web", check=False, env={"ZAP_LOCK_TIMEOUT": "0.5"})
        assert cp.returncode == 1 and "busy" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    _assert_running_and_counting(zap, "web")


def test_damaged_images_refuse_restore_before_touching_anything(zap):
    """Eager (ZAP_LAZY=0): every frame is read and checked before anything changes. Lazily, a
    truncated or missing pack is found before anything changes too (every frame's presence is
    checked up front); a damaged frame is found when its pages are served, before any process
    runs on them (test_lazy.py)."""
    zap.run_counter("web")
    zap("checkpoint", "web")
    (pack,) = _packs(zap)
    pages = zap.home / "store" / "packs" / pack
    good = pages.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    pid = zap.pod("web")["pid"]
    msg = zap.fails("restore", "web@1", code=1, env={"ZAP_LAZY": "0"})
    assert "cannot be restored" in msg and "damaged" in msg
    assert zap.pod("web")["pid"] == pid
    _assert_running_and_counting(zap, "web")
    assert [c["ref"] for c in zap.json("list")["checkpoints"]] == ["web@1"]  # no "before restore" left
    zap.fails("branch", "web@1", "b", code=1, env={"ZAP_LAZY": "0"})
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["web"]
    # A pack cut short, or gone: refused before anything changes, lazily too.
    pages.write_bytes(good[: len(good) - 4096])
    for gone in (False, True):
        if gone:
            pages.unlink()
        msg = zap.fails("restore", "web@1", code=1)
        assert "cannot be restored" in msg and ("truncated" in msg or "missing" in msg), msg
        assert zap.pod("web")["pid"] == pid
        zap.fails("branch", "web@1", "b", code=1)
    _assert_running_and_counting(zap, "web")
    assert [c["ref"] for c in zap.json("list")["checkpoints"]] == ["web@1"]
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["web"]


def test_pool_full(zap):
    zap("deinit", "--purge")
    zap("init", "--size", "256M")
    sleeper = ["python3", "-c", "import time\nwhile True: time.sleep(0.01)"]
    zap("run", "fill", "--", *sleeper)
    zap("checkpoint", "fill")
    # Fill the pool from the host side until the filesystem says no.
    blob = os.urandom(1 << 20)
    with open(zap.volume("fill") / "ballast", "wb") as f:
        try:
            while True:
                f.write(blob)
                f.flush()
        except OSError:
            pass
    size = (zap.volume("fill") / "ballast").stat().st_size
    # A btrfs snapshot is metadata only, and btrfs keeps a reserve of metadata for it: a full
    # pool still takes checkpoints (the images go to the state directory's store, not the pool),
    # and they restore, files and all.
    zap("checkpoint", "fill")
    assert zap.json("show", "fill@2")["has_processes"] and zap.json("show", "fill@1")["has_processes"]
    zap("restore", "fill@2")
    assert (zap.volume("fill") / "ballast").stat().st_size == size
    pod = zap.pod("fill")
    assert pod["state"] == "running" and proc_state(pod["pid"]) in ("R", "S", "D")
    # and the pod's own writes are what fails, with ENOSPC, as on any full file system
    cp = zap("exec", "fill", "--", "sh", "-c", 'head -c 4M /dev/zero > "$ZAP_POD_PATH/more"', check=False)
    assert cp.returncode != 0 and "No space left" in cp.stderr, cp
    assert len(_snapshots(zap)) == 3  # fill@1, fill@2, and the state the restore replaced


def test_interrupted_checkpoint_leaves_nothing_half_done(zap):
    """Ctrl-C at each phase of a checkpoint (ZAP_FAULT=sigint@POINT sends it exactly there):
    once the checkpoint has begun it is finished first, and said so; before, nothing is done."""
    memhog = WORKLOADS / "memhog.py"
    zap("run", "big", "--env", "MEMHOG_MIB=128", "--", "python3", str(memhog))
    wait_for(lambda: "holding" in zap("logs", "big").stdout, what="memhog to fill its memory")
    taken = 0
    for point in ("checkpoint:before-dump", "criu-dump", "checkpoint:dumped", "checkpoint:ingested"):
        cp = zap("checkpoint", "big", check=False, env={"ZAP_FAULT": f"sigint@{point}"})
        assert cp.returncode == 0, (point, cp.stderr)
        assert "interrupt received during the operation; it was completed first" in cp.stderr, (point, cp.stderr)
        assert "Traceback" not in cp.stderr
        taken += 1
        pod = zap.pod("big")
        assert pod["state"] == "running" and proc_state(pod["pid"]) in ("R", "S", "D"), (point, proc_state(pod["pid"]))
        refs = [c["ref"] for c in zap.json("list")["checkpoints"]]
        assert len(refs) == taken and zap.json("show", refs[-1])["has_processes"]
        # Whatever was committed is whole; nothing else stays on disk.
        assert len(_snapshots(zap)) == len(refs)
        assert _packs(zap) == _catalog_packs(zap)
    # Before it begins (waiting for the pod, which another command holds): it ends, doing nothing.
    import fcntl

    with open(zap.home / "locks" / "big.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.Popen([*ZAP_CMD, "checkpoint", "big"], env=zap.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(lambda: _waiting_for(held.name), what="the checkpoint to wait for the pod's lock")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "zap: interrupted", (p.returncode, err)
    assert len(zap.json("list")["checkpoints"]) == taken and len(_snapshots(zap)) == taken


def _waiting_for(lock: str) -> bool:
    """Whether another process has lock open (the command waiting to take it)."""
    for e in filter(str.isdigit, os.listdir("/proc")):
        if int(e) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{e}/fd/{fd}") == lock for fd in os.listdir(f"/proc/{e}/fd")):
                return True
        except OSError:
            continue
    return False
