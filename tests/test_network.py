"""Pods with networks of their own, and real services in them: Redis (with a client inside the
pod on one persistent connection, and clients outside it), an HTTP server published with -p,
branches at their own addresses. All traffic stays on this machine: loopback and the addresses
of the pods and namespaces these tests create."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from helpers import WORKLOADS, counted_past, counter_values, pod_holds, pod_processes, process_age, wait_for

REDIS = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no",
         "--protected-mode", "no"]  # fmt: skip


def values(volume: Path, name: str = "redis_values.txt") -> list[int]:
    return counter_values(volume, name)


def assert_consecutive(vals: list[int]) -> None:
    assert vals, "no values"
    for a, b in zip(vals, vals[1:]):
        assert b == a + 1, f"values jump from {a} to {b}"


def redis_cmd(host: str, port: int, *words: str) -> bytes:
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(("*%d\r\n" % len(words) + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)).encode())
        return c.recv(4096)


def redis_get(host: str, port: int, key: str) -> int:
    reply = redis_cmd(host, port, "GET", key)
    lines = reply.split(b"\r\n")
    return int(lines[1]) if lines[0] != b"$-1" else 0


def redis_agrees(address: str, volume: Path) -> bool:
    """Redis's counter (memory) lies between two reads of its client's file (the client goes on
    meanwhile; one answer may be on its way)."""
    before = values(volume)[-1]
    ctr = redis_get(address, 6379, "redis_values.txt")
    return before <= ctr <= values(volume)[-1] + 1


class OutsideClient(threading.Thread):
    """A client outside the pod on one connection: INCR ext every few ms until stopped; records
    every answer and how the connection ended."""

    def __init__(self, host: str, port: int):
        super().__init__(daemon=True)
        self.conn = socket.create_connection((host, port), timeout=30)
        self.values: list[int] = []
        self.error: str | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        buf = b""
        try:
            while not self.halt.is_set():
                self.conn.sendall(b"INCR ext\r\n")
                while b"\r\n" not in buf:
                    chunk = self.conn.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                self.values.append(int(line[1:]))
                time.sleep(0.005)
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def start_redis(zap, name: str, *opts: str) -> dict:
    zap("run", name, *opts, "--", *REDIS)
    pod = zap.pod(name)
    zap("exec", "-d", name, "--", "python3", str(WORKLOADS / "redis_client.py"))
    wait_for(lambda: len(values(Path(pod["volume"]))) > 20, what="the in-pod client to count")
    return pod


def test_net_modes_addresses_and_bad_input(zap):
    zap("run", "p1", "-p", "127.0.0.1:18090:8000", "--", "sleep", "600")
    zap("run", "p2", "--", "sleep", "600")
    zap("run", "n1", "--net", "none", "--", "sleep", "600")
    zap("run", "h1", "--net", "host", "--", "sleep", "600")
    p1, p2, n1, h1 = (zap.pod(n) for n in ("p1", "p2", "n1", "h1"))
    import ipaddress

    subnet = ipaddress.IPv4Network(zap.subnet)
    assert ipaddress.IPv4Address(p1["address"]) in subnet and p1["address"] != p2["address"]
    assert p1["net"] == "pod" and p1["ports"] == [{"host_ip": "127.0.0.1", "host_port": 18090, "pod_port": 8000,
                                                   "proto": "tcp"}]  # fmt: skip
    assert n1["address"] is None and h1["address"] is None and n1["net"] == "none" and h1["net"] == "host"
    ps = {p["name"]: p for p in zap.json("ps")["pods"]}
    assert ps["p1"]["address"] == p1["address"] and ps["p1"]["ports"] == p1["ports"]

    def addrs(name):
        out = zap("exec", name, "--", "ip", "-o", "-4", "addr", "show").stdout
        return {ln.split()[3].split("/")[0] for ln in out.splitlines()}

    assert addrs("p1") == {"127.0.0.1", p1["address"]}
    assert addrs("n1") == {"127.0.0.1"}
    assert str(subnet.network_address + 1) in addrs("h1")  # the host's own: it sees the bridge
    # pods reach each other (a refused connection came back from p1); a --net none pod reaches nothing
    probe = "import socket,sys; s=socket.socket(); s.settimeout(2); print(s.connect_ex((sys.argv[1], 9)))"
    assert zap("exec", "p2", "--", "python3", "-c", probe, p1["address"]).stdout.strip() == "111"
    assert zap("exec", "n1", "--", "python3", "-c", probe, p1["address"]).stdout.strip() == "101"
    assert zap("exec", "p1", "--", "hostname").stdout.strip() == "p1"

    zap.fails("run", "x1", "--net", "none", "-p", "8080:80", "--", "true", code=2)
    zap.fails("run", "x2", "-p", "80", "--", "true", code=2)
    zap.fails("run", "x3", "-p", "70000:80", "--", "true", code=2)
    zap.fails("run", "x4", "-p", "1.2.3:80:80", "--", "true", code=2)
    zap.fails("run", "x5", "-p", "18090:80/sctp", "--", "true", code=2)
    zap.fails("run", "x6", "-p", "18090:80", "--", "sleep", "1", code=2)  # 127.0.0.1:18090 is p1's
    zap.fails("run", "x7", "--net", "bogus", "--", "true", code=2)
    zap.fails("run", "x8", "--volume", "relative:/x", "--", "true", code=2)
    assert {p["name"] for p in zap.json("ps")["pods"]} == {"p1", "p2", "n1", "h1"}


def test_published_http_server_from_host_and_another_machine(zap):
    """An HTTP server published with -p is reached from the host (127.0.0.1 and the bridge
    address) and from another machine (a network namespace with its own veth); a branch
    published on another port serves its own, rolled-back files."""
    zap("run", "web", "-p", "18181:8000", "--", "python3", "-m", "http.server", "8000")
    web = zap.pod("web")
    vol = Path(web["volume"])
    (vol / "page.txt").write_text("v1\n")

    def fetch(url):
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    wait_for(lambda: _try(fetch, "http://127.0.0.1:18181/page.txt"), what="the published server")
    assert fetch("http://127.0.0.1:18181/page.txt") == "v1\n"
    assert fetch(f"http://{web['address']}:8000/page.txt") == "v1\n"
    zap("checkpoint", "web")
    (vol / "page.txt").write_text("v2\n")
    assert fetch("http://127.0.0.1:18181/page.txt") == "v2\n"

    # another machine: a namespace linked to the host by a veth of its own
    peer, hostif = f"{zap.bridge}-peer", f"{zap.bridge}p"
    base = zap.subnet.rsplit(".", 2)[0]
    host_ip, peer_ip = f"{base}.254.1", f"{base}.254.2"
    try:
        subprocess.run(["ip", "netns", "add", peer], check=True)
        subprocess.run(["ip", "link", "add", hostif, "type", "veth", "peer", "name", "eth0", "netns", peer], check=True)
        subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", hostif], check=True)
        subprocess.run(["ip", "link", "set", hostif, "up"], check=True)
        subprocess.run(["ip", "-n", peer, "addr", "add", f"{peer_ip}/30", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", peer, "link", "set", "eth0", "up"], check=True)
        out = subprocess.run(["ip", "netns", "exec", peer, "python3", "-c",
                              f"import urllib.request; print(urllib.request.urlopen('http://{host_ip}:18181/page.txt', "
                              "timeout=5).read().decode(), end='')"], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.stdout == "v2\n", out.stderr
    finally:
        subprocess.run(["ip", "netns", "del", peer])
        subprocess.run(["ip", "link", "del", hostif], capture_output=True)

    zap("branch", "web@1", "web-b", "-p", "18182:8000")
    b = zap.pod("web-b")
    assert b["address"] != web["address"] and b["ports"][0]["host_port"] == 18182
    wait_for(lambda: _try(fetch, "http://127.0.0.1:18182/page.txt"), what="the branch's published server")
    assert fetch("http://127.0.0.1:18182/page.txt") == "v1\n"
    assert fetch(f"http://{b['address']}:8000/page.txt") == "v1\n"
    assert fetch("http://127.0.0.1:18181/page.txt") == "v2\n"
    zap.fails("branch", "web@1", "web-c", "-p", "18182:8000", code=2)  # taken by web-b
    zap("rm", "-f", "web-b")
    rules = subprocess.run(["nft", "list", "table", "ip", f"zapckpt_{zap.bridge}"], capture_output=True, text=True)
    assert "18182" not in rules.stdout and "18181" in rules.stdout


def _try(fn, *a):
    try:
        return fn(*a) or True
    except OSError:
        return False


def test_redis_checkpoint_restore_branch_with_persistent_connections(zap):
    """Redis and a client inside the pod on one persistent connection: checkpoints at random
    moments, a rollback in place and a branch beside the original. The client's values (in a
    file) go on without a gap or a repeat from Redis's counter (in memory) every time."""
    pod = start_redis(zap, "rd", "-p", "16379:6379")
    vol = Path(pod["volume"])
    # a second client inside the pod, through the pod's own address rather than loopback
    zap("exec", "-d", "rd", "--", "env", f"REDIS_HOST={pod['address']}", "CLIENT_FILE=own_addr.txt", "python3",
        str(WORKLOADS / "redis_client.py"))  # fmt: skip
    counted_past(vol, 20, "the second in-pod client", "own_addr.txt")
    refs = []
    for _ in range(4):
        time.sleep(random.uniform(0.05, 0.4))
        refs.append(zap("checkpoint", "rd").stdout.strip())
    target = refs[1]
    snap = Path(zap.json("show", target)["snapshot"]["path"])
    at_ck = values(snap)
    assert_consecutive(at_ck)
    time.sleep(0.3)
    zap("restore", target)
    # files rolled back to the checkpoint's, then the same connection goes on from Redis's memory
    counted_past(vol, len(at_ck) + 20, "the restored client to count", "redis_values.txt")
    after = values(vol)
    assert after[: len(at_ck)] == at_ck
    assert_consecutive(after)
    log = zap("logs", "rd").stdout  # outside the volume: kept across the restore, not rolled back
    assert log.count("connected from port") == 2, log  # two clients, neither ever reconnected
    assert redis_agrees(pod["address"], vol)

    # branch while the original runs: own address, same ports, the in-pod connection survives
    zap("branch", refs[2], "rd-b")
    b = zap.pod("rd-b")
    bvol = Path(b["volume"])
    base = values(Path(zap.json("show", refs[2])["snapshot"]["path"]))
    counted_past(bvol, len(base) + 20, "the branch's client to count", "redis_values.txt")
    orig_before = values(vol)[-1]
    wait_for(lambda: values(vol)[-1] > orig_before + 20, what="the original to go on")
    assert_consecutive(values(bvol))
    assert_consecutive(values(vol))
    assert values(bvol)[: len(base)] == base
    # the client that used the original's own address goes on in the branch too
    own = values(bvol, "own_addr.txt")
    counted_past(bvol, len(own) + 20, "the branch's own-address client", "own_addr.txt")
    assert_consecutive(values(bvol, "own_addr.txt"))
    assert b["address"] != pod["address"]
    # each Redis answers at its own address with its own memory
    assert redis_agrees(b["address"], bvol) and redis_agrees(pod["address"], vol)
    assert zap("exec", "rd-b", "--", "cat", "/proc/self/net/dev", check=False).returncode == 0


