"""Fixtures. Tests marked `system` use the real parts: real CRIU, a real btrfs pool on a loop
file, namespaces, FUSE, real servers; each gets its own state directory and pool (the `zap`
fixture) and must leave nothing behind: the fixture deinitialises it and then checks that no
mount, loop device, network object or pod process is left. Every test using the `zap` fixture is
marked `system` by itself. The rest are pure: they run anywhere (`pytest -m "not system"`).
Shared helpers are in helpers.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from guest import GUEST
from helpers import COUNTER, WORKLOADS, ZAP_CMD, counter_values, proc_state, wait_for
from services import Cuttable, PostgreSQL, SeaweedFS, in_netns


# tests/vm and tests/vm_reboot need NILFS2, which this kernel lacks: tests/test_vm_runner.py runs them in a guest.
collect_ignore = [] if os.environ.get("ZAP_IN_VM") else ["vm", "vm_reboot"]


SYSTEM_FIXTURES = {"zap", "host_dir", "pg_server", "pg_url", "s3_server", "s3_store", "catalog_where", "fleet",
                   "cut_fleet"}


def pytest_configure(config):
    config.addinivalue_line("markers", "system: needs root and the real parts (btrfs, CRIU, namespaces, FUSE)")


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SYSTEM_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.system)


def pytest_collection_finish(session):
    system = [i for i in session.items if i.get_closest_marker("system")]
    if not system:
        return  # pure tests only: nothing to check or copy
    # A skipped real-part test would be a failed suite: refuse to run without what they need.
    problems = []
    if os.geteuid() != 0:
        problems.append("the system tests must run as root")
    if not shutil.which("mkfs.btrfs"):
        problems.append("btrfs-progs is missing (make install)")
    if problems:
        pure = len(session.items) - len(system)
        pytest.exit(f"{'; '.join(problems)} (`-m 'not system'` runs the {pure} pure tests alone)", returncode=3)
    shutil.copytree(Path(__file__).resolve().parent / "workloads", WORKLOADS)
    if not session.config.option.collectonly and any(
        i.path.name == "test_vm_runner.py" and i.name.startswith("test_nilfs_suite") for i in system
    ):
        GUEST.start()  # minutes of emulation, alongside the host tests


def pytest_terminal_summary(terminalreporter):
    """With ZAP_TEST_REPORT set (.ci/run sets it), what ran, for .ci/check-report to judge: CI
    must not go green with the real parts left out (deselected, skipped, or not collected)."""
    path = os.environ.get("ZAP_TEST_REPORT")
    if not path:
        return
    stats = terminalreporter.stats
    outcome = {}
    for kind in ("passed", "failed", "skipped", "error", "xfailed", "xpassed"):
        for rep in stats.get(kind, []):
            if getattr(rep, "when", "call") in ("call", "setup") or kind in ("skipped", "error"):
                outcome.setdefault(rep.nodeid, set()).add(kind)
    system = [r.nodeid for k in ("passed", "failed", "skipped", "error") for r in stats.get(k, [])
              if "system" in getattr(r, "keywords", {})]  # fmt: skip
    doc = {
        "collected": terminalreporter._session.testscollected,
        "deselected": len(stats.get("deselected", [])),
        "counts": {k: len({r.nodeid for r in stats.get(k, [])}) for k in ("passed", "failed", "skipped", "error")},
        "system_tests": sorted(set(system)),
        "passed": sorted(n for n, o in outcome.items() if o == {"passed"}),
    }
    Path(path).write_text(json.dumps(doc, indent=1))


_SERVICES: dict[str, object] = {}


def pytest_sessionfinish(session):
    GUEST.stop()
    for service in _SERVICES.values():
        service.stop()
    # the zap servers the commands started (zapckpt/cli/forkserver.py; one per interpreter of
    # this checkout, the bench's console script's included): nothing of the run stays
    subprocess.run([*ZAP_CMD, "server", "--stop"], capture_output=True, env=dict(os.environ, ZAP_SERVER="0"))
    mine = str(Path(__file__).resolve().parent.parent).encode()
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{e}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"zapckpt.cli.forkserver" in argv and argv[0].startswith(mine):
            os.kill(int(e), 15)
    shutil.rmtree(WORKLOADS.parent, ignore_errors=True)


class Zap:
    """Runs the real `zap` CLI against one private state directory."""

    def __init__(self, home: Path):
        self.home = home
        # Each test's pods get a bridge and subnet of their own (on this machine only).
        tag = os.urandom(3).hex()
        self.bridge = f"zt{tag}"
        self.subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}.0/24"
        self.env = dict(os.environ, ZAP_HOME=str(home), ZAP_LOCK_TIMEOUT="60", ZAP_BRIDGE=self.bridge,
                        ZAP_SUBNET=self.subnet)  # fmt: skip
        self.env.pop("ZAP_DEBUG", None)
        self.cmd = list(ZAP_CMD)  # how this host runs zap (a fleet host: inside its network namespace)

    def __call__(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 120):
        cp = subprocess.run(
            [*self.cmd, *map(str, args)],
            capture_output=True, text=True, env=dict(self.env, **(env or {})), timeout=timeout,
        )  # fmt: skip
        if check and cp.returncode != 0:
            raise AssertionError(f"zap {' '.join(map(str, args))} failed ({cp.returncode}):\n{cp.stderr}{cp.stdout}")
        return cp

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)

    def fails(self, *args: str, code: int, env: dict | None = None) -> str:
        """Run a command that must fail with `code` and one clear line, never a traceback."""
        cp = self(*args, check=False, env=env)
        assert cp.returncode == code, f"zap {' '.join(args)}: exit {cp.returncode}, stderr={cp.stderr!r}"
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zap: error: "), cp.stderr
        assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
        return lines[0]

    def pod(self, name: str) -> dict:
        """The pod as `zap show` has it once a restore or branch of it is over: a lazy one
        reports while the pod's memory still comes in (state "restoring": `zap show` then)."""
        return self.settled(name)

    def settled(self, name: str, timeout: float = 120) -> dict:
        """The pod once a restore or branch of it is over (its memory all in: no longer
        "restoring")."""
        return wait_for(lambda: (p := self.json("show", name))["state"] != "restoring" and p, timeout=timeout,
                        what=f"{name} to finish restoring")  # fmt: skip

    def volume(self, name: str) -> Path:
        return Path(self.pod(name)["volume"])

    def run_counter(self, name: str, interval: str = "0.0005") -> dict:
        self("run", name, "--env", f"COUNTER_INTERVAL={interval}", "--", "python3", str(COUNTER))
        wait_for(lambda: counter_values(self.volume(name)), what=f"{name} to start counting")
        return self.pod(name)


