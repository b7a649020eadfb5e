"""A fleet on this machine: two hosts (state directories with their own pools and bridges, each in
a network namespace of its own with the same pod subnet) sharing the session's PostgreSQL catalog
and SeaweedFS store. Any host branches any checkpoint, a lost
host's pods are adopted from the shared state alone, and the lost host, come back, never runs
them again. What the programs themselves know is the proof: Redis's memory against its own
append-only file."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
import signal
import subprocess
from pathlib import Path


import pytest

from helpers import proc_state, wait_for

REDIS = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", "."]  # fmt: skip


def redis(h, address: str, *words: str) -> object:
    """One command over RESP from inside host h's network; the reply decoded (bulk strings as
    str, arrays as lists)."""
    with h.connect((address, 6379)) as c:
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


def memory_state(h, address: str) -> dict[str, str]:
    keys = redis(h, address, "KEYS", "*")
    return {k: redis(h, address, "GET", k) for k in keys}


def write_keys(h, address: str, start: int, n: int) -> dict[str, str]:
    out = {}
    for i in range(start, start + n):
        assert redis(h, address, "SET", f"k{i}", f"v{i}-{os.urandom(4).hex()}") == "OK"
        out[f"k{i}"] = redis(h, address, "GET", f"k{i}")
    return out


def start_redis(h, name: str) -> dict:
    h("run", name, "--", *REDIS)
    pod = h.pod(name)
    wait_for(lambda: _answers(h, pod["address"]), what=f"{name}'s redis to answer")
    return pod


def _answers(h, address: str) -> bool:
    try:
        return redis(h, address, "PING") == "PONG"
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
    for h in (a, b):  # each host's bridge is in its own network, not this machine's
        assert subprocess.run([*h.inside, "ip", "link", "show", a.bridge], capture_output=True).returncode == (0 if h is a else 1)
    assert subprocess.run(["ip", "link", "show", a.bridge], capture_output=True).returncode != 0
    first = write_keys(a, pod["address"], 0, 50)
    assert a("checkpoint", "rd").stdout.strip() == "rd@1"
    ck1 = a.json("show", "rd@1")
    assert ck1["host"] == "a" and ck1["volume_in_store"]
    second = write_keys(a, pod["address"], 50, 30)  # after rd@1: not in it

    # B branches A's checkpoint: files and memory from the shared store only
    b("branch", "rd@1", "rd-b")
    br = b.pod("rd-b")
    assert br["host"] == "b" and br["address"] != pod["address"]
    wait_for(lambda: _answers(b, br["address"]), what="the branch's redis to answer")
    assert memory_state(b, br["address"]) == first
    assert aof_state(Path(br["volume"])) == first  # its memory is what its own AOF says
    assert memory_state(a, pod["address"]) == {**first, **second}  # the original runs on untouched
    assert [p["name"] for p in b.json("ps")["pods"]] == ["rd-b"]
    everyone = {p["name"]: p["host"] for p in b.json("ps", "--all-hosts")["pods"]}
    assert everyone == {"rd": "a", "rd-b": "b"}
    # B may not act on A's pod: one line, exit 1
    assert "runs on host 'a'" in b.fails("stop", "rd", code=1)

    assert a("checkpoint", "rd").stdout.strip() == "rd@2"  # the newest: first and second
    write_keys(a, pod["address"], 80, 10)  # lost with the host
    follower = subprocess.Popen([*a.cmd, "logs", "-f", "rd"], env=a.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # a zap command of A's that dies with it
    lose(a)
    follower.kill()
    follower.wait()

    out = b.json("host", "adopt", "a")["adopted"]
    assert len(out) == 1 and out[0]["adopted"] and out[0]["from"] == "rd@2", out
    # the hosts share a pod subnet (each on a network of its own): the address stays
    assert out[0]["address_kept"] and out[0]["address"] == pod["address"], out
    rd = b.pod("rd")
    assert rd["host"] == "b" and rd["state"] == "running" and rd["address"] == pod["address"]
    wait_for(lambda: _answers(b, rd["address"]), what="the adopted redis to answer")
    assert memory_state(b, rd["address"]) == {**first, **second}
    assert aof_state(Path(rd["volume"])) == {**first, **second}
    b("checkpoint", "rd")  # it goes on as B's
    assert b.json("show", "rd@3")["host"] == "b"
    b("restore", "rd@1")  # taken on the lost host: from the store (and b's copy of its volume)
    wait_for(lambda: _answers(b, rd["address"]) if b.pod("rd")["address"] == rd["address"] else False, what="rd@1")
    assert memory_state(b, rd["address"]) == first == aof_state(Path(rd["volume"]))

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


@pytest.fixture
def bare(s3_server, pg_url):
    """A state directory nothing has been done in yet (its zap init is the test's)."""
    from conftest import FleetHost, _leftovers

    home = Path(tempfile.mkdtemp(prefix="zapbare-", dir="/tmp"))
    h = FleetHost(home, "x", s3_server.env)
    yield h
    h("deinit", "--purge", "--yes", check=False)
    left = _leftovers(home)
    shutil.rmtree(home, ignore_errors=True)
    assert not left, left


def test_bad_catalogs_and_stores_are_one_line_with_the_fix(bare, pg_server, pg_url, s3_server, s3_store):
    url, endpoint, env = s3_store
    db = pg_url.split("/")[3].split("?")[0]
    sock = str(pg_server.sock)
    assert "unknown catalog URL scheme 'mysql'" in bare.fails("init", "--catalog", "mysql://h/db", code=2)
    assert "unknown catalog URL scheme" in bare.fails("ps", env={"ZAP_CATALOG": "redis://x"}, code=2)
    line = bare.fails("init", "--catalog", f"postgresql:///nodb?host={sock}", code=1)
    assert "database 'nodb' does not exist" in line and "createdb nodb" in line
    line = bare.fails("init", "--catalog", f"postgresql:///{db}?host=/nonexistent", code=1)
    assert "cannot reach the catalog at postgresql:///" in line
    line = bare.fails("init", "--catalog", f"postgresql://nobody@/{db}?host={sock}", code=1)
    assert "refused the login" in line and 'role "nobody" does not exist' in line
    line = bare.fails("init", "--catalog", f"postgresql://root:s3cret@/{db}?host=/nonexistent", code=1)
    assert "s3cret" not in line and "root:***@" in line  # a password never printed
    assert not (bare.home / "config.json").exists()  # nothing kept of a catalog that failed
    assert "bad store URL" in bare.fails("init", "--catalog", pg_url, "--store", "http://x/y", code=2)
    assert "bad --s3-endpoint" in bare.fails("init", "--catalog", pg_url, "--store", url, "--s3-endpoint", "ftp:/x", code=2)
    line = bare.fails("init", "--catalog", pg_url, "--store", "s3://no-such-bucket/p", "--s3-endpoint", endpoint, code=1)
    assert "the bucket 'no-such-bucket' does not exist" in line and "s3 mb" in line
    line = bare.fails("init", "--catalog", pg_url, "--store", url, "--s3-endpoint", endpoint,
                      env={"AWS_SECRET_ACCESS_KEY": "wrong"}, code=1)  # fmt: skip
    assert "refused zap's credentials" in line and "AWS_SECRET_ACCESS_KEY" in line
    line = bare.fails("init", "--catalog", pg_url, "--store", url, "--s3-endpoint", "http://127.0.0.1:9", code=1)
    assert "cannot reach the image store at http://127.0.0.1:9" in line
    no_creds = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": str(bare.home), "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}  # fmt: skip
    line = bare.fails("init", "--catalog", pg_url, "--store", url, "--s3-endpoint", endpoint, env=no_creds, code=1)
    assert "no credentials for the image store" in line
    # a store another fleet (another catalog) made is refused
    other = pg_server.new_database()
    try:
        from conftest import FleetHost

        home2 = Path(tempfile.mkdtemp(prefix="zapbare2-", dir="/tmp"))
        o = FleetHost(home2, "o", env)
        o("init", "--size", "1G", "--catalog", pg_server.url(other), "--host", "o", "--store", url, "--s3-endpoint", endpoint)
        o("deinit", "--purge", "--yes")
        shutil.rmtree(home2, ignore_errors=True)
    finally:
        pg_server.drop_database(other)
    line = bare.fails("init", "--catalog", pg_url, "--store", url, "--s3-endpoint", endpoint, code=1)
    assert "holds the image store of another fleet" in line and "another bucket or prefix" in line
    # the same store, another prefix: fine; a second host of a catalog without a shared store is refused
    bare("init", "--size", "1G", "--catalog", pg_url, "--host", "x")
    from conftest import FleetHost

    home3 = Path(tempfile.mkdtemp(prefix="zapbare3-", dir="/tmp"))
    y = FleetHost(home3, "y", env)
    try:
        line = y.fails("init", "--size", "1G", "--catalog", pg_url, "--host", "y", code=2)
        assert "kept on the disk of host 'x'" in line and "--store s3://" in line
        assert "host name 'x' is taken" in y.fails("init", "--catalog", pg_url, "--host", "x", code=2)
    finally:
        y("deinit", "--purge", "--yes", check=False)
        shutil.rmtree(home3, ignore_errors=True)
    s3_server.client().delete_object(Bucket=url.split("/")[2], Key=url.split("/", 3)[3] + "/zapckpt-store.json")
    bare("init", "--store", url, "--s3-endpoint", endpoint)  # a store for the fleet of one, given later
    assert "this fleet's image store is" in bare.fails("init", "--store", url + "-2", "--s3-endpoint", endpoint, code=2)


