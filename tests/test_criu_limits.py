"""CRIU's limits as zap exposes them: a timeout on every CRIU run, the size of deleted-but-open
files a checkpoint keeps (--ghost-limit), and what `--net host` can and cannot do."""

from __future__ import annotations

from pathlib import Path

from helpers import counter_values, proc_state, wait_for


def _counting(zap, name: str) -> None:
    vol = zap.volume(name)
    n = len(counter_values(vol))
    wait_for(lambda: len(counter_values(vol)) > n + 50, what=f"{name} to go on counting")
    pid = zap.pod(name)["pid"]
    assert proc_state(pid) in ("S", "R"), proc_state(pid)


def test_criu_timeout_kills_criu_and_leaves_the_pod_running(zap):
    # ZAP_FAULT=hook-stall: CRIU's action script hangs inside its work (in the frozen window of
    # a dump, before the processes of a restore come back), so the timeout fires there, however
    # fast CRIU is on this machine.
    stall = lambda t: {"ZAP_CRIU_TIMEOUT": t, "ZAP_FAULT": "hook-stall"}  # noqa: E731
    zap.run_counter("c", interval="0.001")
    for limit in ("0.5", "1"):
        cp = zap("checkpoint", "c", check=False, env=stall(limit))
        assert cp.returncode == 1, cp.stderr
        line = cp.stderr.strip()
        assert line.count("\n") == 0 and f"did not finish within {limit}s" in line and "ZAP_CRIU_TIMEOUT" in line
        _counting(zap, "c")  # thawed: the frozen pod goes on
    assert zap.json("list", "c")["checkpoints"] == []
    assert not list((zap.home / "pool" / "snapshots").iterdir())
    # with the default limit the same pod checkpoints, and restores under a generous one
    zap("checkpoint", "c")
    zap("restore", "c@1", env={"ZAP_CRIU_TIMEOUT": "60"})
    _counting(zap, "c")
    bad = zap("checkpoint", "c", check=False, env={"ZAP_CRIU_TIMEOUT": "nan"})
    assert bad.returncode == 2 and "ZAP_CRIU_TIMEOUT" in bad.stderr

    # restore of a running pod: the dump of the state it replaces times out, nothing changes
    line = zap("restore", "c@1", check=False, env=stall("1")).stderr.strip()
    assert "nothing changed" in line and "did not finish within 1s" in line and "\n" not in line
    _counting(zap, "c")
    # restore of a stopped pod: CRIU's restore is killed half-way, the pod stays as it was
    zap("stop", "c")
    files = counter_values(zap.volume("c"))
    cp = zap("restore", "c@1", check=False, env=stall("1"))
    assert cp.returncode == 1 and "did not finish within 1s" in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert zap.pod("c")["state"] == "stopped" and counter_values(zap.volume("c")) == files
    assert not [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if "/mnt/c " in ln]
    # a branch: killed half-way, no branch left
    cp = zap("branch", "c@1", "c2", check=False, env=stall("1"))
    assert cp.returncode == 1 and "did not finish within 1s" in cp.stderr, cp.stderr
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["c"]
    assert not (zap.home / "pool" / "pods" / "c2").exists()
    zap("restore", "c@1")
    _counting(zap, "c")


def test_unlinked_open_file_of_64_mib_and_the_ghost_limit(zap):
    """A process holding a deleted 64 MiB file: kept in the checkpoint by default (64 MiB), and
    the restored process reads the same bytes; a smaller --ghost-limit refuses in one line."""
    script = (
        "import hashlib, os, time\n"
        "data = os.urandom(64 << 20)\n"
        "f = open('ghost.bin', 'w+b'); f.write(data); f.flush(); os.unlink('ghost.bin')\n"
        "open('ghost.tmp', 'w').write(hashlib.sha256(data).hexdigest()); del data; os.rename('ghost.tmp', 'ghost.sha')\n"
        "while True:\n"
        "    time.sleep(0.2)\n"
        "    if os.path.exists('check'):\n"
        "        os.unlink('check'); f.seek(0)\n"
        "        open('checked.tmp', 'w').write(hashlib.sha256(f.read()).hexdigest())\n"
        "        os.rename('checked.tmp', 'checked')\n"
    )
    zap("run", "g", "--", "python3", "-c", script)
    vol = zap.volume("g")
    wait_for(lambda: (vol / "ghost.sha").exists(), what="the ghost file")
    line = zap.fails("checkpoint", "g", "--ghost-limit", "1M", code=1)
    assert "ghost" in line.lower() or "limit" in line.lower(), line
    zap.fails("checkpoint", "g", "--ghost-limit", "lots", code=2)
    zap("checkpoint", "g")
    zap("restore", "g@1")
    (vol / "check").touch()
    wait_for(lambda: (vol / "checked").exists(), what="the restored process to read its file")
    assert (vol / "checked").read_text() == (vol / "ghost.sha").read_text()
    # the state directory's default can be lowered once for every checkpoint
    zap("init", "--ghost-limit", "1M")
    zap.fails("checkpoint", "g", code=1)


def test_net_host_pod_checkpoints_sockets_but_its_listener_branch_is_refused(zap):
    """--net host is today's behaviour, kept on request: its sockets are checkpointed and
    restored in place; a branch cannot listen on the address its original holds, and says so."""
    zap("run", "h", "--net", "host", "--", "python3", "-c",
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 0)); s.listen(); open('port', 'w').write(str(s.getsockname()[1]))\n"
        "while True: c, _ = s.accept(); c.sendall(b'hi'); c.close()\n")  # fmt: skip
    vol = zap.volume("h")
    wait_for(lambda: (vol / "port").exists(), what="the listener")
    port = int((vol / "port").read_text())
    assert zap.pod("h")["net"] == "host" and zap.pod("h")["address"] is None
    zap("checkpoint", "h")
    zap("restore", "h@1")
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert c.recv(2) == b"hi"
    line = zap.fails("branch", "h@1", "h2", code=2)
    assert f"{port}/tcp" in line and "--net host" in line
    assert "h2" not in {p["name"] for p in zap.json("ps")["pods"]}
    # stopped, its ports are free: the branch takes them and serves
    zap("stop", "h")
    zap("branch", "h@1", "h2")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert c.recv(2) == b"hi"