def test_outside_client_connection_rules(zap):
    """A client outside the pod: its connection survives a checkpoint without a reset, is kept
    across `checkpoint --stop` + restore of that checkpoint, is reset by a rollback to an older
    state, and a branch does not disturb it (the branch's copy of it is closed)."""
    start_redis(zap, "rd", "-p", "16380:6379")
    client = OutsideClient("127.0.0.1", 16380)
    client.start()
    try:
        wait_for(lambda: len(client.values) > 20, what="the outside client")
        before_ck = client.values[-1]  # Redis's counter at rd@1 lies between these two
        zap("checkpoint", "rd")
        after_ck = client.values[-1]
        n = len(client.values)
        wait_for(lambda: len(client.values) > n + 20, what="the outside client after a checkpoint")
        assert client.error is None
        zap("branch", "rd@1", "rd-b")
        n = len(client.values)
        wait_for(lambda: len(client.values) > n + 20, what="the outside client after a branch")
        assert client.error is None
        # the branch kept no copy of the outside connection: only its in-pod one
        conns = zap("exec", "rd-b", "--", "ss", "-t", "-n", "-H", "state", "established").stdout
        peers = {ln.split()[-1].rsplit(":", 1)[0] for ln in conns.splitlines()}
        assert peers <= {"127.0.0.1"}, conns

        stop_ref = zap("checkpoint", "rd", "--stop").stdout.strip()
        n = len(client.values)
        time.sleep(0.5)
        assert client.error is None and len(client.values) == n  # held, not reset
        zap("restore", stop_ref)
        wait_for(lambda: len(client.values) > n + 20, what="the outside client after the restore of --stop")
        assert client.error is None
        assert_consecutive(client.values)

        last = client.values[-1]
        zap("restore", "rd@1")
        wait_for(lambda: client.error is not None, timeout=15, what="the outside connection to be reset")
        assert "Reset" in client.error or "closed" in client.error, client.error
        # clients reconnect at once, to Redis as it was at rd@1: its counter rolled back
        rolled_back = redis_get("127.0.0.1", 16380, "ext")
        assert before_ck <= rolled_back <= after_ck < last, (before_ck, rolled_back, after_ck, last)
    finally:
        client.stop()