def _objects(fleet, under: str) -> list[str]:
    c = fleet.s3.client()
    prefix = fleet.store.split("/", 3)[3] + "/" + under
    return [o["Key"] for o in c.list_objects_v2(Bucket=fleet.bucket, Prefix=prefix).get("Contents", [])]


def test_objects_deleted_or_left_behind_zaps_back_are_found(fleet):
    """An object deleted from the store behind zap's back is reported by `zap verify` with the
    checkpoints it damages (even where a host still has its copy), another host's branch of such
    a checkpoint fails in one line without leaving anything; an object no row names is
    unrecorded, and --repair removes it."""
    a, b = fleet.a, fleet.b
    a("run", "c", "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > n; sleep 0.05; done")
    wait_for(lambda: (Path(a.pod("c")["volume"]) / "n").exists(), what="c to write")
    a("checkpoint", "c")
    a("checkpoint", "c")
    assert a("verify").returncode == 0
    c = fleet.s3.client()
    streams = sorted(_objects(fleet, "volumes/"))
    first = a.json("show", "c@1")["id"]
    victim = next(k for k in streams if k.endswith(first))
    c.delete_object(Bucket=fleet.bucket, Key=victim)  # c@2's stream is incremental on it
    cp = a("verify", check=False)
    assert cp.returncode == 1, cp.stdout
    assert f"volume stream volumes/{first} is missing from the image store; affects c@1, c@2" in cp.stdout
    line = b.fails("branch", "c@2", "c-b", code=1)
    assert "missing from the image store" in line, line
    assert [p["name"] for p in b.json("ps")["pods"]] == []
    # a pack: every checkpoint whose chunks it holds is reported
    packs = _objects(fleet, "packs/")
    for k in packs:
        c.delete_object(Bucket=fleet.bucket, Key=k)
    doc = json.loads(a("verify", "--json", check=False).stdout)
    assert not doc["ok"] and any("missing from the image store" in d["what"] and "c@1" in d["affects"] for d in doc["damage"])
    # an object nobody wrote through zap: unrecorded, removed by --repair
    stray = fleet.store.split("/", 3)[3] + "/packs/ab/ab" + "0" * 30 + ".pack"
    c.put_object(Bucket=fleet.bucket, Key=stray, Body=b"not a pack")
    doc = json.loads(a("verify", "--json", check=False).stdout)
    assert any(stray.split("/", 1)[1] in u for u in doc["unrecorded"]), doc["unrecorded"]
    a("verify", "--repair", check=False)
    assert stray not in _objects(fleet, "packs/")
    a("rm", "--force", "--yes", "c")


