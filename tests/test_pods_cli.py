"""Pod life cycle through the real CLI: run, ps, logs, exec, stop, start, kill, pause, unpause, rm,
init, deinit, doctor."""

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from helpers import COUNTER, ZAP_CMD, counted_past, counter_values, proc_state, wait_for


def test_doctor_json(zap):
    doc = zap.json("doctor")
    assert doc["ok"] is True
    names = {c["name"]: c for c in doc["checks"]}
    assert names["criu check"]["ok"] and names["btrfs"]["ok"] and names["criu version"]["detail"].startswith("4.")


def test_run_ps_logs_exec_stop_start_rm(zap):
    out = zap("run", "svc", "--env", "GREETING=hi there", "--cwd", "work", "--", "python3", "-c",
              "import os,time; print(os.environ['GREETING'], os.getcwd(), os.environ['ZAP_POD'], os.getpid(), flush=True);"
              "[time.sleep(0.05) for _ in iter(int, 1)]").stdout.split()  # fmt: skip
    assert out[0] == "svc" and out[1].endswith("/mnt/svc")
    path = out[1]
    pod = wait_for(lambda: (p := zap.pod("svc")) and p["state"] == "running" and p, what="running")
    assert pod["path"] == path and pod["cwd"] == path + "/work" and pod["env"] == {"GREETING": "hi there"}
    # `zap show` text: labelled lines a person reads, no Python reprs.
    text = zap("show", "svc").stdout
    assert f"state:         running (pid {pod['pid']})" in text and "environment:   GREETING='hi there'" in text
    assert "checkpoints:   0" in text and "branched from: -" in text and " UTC" in text
    assert "pid 1:         a small init (catatonit), the command its child" in text
    ck = zap("checkpoint", "svc", "-m", "one").stdout.strip()
    ck_text = zap("show", ck).stdout
    assert f"checkpoint: {ck} (id " in ck_text and "message:    one" in ck_text and "parent:     -" in ck_text
    assert "  pid 1 (host " in ck_text and "python3 -c 'import os,time;" in ck_text
    labels = [ln.split(":", 1) for ln in (text + ck_text).splitlines() if ln.strip() and not ln.startswith("  ")]
    for label, value in labels:  # values a person reads, not Python's reprs
        assert value.strip() not in ("None", "True", "False", "[]", "{}") and not value.strip().startswith(("{'", "['")), label
    # The console log is outside the volume (pod/console.py); pid 1, the init, leads the session.
    log = wait_for(lambda: zap("logs", "svc").stdout, what="log output")
    *words, cmd_pid = log.split()
    assert words == ["hi", "there", f"{path}/work", "svc"] and int(cmd_pid) > 1  # the init's child, not pid 1
    assert (zap.home / "console" / "svc.log").exists() and not (Path(pod["volume"]) / ".zap" / "console.log").exists()
    stat = Path(f"/proc/{pod['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pod["pid"]  # session id == own pid: setsid inside
    # (as the host sees it: the pod runs in the copy of the tree with its own /proc, pod/mounts.py)
    assert os.readlink(f"/proc/{pod['pid']}/fd/0") == f"{zap.home}/mnt/.podroot/dev/null"
    assert os.readlink(f"/proc/{pod['pid']}/fd/1").startswith("pipe:[")  # the console, to the logger
    for fd in os.listdir(f"/proc/{pod['pid']}/fd"):  # nothing of zap's: the init's own signalfd at most
        assert fd in ("0", "1", "2") or os.readlink(f"/proc/{pod['pid']}/fd/{fd}") == "anon_inode:[signalfd]", fd
    # exec: same namespaces, cwd and environment; exit code passed through.
    cp = zap("exec", "svc", "--", "sh", "-c", 'echo "$PWD|$GREETING|$ZAP_POD_PATH|$$"; ls /proc/1/ >/dev/null; exit 7',
             check=False)  # fmt: skip
    assert cp.returncode == 7
    pwd, greeting, zpath, _ = cp.stdout.strip().split("|")
    assert (pwd, greeting, zpath) == (f"{path}/work", "hi there", path)
    for ns in ("pid", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pod['pid']}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    ps = zap.json("ps")["pods"]
    assert [(p["name"], p["state"], p["checkpoints"]) for p in ps] == [("svc", "running", 1)]
    assert "svc" in zap("ps").stdout

    zap("stop", "-t", "2", "svc")
    assert zap.pod("svc")["state"] == "stopped" and proc_state(pod["pid"]) in (None, "Z")
    assert zap.fails("exec", "svc", "--", "true", code=2)
    zap("start", "svc")
    assert zap.pod("svc")["state"] == "running"
    zap("rm", "--force", "svc")
    assert zap.json("ps")["pods"] == []
    assert not Path(pod["volume"]).exists()


INIT_WORKLOAD = """
import os, signal, sys, time
if os.fork() == 0:
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "1000"])  # an orphan: reparented to pid 1
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *a: (print("got TERM", flush=True), sys.exit(3)))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _orphan(pid1: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(pid1), "-x", "sleep"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_init_is_pid_1_reaps_orphans_forwards_signals_and_ps_sees_the_pod(zap):
    """Issue 15: a small init (catatonit) is every new pod's pid 1, with the command as its
    child, and the pod has its own /proc: `ps` inside lists the pod's processes only. A command
    that never waits for children (this Python) no longer leaves zombies behind, and all of it
    survives checkpoint, restore and branch."""
    zap("run", "in", "--", "python3", "-c", INIT_WORKLOAD)
    pod = zap.pod("in")
    assert pod["init"] is True
    wait_for(lambda: "ready" in zap("logs", "in").stdout, what="the workload")
    ps = zap("exec", "in", "--", "ps", "-eo", "pid=,ppid=,args=").stdout.splitlines()
    rows = [ln.split(None, 2) for ln in ps]
    assert rows[0][:2] == ["1", "0"] and rows[0][2].startswith("catatonit -- python3 -c"), ps
    assert sorted(r[2].split()[0] for r in rows if r[1] == "1") == ["python3", "sleep"], ps  # the command, the orphan
    assert {r[2].split()[0] for r in rows} == {"catatonit", "python3", "sleep", "ps"}, ps  # nothing of the host's
    assert zap("exec", "in", "--", "cat", "/proc/1/comm").stdout.strip() == "init"  # .zap/init

    orphan = _orphan(pod["pid"])
    os.kill(orphan, signal.SIGKILL)
    wait_for(lambda: proc_state(orphan) is None, what="the orphan reaped by pid 1 (not a zombie)")

    # The same after a checkpoint, a restore and in a branch.
    zap("exec", "-d", "in", "--", "sleep", "2000")
    zap("checkpoint", "in")
    zap("restore", "in@1")
    zap("branch", "in@1", "in2")
    for name in ("in", "in2"):
        ps = zap("exec", name, "--", "ps", "-eo", "pid=,args=").stdout
        assert "1 catatonit -- python3" in ps and "sleep 2000" in ps and "pytest" not in ps, ps

    # Signals go to the command through the init; the pod ends when the command does.
    zap("kill", "-s", "TERM", "in")
    # (ended on purpose: "stopped", and no restart policy would bring it back)
    wait_for(lambda: zap.pod("in")["state"] == "stopped", what="the pod to end with its command")
    assert "got TERM" in zap("logs", "in").stdout
    zap("rm", "-f", "in", "--yes")
    zap("rm", "-f", "in2", "--yes")


def test_no_init_runs_the_command_as_pid_1_and_a_missing_command_is_one_line(zap):
    zap("run", "bare", "--no-init", "--", "sleep", "1000")
    assert zap.pod("bare")["init"] is False
    assert zap("exec", "bare", "--", "cat", "/proc/1/cmdline").stdout == "sleep\x001000\x00"
    err = zap.fails("run", "nocmd", "--", "no-such-command-zap", code=1)
    assert "cannot run 'no-such-command-zap'" in err
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["bare"]


def test_stop_of_a_shell_as_pid_1(zap):
    # A shell as pid 1 (--no-init) has no SIGTERM handler, so the kernel never gives it one: its
    # command is told instead, and the shell ends with it (it used to wait out the whole
    # timeout: issue 15).
    zap("run", "sh1", "--no-init", "--", "sh", "-c", "sleep 1000; echo done")
    pid = zap.pod("sh1")["pid"]
    wait_for(lambda: subprocess.run(["pgrep", "-P", str(pid), "sleep"], capture_output=True).returncode == 0,
             what="the shell's command")  # fmt: skip
    t = time.monotonic()
    out = zap("stop", "-t", "120", "sh1")
    assert time.monotonic() - t < 60  # far from the 120 s a SIGKILL after the timeout would take
    assert "its pid 1 (sh) has no SIGTERM handler" in out.stderr
    assert zap.pod("sh1")["state"] == "stopped"
    assert "done" in zap("logs", "sh1").stdout  # the shell went on after its command, and ended


def test_dead_pod_and_rm_refusals(zap):
    zap("run", "short", "--", "sh", "-c", "echo bye")
    wait_for(lambda: zap.pod("short")["state"] == "dead", what="pod to exit")
    zap.run_counter("kept")
    # ps --filter and --format (issue 15), as podman's.
    assert zap("ps", "--filter", "state=dead", "--format", "{name}:{state}").stdout.split() == ["short:dead"]
    assert zap("ps", "-f", "name=k*", "-f", "net=pod", "--format", "{name} {checkpoints}").stdout == "kept 0\n"
    assert zap("ps", "-f", "name=x*").stdout.splitlines()[1:] == []
    assert "bad --filter" in zap.fails("ps", "--filter", "colour=red", code=2)
    assert "bad --format" in zap.fails("ps", "--format", "{nope}", code=2)
    zap("rm", "short")
    zap("checkpoint", "kept")
    assert "checkpoint" in zap.fails("rm", "kept", code=2)
    assert zap.pod("kept")["state"] == "running"


def test_pause_unpause_and_kill(zap):
    zap.run_counter("p")
    vol = zap.volume("p")
    zap("checkpoint", "p")
    assert zap("pause", "p").stdout.strip() == "paused p"
    assert zap.pod("p")["state"] == "paused"
    n = len(counter_values(vol))
    time.sleep(0.3)
    assert len(counter_values(vol)) == n  # not one more value while paused
    # What would lose the paused state, or cannot work on it, is refused and changes nothing.
    assert "not running (paused)" in zap.fails("checkpoint", "p", code=2)
    assert "zap unpause p" in zap.fails("restore", "p@1", code=2)
    assert "not running" in zap.fails("pause", "p", code=2)
    assert zap("unpause", "p").stdout.strip() == "unpaused p"
    assert zap.pod("p")["state"] == "running"
    counted_past(vol, n + 50, "counting again")
    assert "not paused" in zap.fails("unpause", "p", code=2)
    # kill: SIGKILL by default, the whole pod ends; a bad signal is a usage error.
    assert "is not a signal" in zap.fails("kill", "-s", "BOGUS", "p", code=2)
    assert zap("kill", "-s", "CONT", "p").stdout.strip() == "sent SIGCONT to p"
    assert zap.pod("p")["state"] == "running"
    pid = zap.pod("p")["pid"]
    assert zap("kill", "p").stdout.strip() == "sent SIGKILL to p"
    wait_for(lambda: proc_state(pid) in (None, "Z") and zap.pod("p")["state"] == "stopped", what="the pod to end")
    assert "not running" in zap.fails("kill", "p", code=2)
    # A paused pod stops (its SIGTERM is not left pending).
    zap("start", "p")
    zap("pause", "p")
    zap("stop", "-t", "5", "p")
    assert zap.pod("p")["state"] == "stopped"


def test_a_process_in_an_outside_session_is_named_with_the_fix(zap):
    zap.run_counter("p")
    # A background job of `zap exec` stays in the exec's session, which began outside the pod.
    zap("exec", "p", "--", "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo started")
    err = zap.fails("checkpoint", "p", code=1)
    assert "sleep 600" in err and "`zap exec -d`" in err, err
    assert zap.pod("p")["state"] == "running"


def _at_terminal(zap, *args: str, answer: str) -> tuple[int, str, str]:
    """zap with its stdin a terminal, where the answer is typed."""
    master, slave = os.openpty()
    p = subprocess.Popen([*ZAP_CMD, *args], env=zap.env, stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    os.close(slave)
    os.write(master, answer.encode())
    try:
        out, err = p.communicate(timeout=120)
    finally:
        os.close(master)
    return p.returncode, out, err


def test_bulk_deletes_ask_at_a_terminal(zap):
    zap.run_counter("p")
    zap("checkpoint", "p")
    zap("checkpoint", "p")
    rc, out, err = _at_terminal(zap, "rm", "-f", "p", answer="n\n")
    assert rc == 1 and "remove pod 'p' and its 2 checkpoint(s) (p@1, p@2)? [y/N]" in err, err
    assert err.strip().endswith("not confirmed: nothing was deleted")
    assert zap.pod("p")["state"] == "running" and len(zap.json("list", "p")["checkpoints"]) == 2
    rc, out, err = _at_terminal(zap, "deinit", "--purge", answer="\n")
    assert rc == 1 and "1 pod(s), 2 checkpoint(s)" in err and zap.pod("p")["state"] == "running"
    rc, out, err = _at_terminal(zap, "rm", "-f", "p", answer="y\n")
    assert rc == 0 and out.strip() == "removed p" and "with its 2 checkpoint(s): p@1, p@2" in err, err
    # --yes, or no terminal (a script), does not ask.
    zap.run_counter("q")
    zap("checkpoint", "q")
    rc, out, err = _at_terminal(zap, "rm", "-f", "--yes", "q", answer="")
    assert rc == 0 and "[y/N]" not in err


def test_logs_follow_ends_when_pod_ends(zap):
    zap("run", "talk", "--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
    cp = zap("logs", "-f", "talk", timeout=30)
    assert cp.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    assert zap("logs", "--tail", "2", "talk").stdout.splitlines() == ["line 2", "line 3"]


def test_init_idempotent_remount_and_deinit(zap):
    assert "pool ready" in zap("init").stdout
    pool = zap.home / "pool"
    assert os.path.ismount(pool)
    zap.run_counter("p")
    zap("checkpoint", "p")
    # deinit stops pods and unmounts; the next command re-mounts the pool by itself (as after a reboot).
    zap("deinit")
    assert not os.path.ismount(pool)
    assert zap.pod("p")["state"] == "stopped"
    assert [c["ref"] for c in zap.json("list")["checkpoints"]] == ["p@1"]
    zap("restore", "p@1")
    assert os.path.ismount(pool)
    assert zap.pod("p")["state"] == "running"
    # `zap start` after a deinit too (it said "the volume of pod 'p' is missing": issue 15).
    zap("deinit")
    assert not os.path.ismount(pool)
    zap("start", "p")
    assert os.path.ismount(pool) and zap.pod("p")["state"] == "running"
    # --size on an existing pool is refused, not ignored (it said "pool ready": issue 15).
    size_g = (zap.home / "pool.img").stat().st_size >> 30
    assert "the pool exists already" in zap.fails("init", "--size", f"{size_g + 1}G", code=2)
    assert "pool ready" in zap("init", "--size", f"{size_g}G").stdout
    # --pool with another directory on an initialised state is refused.
    assert "already uses the pool" in zap.fails("init", "--pool", "/tmp", code=2)
    zap.fails("init", "--size", "lots", code=2)


def test_pool_dir_mode(zap, tmp_path):
    # --pool DIR: an existing btrfs directory (here: a subdirectory of another zap pool's mount).
    other = zap.home / "pool" / "external"
    other.mkdir()
    home2 = tmp_path / "home2"
    env = dict(zap.env, ZAP_HOME=str(home2))
    run = lambda *a, **kw: subprocess.run([*ZAP_CMD, *a], env=env,  # noqa: E731
                                          capture_output=True, text=True, **kw)  # fmt: skip
    assert run("init", "--pool", str(other)).returncode == 0
    assert run("run", "x", "--", "python3", str(COUNTER)).returncode == 0
    assert (other / "pods" / "x").is_dir()
    wait_for(lambda: counter_values(other / "pods" / "x"), what="counter in dir pool")
    cp = run("checkpoint", "x")
    assert cp.returncode == 0, cp.stderr
    assert run("deinit", "--purge").returncode == 0
    assert not (other / "pods").exists() and not home2.exists()
    # A failed init leaves nothing behind (a NILFS2 pool cannot be mounted on this kernel: its
    # leftover 8 GiB image made every later `zap init` fail, issue 15).
    env4 = dict(env, ZAP_HOME=str(tmp_path / "h4"))
    run4 = lambda *a: subprocess.run([*ZAP_CMD, *a], env=env4,  # noqa: E731
                                     capture_output=True, text=True)  # fmt: skip
    failed = run4("init", "--backend", "nilfs")
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "h4" / "pool.img").exists()
    assert run4("init").returncode == 0 and (tmp_path / "h4" / "pool.img").exists()
    assert run4("deinit", "--purge").returncode == 0
    assert "not on a btrfs" in subprocess.run([*ZAP_CMD, "init", "--pool", str(tmp_path)],
                                              env=dict(env, ZAP_HOME=str(tmp_path / "h3")), capture_output=True,
                                              text=True).stderr  # fmt: skip


def test_rename_a_stopped_pod(zap):
    """`zap rename` (issue 15), as podman's: the checkpoints, volume, console log and network
    follow the new name; the checkpoints still restore."""
    zap("run", "old", "--", "sh", "-c", "echo hello; i=0; while :; do i=$((i+1)); echo $i > n.txt; sleep 0.1; done")
    wait_for(lambda: "hello" in zap("logs", "old").stdout, what="the pod")
    zap("checkpoint", "old")
    assert "zap stop old" in zap.fails("rename", "old", "new", code=2)
    zap.run_counter("taken")
    zap("stop", "old")
    assert "already exists" in zap.fails("rename", "old", "taken", code=2)
    zap.fails("rename", "old", "bad/name", code=2)
    zap.fails("rename", "nope", "other", code=2)
    assert zap("rename", "old", "new").stdout.strip() == "renamed old to new"
    assert [c["ref"] for c in zap.json("list", "new")["checkpoints"]] == ["new@1"]
    assert "old" not in [p["name"] for p in zap.json("ps")["pods"]]
    assert zap.volume("new").name == "new" and (zap.volume("new") / "n.txt").exists()
    assert "hello" in zap("logs", "new").stdout
    zap("restore", "new@1")
    pod = zap.pod("new")
    assert pod["state"] == "running" and pod["address"]
    wait_for(lambda: int((zap.volume("new") / "n.txt").read_text() or 0) > 20, what="the renamed pod counting")
    assert zap("exec", "new", "--", "hostname").stdout.strip() == "old"  # its uts namespace came back as it was


def test_progress_line_at_a_terminal_only(zap):
    """Work over 2 s shows a status line on stderr at a terminal (issue 15), none in a pipe."""
    zap("run", "slow", "--", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    wait_for(lambda: zap.pod("slow")["state"] == "running", what="the pod")
    master, slave = os.openpty()
    p = subprocess.Popen([*ZAP_CMD, "stop", "-t", "4", "slow"], env=zap.env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert p.wait(60) == 0 and p.stdout.read().strip() == b"stopped slow"
    assert b"zap: stop slow: waiting for slow to exit (SIGKILL after 4 s) (2 s)" in seen, seen
    assert seen.endswith(b"\r\x1b[K"), seen[-40:]  # cleared at the end
    zap("start", "slow")
    assert zap("stop", "-t", "3", "slow").stderr == ""  # not a terminal: nothing


def test_restore_selected_files_keeps_the_pod_running(zap, host_dir):
    """`zap restore REF --file PATH` (issue 15, snapper's undochange): single files back as they
    were, a file made since deleted, the pod running on, what was replaced kept; symlinks the pod
    made are not followed on either side."""
    zap("run", "f", "--", "sh", "-c", "echo v1 > conf; mkdir -p etc; echo a > etc/a; exec sleep 600")
    vol = zap.volume("f")
    wait_for(lambda: (vol / "etc/a").exists(), what="the files")
    os.chmod(vol / "conf", 0o640)
    zap("checkpoint", "f")
    pid = zap.pod("f")["pid"]
    (vol / "conf").write_text("v2\n")
    (vol / "new").write_text("made since\n")
    (vol / "etc/a").unlink()
    (vol / "etc/a").symlink_to(host_dir / "victim")  # the pod points etc/a at a host file
    out = zap("restore", "f@1", "--file", "conf", "--file", f"{zap.pod('f')['path']}/new", "--file", "etc/a")
    assert out.stdout.splitlines() == ["conf: restored", "new: deleted (it did not exist then)", "etc/a: restored"]
    assert (vol / "conf").read_text() == "v1\n" and stat.S_IMODE((vol / "conf").stat().st_mode) == 0o640
    assert not (vol / "new").exists() and not (vol / "etc/a").is_symlink() and (vol / "etc/a").read_text() == "a\n"
    assert not (host_dir / "victim").exists()
    assert zap.pod("f")["pid"] == pid and zap.pod("f")["state"] == "running"  # the processes untouched
    saved = out.stderr.split("kept in ")[1].split()[0]
    assert saved == "f@2" and (Path(zap.json("show", "f@2")["snapshot"]["path"]) / "conf").read_text() == "v2\n"
    # Bad input changes nothing.
    zap.fails("restore", "f@1", "--file", "../escape", code=2)
    (vol / "etc").rename(vol / "etc-real")
    (vol / "etc").symlink_to(host_dir)
    assert "not followed" in zap.fails("restore", "f@1", "--file", "etc/a", code=1)
    assert list(host_dir.iterdir()) == []


def test_diff_of_file_contents(zap, host_dir):
    """`zap diff -p` (issue 15): the changed files line by line (GNU diff -u), binary files named,
    --file limiting it, against the live files too; a symlink the pod made to a host file is
    compared as a link (its target never read)."""
    (host_dir / "secret").write_text("HOST SECRET\n")
    zap("run", "dp", "--", "sleep", "600")
    vol = zap.volume("dp")
    (vol / "conf").write_text("a\nb\nc\n")
    (vol / "blob").write_bytes(b"\0\1\2")
    (vol / "d").mkdir()
    (vol / "d/old").write_text("gone\n")
    zap("checkpoint", "dp")
    (vol / "conf").write_text("a\nB\nc\n")
    (vol / "blob").write_bytes(b"\0\1\3")
    (vol / "d/old").unlink()
    (vol / "d/new").write_text("made\n")
    (vol / "leak").symlink_to(host_dir / "secret")
    zap("checkpoint", "dp")
    out = zap("diff", "dp@1", "dp@2", "-p").stdout
    assert "--- dp@1:/conf\n+++ dp@2:/conf\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n" in out
    assert "Binary files dp@1:/blob and dp@2:/blob differ" in out
    assert "-gone" in out and "+made" in out and "+ /leak" in out and "HOST SECRET" not in out
    only = zap("diff", "dp@1", "dp@2", "-p", "--file", "d")
    assert only.stdout.splitlines()[:2] == ["+ /d/new", "- /d/old"] and "/conf" not in only.stdout
    assert "1 added, 0 modified, 1 deleted" in only.stderr
    (vol / "conf").write_text("live\n")
    live = zap("diff", "dp@2", "-p", "--file", "conf").stdout
    assert "+++ now:/conf" in live and "+live" in live and "-B" in live
    assert "does not go with --json" in zap.fails("diff", "dp@1", "dp@2", "-p", "--json", code=2)
    zap.fails("diff", "dp@1", "dp@2", "-p", "--file", "../x", code=2)


def _groups(pid: int) -> dict[str, Path]:
    """controller -> the directory of pid's control group, cgroup v1 or v2."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _n, ctl, path = line.split(":", 2)
        for c in ctl.split(",") if ctl else ["memory", "cpu"]:  # v2: one line for all
            base = Path("/sys/fs/cgroup") / (c if ctl else "")
            if c in ("memory", "cpu") and (base / path.lstrip("/")).is_dir() and c not in out:
                if not ctl and not (base / "cgroup.controllers").exists():
                    base = Path("/sys/fs/cgroup/unified")
                out[c] = base / path.lstrip("/")
    return out


def _limit_files(groups: dict[str, Path]) -> tuple[int, int]:
    mem, cpu = groups["memory"], groups["cpu"]
    if (mem / "memory.max").exists():
        return int((mem / "memory.max").read_text()), int((cpu / "cpu.max").read_text().split()[0])
    return int((mem / "memory.limit_in_bytes").read_text()), int((cpu / "cpu.cfs_quota_us").read_text())


def test_resource_limits_memory_and_cpus(zap):
    """`zap run --memory --cpus` (issue 15, Podman's): the pod runs in control groups of its own
    with those limits, from its first process on; a process `zap exec` starts is in them too (the
    OOM killer ends it, not the host); a restore and a branch come back in them, the branch in
    its own with the same limits; removing the pod removes them."""
    busy = "import time\nwhile True: pass"
    zap("run", "lim", "--memory", "48M", "--cpus", "0.5", "--", "python3", "-c", busy)
    pod = zap.pod("lim")
    assert pod["limits"] == {"memory": 48 << 20, "cpus": 0.5}
    assert "limits:        memory 48.0 MiB, 0.5 CPUs" in zap("show", "lim").stdout
    init_groups = _groups(pod["pid"])
    assert _limit_files(init_groups) == (48 << 20, 50000)
    child = int(Path(f"/proc/{pod['pid']}/task/{pod['pid']}/children").read_text().split()[0])
    assert _groups(child) == init_groups  # the command, inherited from its first process
    cpu_stat = init_groups["cpu"] / "cpu.stat"
    wait_for(lambda: int(dict(ln.split() for ln in cpu_stat.read_text().splitlines())["nr_throttled"]) > 3,
             what="the busy pod to be throttled at half a CPU")  # fmt: skip
    # A process started by exec counts against the pod's memory: 200 MiB is too much.
    hog = zap("exec", "lim", "--", "python3", "-c", "b = bytearray(200 << 20); print('survived')", check=False)
    assert hog.returncode == 137 and "survived" not in hog.stdout  # SIGKILL from the OOM killer
    assert zap.pod("lim")["state"] == "running" and zap("exec", "lim", "--", "true").returncode == 0

    zap("checkpoint", "lim")
    zap("restore", "lim@1")
    pod = zap.pod("lim")
    assert _groups(pod["pid"]) == init_groups and _limit_files(init_groups) == (48 << 20, 50000)
    zap("branch", "lim@1", "limb")
    branch = zap.pod("limb")
    bgroups = _groups(branch["pid"])
    assert branch["limits"] == pod["limits"] and bgroups["memory"] != init_groups["memory"]
    assert _limit_files(bgroups) == (48 << 20, 50000)
    zap("rm", "--force", "limb")
    zap("rm", "--force", "lim")
    assert not any(g.exists() for g in (*init_groups.values(), *bgroups.values()))
    # `zap update` (podman update): a running pod that had no limits gets them at once, its
    # processes moved into groups of its own.
    zap("run", "up", "--", "python3", "-c", busy)
    pod = zap.pod("up")
    before = _groups(pod["pid"])
    assert zap("update", "up", "--memory", "64M", "--cpus", "0.25").stdout.strip() == "up: memory 64.0 MiB, 0.25 CPUs, restart no"
    after = _groups(pod["pid"])
    child = int(Path(f"/proc/{pod['pid']}/task/{pod['pid']}/children").read_text().split()[0])
    assert after != before and _groups(child) == after and _limit_files(after) == (64 << 20, 25000)
    zap("update", "up", "--cpus", "1")
    assert _limit_files(after) == (64 << 20, 100000) and zap.pod("up")["limits"] == {"memory": 64 << 20, "cpus": 1.0}
    assert "nothing to change" in zap.fails("update", "up", code=2)
    zap("rm", "--force", "up")
    assert not any(g.exists() for g in after.values())
    # Bad values: one line, exit 2, nothing made.
    for bad in (["--memory", "1K"], ["--memory", "lots"], ["--cpus", "0"], ["--cpus", "9999"], ["--cpus", "nan"]):
        zap.fails("run", "bad", *bad, "--", "true", code=2)
    assert zap.json("ps")["pods"] == []


def test_exec_with_a_terminal_of_the_pods_own(zap):
    """`zap exec -it` (issue 15): the command gets a pty of the pod's devpts, our TERM, and its
    exit code comes back; without a terminal here, -t is refused in one line."""
    zap("run", "term", "--", "sleep", "600")
    master, slave = os.openpty()
    p = subprocess.Popen([*ZAP_CMD, "exec", "-it", "term", "--", "sh", "-c",
                          "tty; echo TERM=$TERM; exit 3"], env=dict(zap.env, TERM="vt100"),
                         stdin=slave, stdout=slave, stderr=slave)  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(60) == 3
    assert out.split() == [b"/dev/pts/0", b"TERM=vt100"], out  # the pod's first pty, not ours
    assert "not a TTY" in zap.fails("exec", "-t", "term", "--", "true", code=2)