def test_shm_is_private_and_rolled_back(zap):
    """POSIX shared memory (/dev/shm) is the pod's own: in the checkpoint, rolled back by a
    restore, and not shared between an original and its branch."""
    # shm_open() is an open() under /dev/shm: a segment mapped shared, counting.
    script = ("import mmap, os, struct, time\n"
              "fd = os.open('/dev/shm/zapseg', os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, 8)\n"
              "m = mmap.mmap(fd, 8)\n"
              "i = 0\n"
              "while True:\n"
              "    i += 1; m[:8] = struct.pack('q', i); time.sleep(0.01)\n")  # fmt: skip
    zap("run", "shm", "--", "python3", "-c", script)
    pod = zap.pod("shm")
    read = "import struct; print(struct.unpack('q', open('/dev/shm/zapseg', 'rb').read(8))[0])"

    def seg(name):
        return int(zap("exec", name, "--", "python3", "-c", read).stdout)

    wait_for(lambda: zap("exec", "shm", "--", "test", "-e", "/dev/shm/zapseg", check=False).returncode == 0,
             what="the segment")  # fmt: skip
    assert not Path("/dev/shm/zapseg").exists()  # not the host's
    assert (Path(pod["volume"]) / ".zap/shm/zapseg").exists()
    zap("checkpoint", "shm")
    at = seg("shm")
    time.sleep(3.0)
    before = seg("shm")
    assert before > at + 60
    zap("restore", "shm@1")
    # Rolled back to about `at`, then counting again: far below `before` unless the restore and
    # the read took seconds (a loaded machine takes about one).
    assert seg("shm") < before - 50
    zap("branch", "shm@1", "shm-b")
    time.sleep(0.5)
    zap("stop", "shm-b")
    frozen_b = int.from_bytes((Path(zap.volume("shm-b")) / ".zap/shm/zapseg").read_bytes()[:8], "little")
    a1 = seg("shm")
    time.sleep(0.5)
    assert seg("shm") > a1 + 10  # the original goes on in its own segment
    assert int.from_bytes((Path(zap.volume("shm-b")) / ".zap/shm/zapseg").read_bytes()[:8], "little") == frozen_b