def _counter(h, name: str) -> Path:
    h("run", name, "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > n; sleep 0.02; done")
    vol = Path(h.pod(name)["volume"])
    wait_for(lambda: (vol / "n").exists() and (vol / "n").read_text().strip(), what=f"{name} to count")
    return vol


def _n(vol: Path) -> int:
    return int((vol / "n").read_text().strip() or 0)


def _runs_on(h, name: str, vol: Path) -> None:
    """The pod runs, not frozen, and its counter goes on."""
    pod = h.pod(name)
    assert pod["state"] == "running", pod["state"]
    before = _n(vol)
    wait_for(lambda: _n(vol) > before + 5, what=f"{name} to go on counting")


def _stopped_at(h, point: str, tmp: Path, *args: str) -> subprocess.Popen:
    """zap ARGS, started and held at fault point `point` (ZAP_FAULT=wait@point) until released."""
    env = dict(h.env, ZAP_FAULT=f"wait@{point}", ZAP_FAULT_DIR=str(tmp))
    p = subprocess.Popen([*h.cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp / f"{point}.reached").exists() or p.poll() is not None, what=f"zap {args[0]} at {point}")
    assert p.poll() is None, p.communicate()
    return p


def _release(p: subprocess.Popen, point: str, tmp: Path) -> tuple[int, str]:
    (tmp / f"{point}.go").touch()
    out, err = p.communicate(timeout=120)
    return p.returncode, err


