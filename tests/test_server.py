"""The zap server (zapckpt/cli/forkserver.py, zapckpt/client.py): a command it runs behaves as one
run in its own process would: its output, exit status, standard input, Ctrl-C and the signal
it dies of are the client's; killing the client kills the command; nobody but root reaches it;
a new version of the code gets a new server, and an idle one ends by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ZAP_CMD, proc_state, wait_for


def _server_pid(zap) -> int:
    doc = zap.json("server")
    assert doc["running"], doc
    return doc["pid"]


def _workers(server: int) -> list[int]:
    out = []
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{e}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == server:
            out.append(int(e))
    return out


def test_a_served_command_is_the_clients_own(zap):
    zap("ps")  # the fixture's first commands started the server: these go through it
    server = _server_pid(zap)
    # output, one-line errors and exit codes
    line = zap.fails("show", "nosuch@1", code=2)
    assert "no pod named 'nosuch'" in line
    zap("run", "sl", "--", "sh", "-c", "echo hello; exec sleep 600")
    wait_for(lambda: "hello" in zap("logs", "sl").stdout, what="the pod's line")
    # Ctrl-C reaches the command, which ends as it would (130, one line)
    p = subprocess.Popen([*ZAP_CMD, "logs", "-f", "sl"], env=zap.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: _workers(server), what="the command's process")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and b"hello" in out and err.strip() == b"zap: interrupted", (p.returncode, err)
    # the client killed: the command dies with it, as one run in the client itself would
    p = subprocess.Popen([*ZAP_CMD, "logs", "-f", "sl"], env=zap.env, stdout=subprocess.DEVNULL)
    wait_for(lambda: _workers(server), what="the command's process")
    (worker,) = _workers(server)
    p.kill()
    p.wait()
    wait_for(lambda: proc_state(worker) in (None, "Z"), what="the command to end with its client")
    # stdin is the client's (a confirmation answered on it is not a terminal: no question)
    cp = subprocess.run([*ZAP_CMD, "show", "sl"], env=zap.env, input=b"", capture_output=True)
    assert cp.returncode == 0 and b"pod:" in cp.stdout
    assert zap.json("server")["pid"] == server  # one server throughout


def test_a_killed_command_kills_its_client_the_same_way(zap):
    zap("run", "k", "--", "sleep", "600")
    # the checkpoint kills itself at this point (system/faults.py), in the server's worker
    cp = zap("checkpoint", "k", check=False, env={"ZAP_FAULT": "checkpoint:before-dump"})
    assert cp.returncode == -signal.SIGKILL, cp
    zap("recover")
    assert zap.pod("k")["state"] == "running"


def test_only_root_reaches_the_server_and_an_idle_one_ends(zap, tmp_path):
    zap("ps")
    sock = zap.json("server")["socket"]
    assert oct(os.stat(os.path.dirname(sock)).st_mode & 0o777) == "0o700"
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
             "except PermissionError:\n    sys.exit(13)\n")  # fmt: skip
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe,
                         sock], capture_output=True)  # fmt: skip
    assert cp.returncode == 13, cp
    # a server of its own (another key), idle for a second: it ends and removes its socket
    key = "test" + os.urandom(4).hex()
    env = dict(os.environ, ZAP_SERVER_IDLE="1", PYTHONPATH=os.pathsep.join(sys.path))
    srv = subprocess.Popen([sys.executable, "-m", "zapckpt.cli.forkserver", key], env=env)
    path = Path(f"/run/zapckpt/server-{key}.sock")
    wait_for(lambda: path.exists() or srv.poll() is not None, what="the second server")
    assert srv.wait(timeout=60) == 0
    assert not path.exists() and not Path(f"/run/zapckpt/server-{key}.pid").exists()
    Path(f"/run/zapckpt/server-{key}.lock").unlink(missing_ok=True)


def test_a_changed_source_file_retires_the_server(zap):
    """A server runs the code it started with: when a source file changes it takes no more
    commands, ends, and the next command starts a server of the new code."""
    from zapckpt.common import wire

    zap("ps")
    old = zap.json("server")["pid"]
    f = Path(wire.__file__)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as an editor's save would
    try:
        wait_for(lambda: proc_state(old) in (None, "Z"), what="the old server to end")
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    zap("ps")  # no server: it runs by itself, and starts the new one
    wait_for(lambda: zap.json("server")["running"], what="the new server")
    assert zap.json("server")["pid"] != old
    assert wire.key() == Path(zap.json("server")["socket"]).name[len("server-") : -len(".sock")]