def test_tmp_is_private_and_rolled_back(zap, tmp_path):
    """A pod without --rootfs has a /tmp of its own (`.zap/tmp` in its volume): the host's is not
    seen, files there are in the checkpoint, rolled back, not shared with a branch, and not
    reported as outside files. The state directory here is under the host's /tmp itself, and
    a declared volume can still be placed under the private /tmp."""
    sentinel = Path(tempfile.mkdtemp(prefix="zaptest-host-", dir="/tmp"))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("shared")
    try:
        script = ("import os, time\n"
                  "f = open('/tmp/count.txt', 'a')\n"
                  "i = 0\n"
                  "while True:\n"
                  "    i += 1; f.write('%d\\n' % i); f.flush(); time.sleep(0.01)\n")  # fmt: skip
        zap("run", "t", "-v", f"{shared}:/tmp/data", "--", "python3", "-c", script)
        assert zap.pod("t")["private_tmp"] is True
        vol = zap.volume("t")
        mine = vol / ".zap/tmp/count.txt"
        counted_past(vol / ".zap/tmp", 5, "the pod's /tmp file", "count.txt")
        assert not Path("/tmp/count.txt").exists()  # not the host's
        assert zap("exec", "t", "--", "test", "-e", str(sentinel), check=False).returncode == 1
        assert zap("exec", "t", "--", "cat", "/tmp/data/in.txt").stdout == "shared"
        rec = zap.json("checkpoint", "t")
        assert rec["outside_files"] == []
        at = len(values(Path(zap.json("show", "t@1")["snapshot"]["path"]) / ".zap/tmp", "count.txt"))
        assert at > 5
        time.sleep(0.5)
        zap("restore", "t@1")
        # the restored process goes on appending to its own /tmp file from where it was
        vals = wait_for(lambda: (v := values(vol / ".zap/tmp", "count.txt")) and len(v) > at + 10 and v,
                        what="the restored pod to count")  # fmt: skip
        assert_consecutive(vals)
        zap("branch", "t@1", "t-b")
        bvol = zap.volume("t-b")
        counted_past(bvol / ".zap/tmp", at + 10, "the branch to count", "count.txt")
        zap("stop", "t-b")
        n_b = len(values(bvol / ".zap/tmp", "count.txt"))
        n = len(values(vol / ".zap/tmp", "count.txt"))
        counted_past(vol / ".zap/tmp", n + 10, "the original to count", "count.txt")
        assert len(values(bvol / ".zap/tmp", "count.txt")) == n_b  # separate files
        assert mine.exists() and not Path("/tmp/count.txt").exists()
        # -v DIR:/tmp would share a /tmp on purpose, but this state directory is in /tmp
        assert "hide the pod's own files" in zap.fails("run", "h", "-v", f"{shared}:/tmp", "--", "true", code=2)
    finally:
        shutil.rmtree(sentinel)


