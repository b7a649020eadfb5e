"""A fleet on this machine: two hosts (state directories with their own pools and bridges) sharing
the session's PostgreSQL catalog and SeaweedFS store. Any host branches any checkpoint, a lost
host's pods are adopted from the shared state alone, and the lost host, come back, never runs
them again. What the programs themselves know is the proof: Redis's memory against its own
append-only file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path


from helpers import ZAP_CMD, wait_for

REDIS = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", "."]  # fmt: skip


def redis(host: str, *words: str) -> object:
    """One command over RESP; the reply decoded (bulk strings as str, arrays as lists)."""
    with socket.create_connection((host, 6379), timeout=5) as c:
        c.sendall(("*%d\r\n" % len(words) + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)).encode())
        f = c.makefile("rb")
        return _reply(f)


def _reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        return [_reply(f) for _ in range(int(rest))]
    raise AssertionError(f"bad reply {line!r}")


def aof_state(volume: Path) -> dict[str, str]:
    """What Redis's append-only files in the volume say the data is (the SETs and DELs replayed)."""
    d = volume / "appendonlydir"
    data: dict[str, str] = {}
    for f in sorted(d.glob("*.incr.aof")):
        buf = f.read_bytes()
        i = 0
        while i < len(buf):
            assert buf[i : i + 1] == b"*", f"{f}: not RESP at {i}"
            end = buf.index(b"\r\n", i)
            n = int(buf[i + 1 : end])
            i = end + 2
            words = []
            for _ in range(n):
                end = buf.index(b"\r\n", i)
                size = int(buf[i + 1 : end])
                words.append(buf[end + 2 : end + 2 + size].decode())
                i = end + 2 + size + 2
            cmd = words[0].upper()
            if cmd == "SET":
                data[words[1]] = words[2]
            elif cmd == "DEL":
                for k in words[1:]:
                    data.pop(k, None)
    return data


def memory_state(address: str) -> dict[str, str]:
    keys = redis(address, "KEYS", "*")
    return {k: redis(address, "GET", k) for k in keys}


def write_keys(address: str, start: int, n: int) -> dict[str, str]:
    out = {}
    for i in range(start, start + n):
        assert redis(address, "SET", f"k{i}", f"v{i}-{os.urandom(4).hex()}") == "OK"
        out[f"k{i}"] = redis(address, "GET", f"k{i}")
    return out


def start_redis(h, name: str) -> dict:
    h("run", name, "--", *REDIS)
    pod = h.pod(name)
    wait_for(lambda: _answers(pod["address"]), what=f"{name}'s redis to answer")
    return pod


def _answers(address: str) -> bool:
    try:
        return redis(address, "PING") == "PONG"
    except OSError:
        return False


def lose(h) -> None:
    """Host h is lost: its pods' processes and its zap commands die, its pool's disk is gone.
    Its state directory stays on this machine, as a host that comes back would have it."""
    for p in h.json("ps")["pods"]:
        if p["pid"]:
            os.kill(p["pid"], signal.SIGKILL)
    for p in h.json("ps")["pods"]:
        wait_for(lambda: h.pod(p["name"])["state"] != "running", what=f"{p['name']} to die")
    for m in (h.home / "pool", h.home):
        subprocess.run(["umount", "--lazy", str(m)], capture_output=True)
    out = subprocess.run(["losetup", "-j", str(h.home / "pool.img")], capture_output=True, text=True).stdout
    for line in out.splitlines():
        subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)
    (h.home / "pool.img").unlink()


def test_two_hosts_share_the_history_adopt_a_lost_hosts_redis_and_fence_it(fleet):
    a, b = fleet.a, fleet.b
    hosts = {h["name"]: h for h in b.json("host", "ls")["hosts"]}
    assert set(hosts) == {"a", "b"} and hosts["b"]["this"] and not hosts["a"]["this"]
    pod = start_redis(a, "rd")
    first = write_keys(pod["address"], 0, 50)
    assert a("checkpoint", "rd").stdout.strip() == "rd@1"
    ck1 = a.json("show", "rd@1")
    assert ck1["host"] == "a" and ck1["volume_in_store"]
    second = write_keys(pod["address"], 50, 30)  # after rd@1: not in it

    # B branches A's checkpoint: files and memory from the shared store only
    b("branch", "rd@1", "rd-b")
    br = b.pod("rd-b")
    assert br["host"] == "b" and br["address"] != pod["address"]
    wait_for(lambda: _answers(br["address"]), what="the branch's redis to answer")
    assert memory_state(br["address"]) == first
    assert aof_state(Path(br["volume"])) == first  # its memory is what its own AOF says
    assert memory_state(pod["address"]) == {**first, **second}  # the original runs on untouched
    assert [p["name"] for p in b.json("ps")["pods"]] == ["rd-b"]
    everyone = {p["name"]: p["host"] for p in b.json("ps", "--all-hosts")["pods"]}
    assert everyone == {"rd": "a", "rd-b": "b"}
    # B may not act on A's pod: one line, exit 1
    assert "runs on host 'a'" in b.fails("stop", "rd", code=1)

    assert a("checkpoint", "rd").stdout.strip() == "rd@2"  # the newest: first and second
    write_keys(pod["address"], 80, 10)  # lost with the host
    follower = subprocess.Popen([*ZAP_CMD, "logs", "-f", "rd"], env=a.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # a zap command of A's that dies with it
    lose(a)
    follower.kill()
    follower.wait()

    out = b.json("host", "adopt", "a")["adopted"]
    assert len(out) == 1 and out[0]["adopted"] and out[0]["from"] == "rd@2", out
    assert not out[0]["address_kept"] and "new address" in out[0]["notes"][0]  # another subnet here
    rd = b.pod("rd")
    assert rd["host"] == "b" and rd["state"] == "running" and rd["address"] == out[0]["address"]
    wait_for(lambda: _answers(rd["address"]), what="the adopted redis to answer")
    assert memory_state(rd["address"]) == {**first, **second}
    assert aof_state(Path(rd["volume"])) == {**first, **second}
    b("checkpoint", "rd")  # it goes on as B's
    assert b.json("show", "rd@3")["host"] == "b"

    # A's state directory comes back: it never runs rd again, and says so
    cp = a("ps", check=False)
    assert cp.returncode == 0 and "rd" not in cp.stdout
    assert "pod rd was adopted by host b while this host was away" in cp.stderr
    line = a.fails("start", "rd", code=1)
    assert "adopted by host 'b'" in line and "will not start it again" in line
    assert "adopted by host 'b'" in a.fails("resume", "rd", code=1)
    assert a("ps", check=False).stderr == ""  # retired once
    redis_servers = [p for p in os.listdir("/proc") if p.isdigit() and _cmd(p).startswith("redis-server")]
    mine = [p for p in redis_servers if _in_home(p, (a.home, b.home))]
    assert len(mine) == 2, mine  # rd and rd-b, both on B: never a second rd


def _cmd(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _in_home(pid: str, homes) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return any(cwd.startswith(str(h)) for h in homes)
