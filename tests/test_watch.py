"""Continuous checkpoints and pods that outlive a reboot, on real pods: `zap watch` (the
supervisor, its schedule, skipping an idle pod, the keep policy, restart after a kill, failures),
and `zap suspend` / `zap resume` across `zap deinit` (the stand-in for a reboot here; the VM
guest runs a real one)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from helpers import ZAP_CMD, assert_continuous, counted_past, counter_values, proc_state, wait_for


def _watches(zap) -> dict:
    return zap.json("watch", "--list")


def _supervisor(zap) -> int | None:
    pid = _watches(zap)["supervisor"]["pid"]
    return pid if pid and pid > 0 else None


def _watch_cks(zap, name: str) -> list[dict]:
    return [c for c in zap.json("list", name)["checkpoints"] if c["kind"] == "watch"]


def test_watch_schedule_keep_policy_and_every_kept_checkpoint_branches(zap):
    zap.run_counter("c", interval="0.002")
    manual = zap("checkpoint", "c", "-m", "mine").stdout.strip()
    t0 = time.monotonic()
    assert zap("watch", "c", "--every", "1s", "--keep-last", "3").stdout.strip() == "watching c every 1s, keeping last 3"
    time.sleep(5)
    w = _watches(zap)["watches"][0]
    elapsed = time.monotonic() - t0
    # The first tick at once, then one a second (a busy pod: never skipped). A loaded machine
    # (two CPUs, the guest tests alongside) makes ticks late, never more frequent.
    assert elapsed / 2 <= w["taken"] <= int(elapsed) + 2, (w, elapsed)
    assert w["skipped"] == 0 and w["failed"] == 0 and w["last_ok"] is True and w["last_result"].startswith("took c@")
    ps = zap.json("ps")["pods"][0]
    assert ps["watch"]["every_s"] == 1.0 and ps["watch"]["last_ok"] is True
    assert "every 1s ok" in zap("ps").stdout
    zap("unwatch", "c")
    wait_for(lambda: _supervisor(zap) is None, timeout=30, what="the supervisor to exit with no watch left")
    # Exactly the newest three watch checkpoints are kept; the manual one is not the watch's.
    kept = _watch_cks(zap, "c")
    assert len(kept) == 3 and [c["seq"] for c in kept] == sorted(c["seq"] for c in kept)
    assert manual in [c["ref"] for c in zap.json("list", "c")["checkpoints"]]
    # Every kept one is a complete pair: a branch of it counts on from its snapshot exactly.
    for c in kept:
        b = f"b{c['seq']}"
        zap("branch", c["ref"], b)
        snap = counter_values(Path(c["snapshot"]["path"]))
        assert_continuous(counted_past(zap.volume(b), len(snap) + 20, f"branch {b} counting"))
        zap("rm", "--force", b)


def test_watch_skips_an_idle_pod_restarts_after_a_kill_and_sees_a_written_file(zap):
    zap("run", "idle", "--", "sleep", "100000")
    zap("watch", "idle", "--every", "1s")
    w = wait_for(lambda: (w := _watches(zap)["watches"][0])["taken"] == 1 and w["skipped"] >= 2 and w,
                 timeout=30, what="an idle pod's ticks to be skipped")  # fmt: skip
    assert w["last_result"].startswith("skipped: nothing changed") and w["last_ok"] is True
    assert len(_watch_cks(zap, "idle")) == 1
    # A killed supervisor is started again by the next watch command, and goes on.
    pid = _supervisor(zap)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: proc_state(pid) in (None, "Z"), what="the supervisor to die")
    cp = zap("watch", "--list")
    assert "was not running: started" in cp.stderr
    assert _supervisor(zap) not in (None, pid)
    # A file written into the volume (no CPU time of the pod's own): the next tick sees it.
    zap("exec", "idle", "--", "sh", "-c", "echo hello > written.txt")
    wait_for(lambda: _watches(zap)["watches"][0]["taken"] == 2, timeout=30, what="a checkpoint of the written file")
    (newest,) = _watch_cks(zap, "idle")[-1:]
    assert newest["seq"] > 1 and (zap.volume("idle") / "written.txt").read_text() == "hello\n"
    log = (zap.home / "logs" / "watch.log").read_text()
    assert "supervisor started" in log and "idle: skipped: nothing changed" in log and "idle: took idle@" in log
    zap("unwatch", "idle")
    assert zap.fails("unwatch", "idle", code=2).endswith("is not watched (see `zap watch --list`)")


def test_a_failing_watched_checkpoint_is_counted_retried_and_never_leaves_the_pod_frozen(zap):
    zap.run_counter("f", interval="0.002")
    # The supervisor inherits the environment of the command that starts it: a CRIU time limit
    # no dump can meet makes every tick fail.
    zap("watch", "f", "--every", "1s", env={"ZAP_CRIU_TIMEOUT": "0.01"})
    w = wait_for(lambda: (w := _watches(zap)["watches"][0])["failed"] >= 2 and w, timeout=40, what="failed ticks")
    assert w["last_ok"] is False and w["last_result"].startswith("failed:") and w["taken"] == 0
    assert "every 1s FAILED" in zap("ps").stdout
    pod = zap.pod("f")
    assert pod["state"] == "running" and proc_state(pod["pid"]) in ("R", "S", "D")
    counted_past(zap.volume("f"), len(counter_values(zap.volume("f"))) + 50, "f to keep counting")
    zap("unwatch", "f")
    assert zap.json("list", "f")["checkpoints"] == []


def test_watch_refuses_bad_input_in_one_line(zap):
    zap("run", "p", "--", "sleep", "100000")
    zap.fails("watch", "p", "--every", "0.5s", code=2)
    zap.fails("watch", "p", "--every", "ten", code=2)
    zap.fails("watch", "p", code=2)
    zap.fails("watch", "nope", "--every", "5s", code=2)
    zap.fails("watch", "p", "--every", "5s", "--keep-last", "0", code=2)
    zap.fails("watch", "--list", "p", code=2)
    zap.fails("suspend", code=2)
    zap.fails("suspend", "p", "--all", code=2)
    zap.fails("resume", "nope", code=2)
    zap.fails("resume", "p", code=2)  # a pod that is not suspended: bad input too
    # none of the refused watches was registered, and nothing was taken for them
    assert zap.json("watch", "--list")["watches"] == []
    assert zap.json("list", "p")["checkpoints"] == []


def test_suspend_and_resume_across_deinit(zap):
    zap.run_counter("s", interval="0.002")
    zap("run", "quiet", "--", "sleep", "100000")
    assert zap("suspend", "--all").stdout.splitlines() == ["quiet: suspended as quiet@1", "s: suspended as s@1"]
    ps = {p["name"]: p for p in zap.json("ps")["pods"]}
    assert ps["s"]["suspended"] and ps["s"]["state"] == "stopped" and "stopped (suspended)" in zap("ps").stdout
    before = counter_values(zap.volume("s"))
    assert "holds the suspended pod" in zap.fails("rmckpt", "s@1", code=2)
    # The stand-in for a reboot: every pod stopped, the pool unmounted, the network gone.
    zap("deinit")
    assert zap("resume", "--all").stdout.splitlines() == ["quiet: resumed from quiet@1", "s: resumed from s@1"]
    values = counted_past(zap.volume("s"), len(before) + 50, "s counting after resume")
    assert_continuous(values)
    assert values[: len(before)] == before  # the same run, from where it stopped
    assert zap.pod("quiet")["state"] == "running" and not zap.pod("s")["suspended"]
    assert zap("resume", "--all").stderr.strip() == "nothing to do"
    # a pod that is not suspended: bad input, exit 2 (issue 23), and no checkpoint made for it
    n = len(zap.json("list", "s")["checkpoints"])
    assert "pod 's' is not suspended" in zap.fails("resume", "s", code=2)
    assert len(zap.json("list", "s")["checkpoints"]) == n


def test_systemd_units_name_the_commands_they_run():
    """The units are plain text for systemd; what they run must be real zap commands."""
    units = Path(__file__).resolve().parent.parent / "scripts" / "systemd"
    text = {p.name: p.read_text() for p in units.glob("*.service")}
    assert set(text) == {"zapckpt.service", "zapckpt-watch.service"}
    assert "ExecStart=/usr/local/bin/zap resume --all" in text["zapckpt.service"]
    assert "ExecStop=/usr/local/bin/zap suspend --all" in text["zapckpt.service"]
    assert "ExecStart=/usr/local/bin/zap watch-serve" in text["zapckpt-watch.service"]
    for line in (ln for t in text.values() for ln in t.splitlines() if ln.startswith(("ExecStart=", "ExecStop="))):
        argv = line.split("=", 1)[1].split()
        assert argv[0] == "/usr/local/bin/zap"
        cp = subprocess.run([*ZAP_CMD, argv[1], "--help"], capture_output=True)
        assert cp.returncode == 0, line


def test_restart_policies_and_exit_statuses(zap):
    """`zap run --restart` (issue 15, Podman's): the supervisor sees each pod's init end (its
    status, from the kernel's process events), restarts by policy, never a pod zap stopped,
    killed or restored, and after it was itself away (a reboot) restarts what ended meanwhile."""
    log = lambda: Path(_watches(zap)["supervisor"]["log"]).read_text()  # noqa: E731
    runs = "echo run >> runs; sleep 0.3; exit 3"
    zap("run", "fail", "--restart", "on-failure:2", "--", "sh", "-c", runs)
    zap("run", "ok", "--restart", "on-failure", "--", "sh", "-c", "echo run >> runs; exit 0")
    zap("run", "plain", "--", "sh", "-c", "sleep 0.5; exit 5")  # no policy: its status is recorded all the same
    wait_for(lambda: zap.pod("fail")["restart"]["count"] == 2 and zap.pod("fail")["state"] == "dead",
             timeout=30, what="two restarts of the failing pod")  # fmt: skip
    time.sleep(1.5)  # a third one would come within a second
    fail = zap.pod("fail")
    assert (zap.volume("fail") / "runs").read_text() == "run\n" * 3
    assert fail["exit_code"] == 3 and fail["restart"] == {"policy": "on-failure", "max": 2, "count": 2}
    assert "dead (exit 3)" in zap("ps").stdout and "dead (exit 3 at " in zap("show", "fail").stdout
    wait_for(lambda: zap.pod("plain")["exit_code"] == 5, what="the plain pod's status")
    assert zap.pod("ok")["exit_code"] == 0 and (zap.volume("ok") / "runs").read_text() == "run\n"
    assert log().count("fail: ended (exit 3); restarted by its policy") == 2

    zap("run", "svc", "--restart", "always", "--", "sleep", "600")
    first = zap.pod("svc")["pid"]
    os.kill(first, signal.SIGKILL)  # it dies by itself, as far as zap knows
    wait_for(lambda: (p := zap.pod("svc"))["state"] == "running" and p["pid"] != first, timeout=20,
             what="the always pod to be restarted")  # fmt: skip
    assert "svc: ended (exit 137); restarted by its policy (1 restart(s))" in log()
    # A restore replaces its processes: not an end, nothing restarted.
    zap("checkpoint", "svc")
    zap("restore", "svc@1")
    restored = zap.pod("svc")["pid"]
    time.sleep(2)
    assert zap.pod("svc")["pid"] == restored and zap.pod("svc")["restart"]["count"] == 1
    # Stopped or killed by zap: it stays so.
    zap("stop", "svc")
    zap("start", "svc")
    assert zap.pod("svc")["restart"]["count"] == 0  # a start by hand counts again
    zap("kill", "svc")
    time.sleep(2)
    assert zap.pod("svc")["state"] == "stopped" and zap.pod("svc")["exit_code"] == 137

    # The supervisor away (killed; a reboot): the pod that ended meanwhile is restarted when it
    # is back, its status unknown.
    zap("start", "svc")
    sup = _supervisor(zap)
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: proc_state(sup) in (None, "Z"), what="the supervisor to die")
    os.kill(zap.pod("svc")["pid"], signal.SIGKILL)
    wait_for(lambda: zap.pod("svc")["state"] == "dead", what="the pod to die")
    assert zap.pod("svc")["exit_code"] is None
    assert "started" in zap("watch", "--list").stderr
    wait_for(lambda: zap.pod("svc")["state"] == "running", timeout=20, what="the restart after the supervisor came back")
    assert "svc: ended (exit status not seen); restarted by its policy" in log()

    # `zap update --restart` gives a running pod a policy: it is restarted from then on.
    zap("run", "late", "--", "sleep", "600")
    zap("update", "late", "--restart", "always")
    pid = zap.pod("late")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (p := zap.pod("late"))["state"] == "running" and p["pid"] != pid, timeout=20,
             what="the pod given a policy by update to be restarted")  # fmt: skip
    zap("rm", "--force", "late")
    for bad in ("sometimes", "on-failure:0", "always:3", "on-failure:x"):
        assert "bad --restart" in zap.fails("run", "bad", "--restart", bad, "--", "true", code=2)
    for name in ("fail", "ok", "plain", "svc"):
        zap("rm", "--force", name)
    wait_for(lambda: _supervisor(zap) is None, timeout=30, what="the supervisor to exit with no policy left")