def test_pty_program_survives_branch(zap):
    """A process talking to a child over a pseudo-terminal: the pod's /dev/pts is its own
    instance, so a branch gets the same pty numbers back while the original keeps its own."""
    script = ("import os, pty, time\n"
              "pid, fd = pty.fork()\n"
              "if pid == 0:\n"
              "    import sys\n"
              "    for line in sys.stdin: print('echo', line.strip(), flush=True)\n"
              "f = open('pty.txt', 'a')\n"
              "i = 0\n"
              "while True:\n"
              "    i += 1; os.write(fd, b'%d\\n' % i); out = b''\n"
              "    while b'echo %d' % i not in out: out += os.read(fd, 1024)\n"
              "    f.write('%d\\n' % i); f.flush(); time.sleep(0.01)\n")  # fmt: skip
    zap("run", "tty", "--", "python3", "-c", script)
    vol = zap.volume("tty")
    counted_past(vol, 10, "the pty round trips", "pty.txt")
    assert "ptmx" in zap("exec", "tty", "--", "ls", "/dev/pts").stdout
    zap("checkpoint", "tty")
    zap("branch", "tty@1", "tty-b")
    bvol = zap.volume("tty-b")
    base = values(Path(zap.json("show", "tty@1")["snapshot"]["path"]), "pty.txt")
    counted_past(bvol, len(base) + 20, "the branch's pty round trips", "pty.txt")
    assert_consecutive(values(bvol, "pty.txt"))
    n = len(values(vol, "pty.txt"))
    counted_past(vol, n + 20, "the original's pty round trips", "pty.txt")


