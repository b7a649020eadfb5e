"""The functional CRIU probe: `criu check` passes on kernels where CRIU cannot dump a single
inet socket (CRIU 4.1 on Linux >= 6.16), so the install and `zap doctor` judge a CRIU by what
zap needs from it: a tiny pod in its own network namespace holding a TCP listener, a connected
TCP pair, a UDP socket and a unix socket pair is dumped (with --tcp-established and the
nftables network lock, as zap does) into tmpfs, killed, restored, and must carry on talking.

Usage: python -m zapckpt.criu.probe [--criu PATH]   (exit 0: works; 1: the reason, one line)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from zapckpt.common import proc
from zapckpt.criu.runner import NET_OPTS, criu_binary

# The probe's workload, run as pid 1 of new pid/mount/net namespaces: it reports its host pid,
# then exchanges a byte over each socket and counts rounds in a file, forever.
WORKLOAD = r"""
import os, socket, sys, time
d = sys.argv[1]
open(d + "/pid", "w").write(os.readlink("/proc/self"))
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0)); lst.listen(4)
cli = socket.create_connection(lst.getsockname()); srv, _ = lst.accept()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
ua, ub = socket.socketpair()
n = 0
while True:
    cli.sendall(b"x"); assert srv.recv(1) == b"x"
    udp.sendto(b"u", udp.getsockname()); assert udp.recv(1) == b"u"
    ua.sendall(b"s"); assert ub.recv(1) == b"s"
    n += 1
    with open(d + "/rounds.tmp", "w") as f:
        f.write(str(n))
    os.rename(d + "/rounds.tmp", d + "/rounds")
    time.sleep(0.02)
"""

NOISE = "rlimit: Can't setup RLIMIT_NOFILE"


class ProbeFailed(Exception):
    pass


def _rounds(d: Path) -> int:
    try:
        return int((d / "rounds").read_text())
    except (OSError, ValueError):
        return 0


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise ProbeFailed(f"timed out waiting for {what}")


def _log_error(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln and NOISE not in ln]
    except OSError:
        return "no log"
    lines = [ln.split("): ", 1)[-1] for ln in lines if "FAILED" not in ln]
    return lines[0] if lines else "no error in its log"


def _kill_tree(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def probe(criu: str, timeout: float = 60.0) -> str:
    """Run the probe with `criu`; returns a one-line summary, raises ProbeFailed."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="zapckpt-probe.", dir=base))
    netns = f"zapprobe-{os.getpid()}"
    pid = 0
    try:
        proc.run(["ip", "netns", "add", netns])
        proc.run(["ip", "-n", netns, "link", "set", "lo", "up"])
        shell = 'exec </dev/null >/dev/null 2>&1; exec setsid "$@"'
        proc.spawn(["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                    "--", "sh", "-c", shell, "sh", sys.executable, "-c", WORKLOAD, str(work)])  # fmt: skip
        pid = int(_wait(lambda: (work / "pid").exists() and (work / "pid").read_text(), 10, "the probe workload"))
        _wait(lambda: _rounds(work) > 0, 10, "the probe's sockets")
        images = work / "images"
        images.mkdir()
        t0 = time.perf_counter()
        dump = proc.run(["nsenter", "-t", str(pid), "-m", "-n", "--", criu, "dump", "-t", str(pid), "-D", str(images),
                         "-o", "dump.log", *NET_OPTS], check=False, timeout=timeout)  # fmt: skip
        dump_ms = (time.perf_counter() - t0) * 1000
        if dump.returncode != 0:
            raise ProbeFailed(f"dump failed: {_log_error(images / 'dump.log')}")
        _wait(lambda: not Path(f"/proc/{pid}").exists(), 10, "the dumped probe to exit")
        before = _rounds(work)
        restore = proc.run(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "--",
                            criu, "restore", "-d", "-D", str(images), "-o", "restore.log", "--pidfile",
                            str(work / "rpid"), *NET_OPTS], check=False, timeout=timeout)  # fmt: skip
        if restore.returncode != 0:
            raise ProbeFailed(f"restore failed: {_log_error(images / 'restore.log')}")
        pid = int((work / "rpid").read_text())
        _wait(lambda: _rounds(work) > before + 2, 10, "the restored probe to use its sockets")
        return f"TCP listener, TCP pair, UDP and unix sockets dumped ({dump_ms:.0f} ms) and restored in a netns"
    except proc.CommandError as e:
        if "timed out after" in e.stderr:
            raise ProbeFailed(f"CRIU did not finish within {timeout:g}s") from None
        raise ProbeFailed(f"could not set up the probe: {e}") from None
    except (OSError, proc.ToolMissing) as e:
        raise ProbeFailed(f"could not set up the probe: {e}") from None
    finally:
        if pid:
            _kill_tree(pid)
            _wait(lambda: True if not Path(f"/proc/{pid}").exists() else False, 5, "the probe to exit")
        proc.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m zapckpt.criu.probe")
    ap.add_argument("--criu", help="the criu binary to probe (default: the one zap would use)")
    args = ap.parse_args()
    binary = args.criu or criu_binary()
    try:
        print(probe(binary))
        return 0
    except ProbeFailed as e:
        print(f"{binary}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