def _store_matches_catalog(fleet) -> None:
    """Every pack and stream object is named by a row, and the other way round."""
    db = fleet.db
    packs = set(fleet.pg.psql(db, "SELECT name FROM packs").split())
    streams = set(fleet.pg.psql(db, "SELECT object FROM volume_streams").split())
    prefix = fleet.store.split("/", 3)[3] + "/"
    have_packs = {k.rsplit("/", 1)[1] for k in _objects(fleet, "packs/")}
    have_streams = {k[len(prefix):] for k in _objects(fleet, "volumes/")}
    assert (have_packs, have_streams) == (packs, streams)


def test_the_store_lost_during_a_checkpoint_or_a_restore(cut_fleet, tmp_path):
    f = cut_fleet
    a, b = f.a, f.b
    a("init", "--cache-size", "1")  # nothing stays in a's cache: a restore must fetch
    vol = _counter(a, "c")
    a("checkpoint", "c")
    # lost before the upload: the checkpoint fails in one line, the pod runs on, nothing is recorded
    p = _stopped_at(a, "checkpoint:ingested", tmp_path, "checkpoint", "c")
    f.store_link.cut()
    rc, err = _release(p, "checkpoint:ingested", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "cannot reach the image store" in err, err
    _runs_on(a, "c", vol)
    assert [c["ref"] for c in a.json("list")["checkpoints"]] == ["c@1"]
    # restore and branch need what only the store has: refused, nothing changed
    line = a.fails("restore", "c@1", code=1)
    assert "cannot reach the image store" in line, line
    _runs_on(a, "c", vol)
    assert "cannot reach the image store" in b.fails("branch", "c@1", "c-b", code=1)
    assert b.json("ps")["pods"] == [] and not any((b.home / "pool" / "pods").iterdir())
    f.store_link.mend()
    # lost after the pack went up: zap cannot take it back now, its intent record stays, and
    # the first command once the store answers again removes it
    tmp2 = tmp_path / "2"
    tmp2.mkdir()
    p = _stopped_at(a, "checkpoint:uploaded", tmp2, "checkpoint", "c")
    f.store_link.cut()
    rc, err = _release(p, "checkpoint:uploaded", tmp2)
    assert rc == 1 and "cannot reach the image store" in err, err
    _runs_on(a, "c", vol)
    f.store_link.mend()
    cp = a("ps")
    assert "recovered: checkpoint of c interrupted" in cp.stderr and "undone" in cp.stderr, cp.stderr
    _store_matches_catalog(f)
    # and everything works again
    assert a("checkpoint", "c").stdout.strip() == "c@2"  # failed checkpoints took no number
    a("restore", "c@1")
    b("branch", "c@2", "c-b")
    _store_matches_catalog(f)


def test_the_catalog_lost_during_a_checkpoint(cut_fleet, tmp_path):
    f = cut_fleet
    a = f.a
    vol = _counter(a, "c")
    a("checkpoint", "c")
    pids = [int(x) for x in subprocess.run(["pgrep", "-f", "while :; do i="], capture_output=True, text=True).stdout.split()]
    p = _stopped_at(a, "checkpoint:volume-sent", tmp_path, "checkpoint", "c")  # both halves up, not recorded
    f.catalog_link.cut()
    rc, err = _release(p, "checkpoint:volume-sent", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "cannot reach the catalog" in err, err
    assert pids and all(proc_state(q) not in ("T", "t", None) for q in pids)  # never left frozen
    before = _n(vol)
    wait_for(lambda: _n(vol) > before + 5, what="c to go on counting")
    snaps = sorted(x.name for x in (a.home / "pool" / "snapshots").iterdir())
    assert len(snaps) == 1  # the new snapshot is gone again
    line = a.fails("ps", code=1)
    assert "cannot reach the catalog" in line
    f.catalog_link.mend()
    cp = a("ps")
    assert "recovered: checkpoint of c interrupted" in cp.stderr, cp.stderr  # its record, settled now
    assert [c["ref"] for c in a.json("list")["checkpoints"]] == ["c@1"]
    _store_matches_catalog(f)
    assert a("checkpoint", "c").stdout.strip() == "c@2"
    _store_matches_catalog(f)
    # lost during a restore, before anything changed: refused, the pod as it was
    tmp2 = tmp_path / "2"
    tmp2.mkdir()
    p = _stopped_at(a, "restore:images", tmp2, "restore", "c@1")
    f.catalog_link.cut()
    rc, err = _release(p, "restore:images", tmp2)
    assert rc == 1 and "cannot reach the catalog" in err, err
    before = _n(vol)
    wait_for(lambda: _n(vol) > before + 5, what="c to go on counting")  # never restored, never stopped
    f.catalog_link.mend()
    a("ps")  # anything it left to settle
    assert a.pod("c")["state"] == "running" and a.json("show", "c")["head"] == "c@2"
    assert [c["ref"] for c in a.json("list")["checkpoints"]] == ["c@1", "c@2"]


def test_a_host_cut_off_while_its_pod_was_adopted_stops_its_copy(fleet_apart):
    """Not a lost disk but a partition: host a's pod went on running while b adopted it. The
    first zap command a runs afterwards takes a's copy down (its supervisor does too), so the
    pod never runs twice for longer than a was cut off; a keeps its snapshots as copies. The
    hosts have subnets of their own here: the adopted pod gets one of b's addresses."""
    a, b = fleet_apart.a, fleet_apart.b
    vol_a = _counter(a, "c")
    a("checkpoint", "c")
    old_pid = a.pod("c")["pid"]
    out = b.json("host", "adopt", "a", "c")["adopted"]
    assert out[0]["adopted"] and not out[0]["address_kept"] and "new address" in out[0]["notes"][0], out
    assert ipaddress.ip_address(out[0]["address"]) in ipaddress.ip_network(b.subnet)
    vol_b = Path(b.pod("c")["volume"])
    wait_for(lambda: _n(vol_b) > 0, what="the adopted copy to count")
    assert proc_state(old_pid) not in (None, "Z")  # a's copy runs on: a knows nothing yet
    cp = a("ps")
    assert "pod c was adopted by host b while this host was away: its processes stopped; its volume here deleted" in cp.stderr
    assert proc_state(old_pid) in (None, "Z")
    assert not vol_a.exists() and "c" not in cp.stdout
    _runs_on(b, "c", vol_b)
    assert "adopted by host 'b'" in a.fails("checkpoint", "c", code=1)