def test_exec_detached_daemon_is_checkpointable(zap):
    zap("run", "d", "--", "sleep", "600")
    zap("exec", "-d", "d", "--", "sh", "-c", "while :; do date +%s%N >> daemon.txt; sleep 0.05; done")
    vol = zap.volume("d")
    wait_for(lambda: (vol / "daemon.txt").exists(), what="the daemon")
    rec = zap.json("checkpoint", "d")
    assert any(p["cmdline"][:2] == ["sh", "-c"] for p in rec["processes"])
    zap.fails("exec", "-d", "d", code=2)


def test_outside_file_warning_strict_and_declared_volume(zap, tmp_path, host_dir):
    outside = host_dir / "outside.txt"
    outside.write_text("x")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("y")
    inside = f"{zap.home}/mnt/o/shared"  # a volume pod's mount points live in its own path
    zap.fails("run", "o", "--volume", f"{shared}:/nonexistent/zap-test", "--", "true", code=2)
    zap("run", "o", "--volume", f"{shared}:{inside}", "--", "python3", "-c",
        f"import time; a = open({str(outside)!r}); b = open('{inside}/in.txt'); time.sleep(600)")  # fmt: skip
    assert zap.pod("o")["volumes"] == [{"host": str(shared), "pod": inside}]
    wait_for(lambda: pod_holds(zap, "o", str(outside)) and pod_holds(zap, "o", "/in.txt"), what="both files open")
    cp = zap("checkpoint", "o", "--json")
    rec = json.loads(cp.stdout)
    assert [f["path"] for f in rec["outside_files"]] == [str(outside)]
    warnings = cp.stderr.strip().splitlines()
    outside_line = next(ln for ln in warnings if "outside" in ln)
    assert outside_line.startswith("zap: warning:") and str(outside) in outside_line and str(shared) not in outside_line
    assert any(ln.startswith("zap: warning: not rolled back") and str(shared) in ln for ln in warnings)
    line = zap.fails("checkpoint", "o", "--strict", code=1)
    assert str(outside) in line
    assert len(zap.json("list", "o")["checkpoints"]) == 1


NGINX_CONF = """daemon off;
master_process on;
worker_processes 2;
user root;
pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 3600s;
    server {{
        listen 8080;
        location /seq {{ return 200 "$connection $connection_requests\\n"; }}
        location / {{ root {p}/www; }}
    }}
}}
"""


def http_values(volume: Path) -> list[tuple[int, int]]:
    try:
        data = (volume / "http_values.txt").read_bytes()
    except FileNotFoundError:
        return []
    return [tuple(map(int, ln.split())) for ln in data[: data.rfind(b"\n") + 1].splitlines()]


def assert_one_connection(vals: list[tuple[int, int]]) -> None:
    assert vals and len({c for c, _ in vals}) == 1, f"more than one connection: {sorted({c for c, _ in vals})}"
    reqs = [r for _, r in vals]
    for a, b in zip(reqs, reqs[1:]):
        assert b == a + 1, f"request numbers jump from {a} to {b}"