def _net_leftovers(bridge: str, home: Path, inside: list[str] = []) -> list[str]:
    """What zap left of its network: `inside` runs the commands in a host's network namespace."""
    found = []
    tag = hashlib.sha1(str(home).encode()).hexdigest()[:6]  # as zapckpt/net/podnet.py names them
    if subprocess.run([*inside, "ip", "link", "show", bridge], capture_output=True).returncode == 0:
        found.append(f"bridge {bridge}")
    tables = subprocess.run([*inside, "nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nftables {ln}" for ln in tables.splitlines() if bridge in ln or "CRIU-" in ln]
    netns = Path("/run/netns")
    found += [f"netns {n.name}" for n in (netns.iterdir() if netns.is_dir() else []) if n.name.startswith(f"zap-{tag}-")]
    return found


def _leftovers(home: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if str(home) in line:
            found.append("mount: " + line.split()[4])
    staging = f"zapckpt.{hashlib.sha1(str(home).encode()).hexdigest()[:10]}".encode()  # as zapckpt/state.py names it
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += ["loop: " + ln for ln in out.splitlines() if str(home) in ln]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            st = proc_state(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if (str(home).encode() in cmd or staging in cmd) and st not in (None, "Z"):
            found.append(f"process {pid}: {cmd[:120]!r}")  # a pod's, a CRIU daemon on its staging
    # the control groups of pods with limits: zapckpt/<8 hex digits of the state directory>-<pod>
    tag = hashlib.sha256(os.fsencode(home)).hexdigest()[:8]
    found += [f"cgroup: {g}" for pattern in (f"*/zapckpt/{tag}-*", f"zapckpt/{tag}-*")
              for g in Path("/sys/fs/cgroup").glob(pattern)]  # fmt: skip
    return found


@pytest.fixture
def host_dir():
    """A host directory pods see as the host's (tmp_path is under /tmp, which pods without
    --rootfs do not see): removed after the test."""
    d = Path(tempfile.mkdtemp(prefix="host-", dir=WORKLOADS.parent))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def zap():
    home = Path(tempfile.mkdtemp(prefix="zaptest-", dir="/tmp"))
    z = Zap(home)
    z("init", "--size", "2G")
    try:
        yield z
    finally:
        ps = z("ps", "--json", check=False)
        pids = [p["pid"] for p in json.loads(ps.stdout)["pods"] if p["pid"]] if ps.returncode == 0 else []
        z("deinit", "--purge", check=False)
        left = _leftovers(home) + _net_leftovers(z.bridge, home)
        left += [f"pod process {p} ({proc_state(p)})" for p in pids if proc_state(p) not in (None, "Z")]
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"left behind: {left}"


# --- the shared services of a fleet: one server each per session, a database / bucket per test --
@pytest.fixture(scope="session")
def pg_server():
    if "pg" not in _SERVICES:
        _SERVICES["pg"] = PostgreSQL().start()
    return _SERVICES["pg"]


@pytest.fixture
def pg_url(pg_server):
    """A new, empty PostgreSQL database of the session's cluster, as a libpq URL; dropped after."""
    db = pg_server.new_database()
    yield pg_server.url(db)
    pg_server.drop_database(db)


@pytest.fixture(scope="session")
def s3_server():
    if "s3" not in _SERVICES:
        _SERVICES["s3"] = SeaweedFS().start()
    return _SERVICES["s3"]


@pytest.fixture
def s3_store(s3_server):
    """(store URL, endpoint, credentials env) of a new bucket of the session's SeaweedFS; emptied and removed after."""
    bucket = s3_server.new_bucket()
    yield f"s3://{bucket}/zap", s3_server.endpoint, s3_server.env
    s3_server.drop_bucket(bucket)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_where(request, tmp_path):
    """Where a catalog test's catalog is: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    return request.getfixturevalue("pg_url")


class FleetHost(Zap):
    """One host of a fleet on this machine: a state directory, pool and bridge of its own, in a
    network namespace of its own (so hosts may share a pod subnet, as machines on their own
    networks do), the session's PostgreSQL catalog (over its Unix socket) and SeaweedFS store
    (through a forwarder listening on the host's own loopback, at the store's port) shared with
    the other hosts. Its zap commands run in its namespace (h.cmd); h.connect() reaches its pods."""

    def __init__(self, home: Path, name: str, store_env: dict, subnet: str | None = None, own_network: bool = False):
        super().__init__(home)
        self.name = name
        self.env.update(store_env)
        self.inside: list[str] = []
        if subnet:
            self.subnet = self.env["ZAP_SUBNET"] = subnet
        if not own_network:  # a host that runs no pod (bad-input tests) stays in this network
            return
        self.netns = f"zh{os.urandom(3).hex()}-{name}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.inside = ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        self.cmd = [*self.inside, *ZAP_CMD]

    def connect(self, address, timeout: float = 5):
        """A TCP connection to (host, port) from inside this host's network."""
        sock = in_netns(f"/run/netns/{self.netns}", socket.socket)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def take_down(self) -> list[str]:
        """Its network namespace removed; what was still in it (besides lo) is returned."""
        if not self.inside:
            return []
        left = []
        links = subprocess.run([*self.inside, "ip", "-o", "link"], capture_output=True, text=True).stdout
        left += [f"host {self.name}: link {ln.split(':')[1].strip()}" for ln in links.splitlines() if ": lo:" not in ln]
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        return left


class _Links:
    """The hosts' links to one service, cut and mended together."""

    def __init__(self, links: list):
        self.links = links

    def cut(self) -> None:
        for x in self.links:
            x.cut()

    def mend(self) -> None:
        for x in self.links:
            x.mend()

    def close(self) -> None:
        for x in self.links:
            x.close()


@contextmanager
def _fleet(pg_url, s3_store, pg_server, s3_server, catalog=None, shared_subnet=True):
    url, endpoint, env = s3_store
    catalog = catalog or pg_url
    subnet = f"10.{200 + os.urandom(1)[0] % 50}.{os.urandom(1)[0]}.0/24" if shared_subnet else None
    hosts = []
    store_links = []
    host, port = endpoint.rsplit("/", 1)[1].split(":")
    try:
        for name in ("a", "b"):
            home = Path(tempfile.mkdtemp(prefix=f"zapfleet-{name}-", dir="/tmp"))
            hosts.append(FleetHost(home, name, env, subnet, own_network=True))
            # the store at the same address from inside each host: one endpoint for the fleet
            store_links.append(Cuttable((host, int(port)), listen=(host, int(port)), netns=f"/run/netns/{hosts[-1].netns}"))
        a, b = hosts
        db = pg_url.split("/")[3].split("?")[0]
        a("init", "--size", "2G", "--catalog", catalog, "--host", "a", "--store", url, "--s3-endpoint", endpoint)
        b("init", "--size", "2G", "--catalog", catalog, "--host", "b")
        yield SimpleNamespace(a=a, b=b, catalog=catalog, store=url, endpoint=endpoint, env=env, pg=pg_server, s3=s3_server,
                              db=db, bucket=url.split("/")[2], store_link=_Links(store_links))  # fmt: skip
    finally:
        left = []
        for h in reversed(hosts):
            ps = h("ps", "--json", check=False)
            pids = [p["pid"] for p in json.loads(ps.stdout)["pods"] if p["pid"]] if ps.returncode == 0 else []
            out = h("deinit", "--purge", "--yes", check=False)
            if out.returncode != 0:
                left.append(f"host {h.name}: deinit --purge failed: {out.stderr.strip()}")
            left += _leftovers(h.home) + _net_leftovers(h.bridge, h.home, h.inside)
            left += [f"pod process {p} ({proc_state(p)})" for p in pids if proc_state(p) not in (None, "Z")]
            left += h.take_down()
            shutil.rmtree(h.home, ignore_errors=True)
        _Links(store_links).close()
        for table in ("hosts", "pods", "checkpoints", "chunks", "packs", "image_files", "volume_streams", "intents"):
            n = pg_server.psql(db, f"SELECT count(*) FROM {table}")
            if n != "0":
                left.append(f"catalog: {n} row(s) in {table}")
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=url.split("/")[2]).get("Contents", [])]
        left += [f"store object {k}" for k in keys if not k.endswith("zapckpt-store.json")]
        assert not left, f"left behind: {left}"


@pytest.fixture
def fleet(pg_url, s3_store, pg_server, s3_server):
    """Two hosts, a and b, each in a network of its own with the same pod subnet, sharing a
    catalog (a new PostgreSQL database) and an image store (a new bucket). Afterwards both leave
    the fleet (`zap deinit --purge`), which must leave nothing behind on this machine, in the
    catalog (no pod, checkpoint, chunk, pack or stream row) or in the bucket (no pack or volume
    object)."""
    with _fleet(pg_url, s3_store, pg_server, s3_server) as f:
        yield f


@pytest.fixture
def fleet_apart(pg_url, s3_store, pg_server, s3_server):
    """The same, with a pod subnet of each host's own (addresses cannot move between them)."""
    with _fleet(pg_url, s3_store, pg_server, s3_server, shared_subnet=False) as f:
        yield f


@pytest.fixture
def cut_fleet(pg_url, s3_store, pg_server, s3_server, tmp_path):
    """The same fleet, talking to its catalog and its store through links the test can cut
    (services.Cuttable): f.catalog_link, f.store_link (every host's). Both are mended before it
    is taken down."""
    sock_dir = tmp_path / "pg"
    sock_dir.mkdir()
    pg_link = Cuttable(str(pg_server.sock / ".s.PGSQL.5432"), listen=str(sock_dir / ".s.PGSQL.5432"))
    catalog = pg_url.split("?")[0] + f"?host={sock_dir}"
    try:
        with _fleet(pg_url, s3_store, pg_server, s3_server, catalog=catalog) as f:
            f.catalog_link = pg_link
            try:
                yield f
            finally:
                pg_link.mend()
                f.store_link.mend()
    finally:
        pg_link.close()