def test_nginx_keepalive_client_restore_and_branch(zap):
    """nginx (a master and two workers) with a client inside the pod on one keep-alive
    connection: nginx numbers the requests of a connection in its memory, the client writes
    each number to a file. After a rollback and in a branch the numbers go on by one, on the
    same connection: memory, socket and files were captured together."""
    conf = f"{zap.home}/mnt/ng/nginx.conf"  # where the pod will see its volume
    zap("create", "ng", "-p", "18280:8080", "--", "nginx", "-c", conf, "-e", f"{zap.home}/mnt/ng/error.log")
    pod = zap.pod("ng")
    vol, path = Path(pod["volume"]), pod["path"]
    (vol / "www").mkdir()
    (vol / "www" / "index.html").write_text("one\n")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (vol / "tmp" / d).mkdir(parents=True)
    (vol / "nginx.conf").write_text(NGINX_CONF.format(p=path))
    zap("start", "ng")
    zap("exec", "-d", "ng", "--", "python3", str(WORKLOADS / "http_client.py"))
    wait_for(lambda: len(http_values(vol)) > 50, what="the keep-alive client")

    def fetch(url):
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    assert fetch("http://127.0.0.1:18280/index.html") == "one\n"
    refs = []
    for _ in range(3):
        time.sleep(random.uniform(0.05, 0.3))
        refs.append(zap("checkpoint", "ng").stdout.strip())
    (vol / "www" / "index.html").write_text("two\n")
    assert fetch("http://127.0.0.1:18280/index.html") == "two\n"
    at_ck = http_values(Path(zap.json("show", refs[0])["snapshot"]["path"]))
    zap("restore", refs[0])
    wait_for(lambda: len(http_values(vol)) > len(at_ck) + 50, what="the restored client")
    after = http_values(vol)
    assert after[: len(at_ck)] == at_ck
    assert_one_connection(after)
    assert fetch("http://127.0.0.1:18280/index.html") == "one\n"  # the files came back too

    zap("branch", refs[1], "ng-b", "-p", "18281:8080")
    bvol = zap.volume("ng-b")
    base = http_values(Path(zap.json("show", refs[1])["snapshot"]["path"]))
    wait_for(lambda: len(http_values(bvol)) > len(base) + 50, what="the branch's client")
    assert_one_connection(http_values(bvol))
    n = len(http_values(vol))
    wait_for(lambda: len(http_values(vol)) > n + 50, what="the original's client")
    assert_one_connection(http_values(vol))
    assert fetch("http://127.0.0.1:18281/index.html") == "one\n"
    procs = zap.json("show", refs[1])["processes"]
    assert sum(p["cmdline"][0].startswith("nginx") for p in procs if p["cmdline"]) == 3  # master and two workers
    assert [p["cmdline"][:2] for p in procs if p["pid"] == 1] == [["catatonit", "--"]]  # under the pod's init


def test_processes_that_exit_right_after_a_restore_are_reported(zap, tmp_path):
    """A helper of the pod that dies as soon as a marker appears in a declared (shared, never
    rolled back) volume: restored after the marker was made, it exits at once, and zap says so
    instead of a plain "restored"."""
    shared = tmp_path / "shared"
    shared.mkdir()
    inside = f"{zap.home}/mnt/ex/shared"
    zap("run", "ex", "--volume", f"{shared}:{inside}", "--", "sleep", "600")
    zap("exec", "-d", "ex", "--", "python3", "-c",
        f"import os, time\nwhile not os.path.exists('{inside}/marker'): time.sleep(0.001)\n")  # fmt: skip
    # the helper is no short-lived one (zap leaves those out of the report): older than a second
    helper = wait_for(lambda: [p for p in pod_processes(zap, "ex") if b"marker" in Path(f"/proc/{p}/cmdline").read_bytes()],
                      what="the helper")[0]  # fmt: skip
    wait_for(lambda: process_age(helper) > 1.2, what="the helper to be a second old")
    cp = zap("checkpoint", "ex")
    assert "exited" not in cp.stderr
    (shared / "marker").touch()
    cp = zap("restore", "ex@1")
    # said when it reports, or (a lazy restore reports before the pod's memory is all in, and
    # the helper's first moments may come after) in the pod's note, which `zap ps` shows
    said = cp.stderr + (zap.pod("ex").get("note") or "")
    assert "exited right after the restore" in said and "python3" in said, said


def mariadb(path: str) -> list[str]:
    """The server in the pod whose files are at `path` (as the pod sees them: mariadbd takes a
    relative datadir from its basedir, /usr). No native AIO: CRIU cannot dump io_uring."""
    return ["mariadbd", "--no-defaults", "--user=root", f"--datadir={path}/data", "--socket=/tmp/mariadb.sock",
            "--port=3306", "--bind-address=0.0.0.0", "--skip-name-resolve", "--innodb-use-native-aio=0",
            "--innodb-buffer-pool-size=16M", "--skip-log-bin", f"--log-error={path}/mariadb.err",
            "--pid-file=/tmp/mariadb.pid"]  # fmt: skip
# A client that holds ONE session: a counter in a session variable (server memory), each value
# inserted into an InnoDB table (files in the volume) and printed by the client into session.txt.
MARIADB_SESSION = ('(echo "SET @n = 0;"; while :; do echo "SET @n = @n + 1; INSERT INTO t.c VALUES (@n); SELECT @n;"; '
                   'sleep 0.02; done) | mariadb --no-defaults -h 127.0.0.1 -P 3306 -u root -N -B --unbuffered >> session.txt')  # fmt: skip


def _sql(zap, pod: str, query: str) -> str:
    return zap("exec", pod, "--", "mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", "3306", "-u", "root", "-N", "-B",
               "-e", query).stdout.strip()  # fmt: skip


def _table_agrees(zap, pod: str) -> int:
    """The table has every value from 1 to its maximum once: no gap, no repeat."""
    n, top = map(int, _sql(zap, pod, "SELECT COUNT(*), COALESCE(MAX(v), 0) FROM t.c").split())
    assert n == top, (pod, n, top)
    return top


def test_mariadb_session_survives_checkpoint_restore_and_branch(zap):
    """MariaDB (a database server, run as root: PostgreSQL cannot be checkpointed on a machine
    whose root lacks CAP_SYS_RESOURCE) with a client inside the pod holding one session over TCP:
    the session variable (memory), the table (files) and the client's output agree at every
    checkpoint, after a rollback and in a branch beside the original."""
    zap("create", "db", "--", *mariadb(f"{zap.home}/mnt/db"))
    vol = zap.volume("db")
    subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={vol}/data",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, capture_output=True)  # fmt: skip
    zap("start", "db")
    wait_for(lambda: zap("exec", "db", "--", "mariadb", "--no-defaults", "-h", "127.0.0.1", "-u", "root", "-e", "SELECT 1",
                         check=False).returncode == 0, timeout=60, what="MariaDB")  # fmt: skip
    _sql(zap, "db", "CREATE DATABASE t; CREATE TABLE t.c (v INT PRIMARY KEY) ENGINE=InnoDB")
    zap("exec", "-d", "db", "--", "sh", "-c", MARIADB_SESSION)
    counted_past(vol, 20, "the session", "session.txt")
    for _ in range(3):
        time.sleep(random.uniform(0.05, 0.4))
        zap("checkpoint", "db")
    refs = [c["ref"] for c in zap.json("list", "db")["checkpoints"]]
    # At each checkpoint the client's file (volume) never ran ahead of the session (memory)
    time.sleep(0.5)
    printed = values(vol, "session.txt")
    assert_consecutive(printed)
    assert _table_agrees(zap, "db") >= len(printed)  # every value printed was committed first
    # Rollback in place: the same session goes on from the checkpoint's value
    base = values(Path(zap.json("show", refs[0])["snapshot"]["path"]), "session.txt")
    zap("restore", refs[0])
    vals = wait_for(lambda: (v := values(vol, "session.txt")) and len(v) > len(base) + 30 and v, what="the restored session")
    assert vals[: len(base)] == base
    assert_consecutive(vals)
    _table_agrees(zap, "db")
    # A branch: its own server and session from the same state; the original goes on
    zap("branch", refs[1], "db-b")
    bvol = zap.volume("db-b")
    bbase = values(Path(zap.json("show", refs[1])["snapshot"]["path"]), "session.txt")
    bvals = wait_for(lambda: (v := values(bvol, "session.txt")) and len(v) > len(bbase) + 30 and v, what="the branch's session")
    assert bvals[: len(bbase)] == bbase
    assert_consecutive(bvals)
    _table_agrees(zap, "db-b")
    n = len(values(vol, "session.txt"))
    counted_past(vol, n + 30, "the original's session", "session.txt")
    assert_consecutive(values(vol, "session.txt"))
    _table_agrees(zap, "db")
