"""Rollback in place, undo of a rollback, and forks, with real CRIU and btrfs."""

import io
import os
import subprocess
import tarfile
from pathlib import Path

from helpers import ZAP_CMD, assert_continuous, counted_past, counter_values, proc_state, wait_for


def _snapshot_values(zap, ref):
    return counter_values(Path(zap.json("show", ref)["snapshot"]["path"]))


def test_restore_in_place_and_undo(zap):
    zap.run_counter("web")
    (zap.volume("web") / "note.txt").write_text("before\n")
    assert zap("checkpoint", "web", "-m", "good state").stdout.strip() == "web@1"
    at_ckpt = _snapshot_values(zap, "web@1")
    # Change files after the checkpoint; the restore must undo this too.
    (zap.volume("web") / "note.txt").write_text("after\n")
    (zap.volume("web") / "junk.txt").write_text("junk\n")
    counted_past(zap.volume("web"), len(at_ckpt) + 500, "more counting")
    old_pid = zap.pod("web")["pid"]

    out = zap("restore", "web@1")
    assert out.stdout.strip() == "restored web@1"
    assert "web@2" in out.stderr  # the replaced state is kept
    assert zap.json("show", "web")["state"] in ("restoring", "running")  # its memory may still come in
    pod = zap.settled("web")
    assert pod["state"] == "running" and pod["pid"] != old_pid and pod["head"] == "web@1"
    vol = zap.volume("web")
    assert (vol / "note.txt").read_text() == "before\n"
    assert not (vol / "junk.txt").exists()
    values = wait_for(lambda: (v := counter_values(vol)) and len(v) > len(at_ckpt) + 50 and v, what="counting")
    assert values[: len(at_ckpt)] == at_ckpt
    assert_continuous(values)

    saved = zap.json("show", "web@2")
    assert saved["message"] == "before restore to web@1" and saved["kind"] == "auto" and saved["has_processes"]
    saved_values = counter_values(Path(saved["snapshot"]["path"]))
    assert len(saved_values) > len(at_ckpt) + 500

    # Undo the rollback: back to the state it replaced, files and processes.
    zap("restore", "web@2")
    vol = zap.volume("web")
    assert (vol / "note.txt").read_text() == "after\n" and (vol / "junk.txt").exists()
    values = wait_for(lambda: (v := counter_values(vol)) and len(v) > len(saved_values) + 50 and v, what="counting")
    assert values[: len(saved_values)] == saved_values
    assert_continuous(values)
    # The next checkpoint descends from web@2.
    zap("checkpoint", "web")
    assert zap.json("show", "web@latest")["parent"] == "web@2"


def test_branch_while_original_runs_two_at_once_and_branch_of_branch(zap):
    orig = zap.run_counter("orig")
    zap("checkpoint", "orig")
    snap = _snapshot_values(zap, "orig@1")
    assert zap("branch", "orig@1", "fork-a").stdout.split()[0] == "fork-a"
    zap("branch", "orig@1", "fork-b")
    zap.settled("fork-a"), zap.settled("fork-b")
    pods = {p["name"]: p for p in zap.json("ps")["pods"]}
    assert {n: p["state"] for n, p in pods.items()} == {"orig": "running", "fork-a": "running", "fork-b": "running"}
    assert pods["fork-a"]["origin"] == "orig@1" and pods["orig"]["pid"] == orig["pid"]
    # Each fork is a fresh pid namespace (pid 1 inside) and sees its own volume at the same path.
    out = zap("exec", "fork-a", "--", "sh", "-c", 'pwd; grep NSpid /proc/$$/status; echo "$ZAP_POD"').stdout.split("\n")
    assert out[0] == orig["path"] and out[2] == "fork-a"
    for name in ("fork-a", "fork-b", "orig"):
        vol = zap.volume(name)
        values = counted_past(vol, len(snap) + 50, f"{name} counting")
        assert values[: len(snap)] == snap
        assert_continuous(values)
    # The forks write to their own volumes: they diverge from the original and each other.
    assert zap.volume("fork-a") != zap.volume("fork-b") != zap.volume("orig")

    zap("checkpoint", "fork-a", "-m", "fork checkpoint")
    assert zap.json("show", "fork-a@1")["parent"] == "orig@1"
    zap("branch", "fork-a@1", "fork-a-2")
    snap2 = _snapshot_values(zap, "fork-a@1")
    vol = zap.volume("fork-a-2")
    values = wait_for(lambda: (v := counter_values(vol)) and len(v) > len(snap2) + 50 and v, what="counting")
    assert_continuous(values)
    log = zap("log", "orig").stdout
    assert "branch fork-a" in log and "branch fork-a-2" in log and "fork-a@1" in log
    assert " UTC" in log  # times say their zone (issue 15)
    # rm refuses while branches and checkpoints depend on the pod.
    assert "branches" in zap.fails("rm", "orig", code=2)
    zap("rm", "--force", "orig")
    assert zap.pod("fork-a")["origin"] is None
    # The fork keeps running and writing after the original is gone.
    n = len(counter_values(zap.volume("fork-b")))
    counted_past(zap.volume("fork-b"), n + 50, "fork-b still counting")


def test_checkpoint_stop_then_restore_and_stopped_pod_restore(zap):
    zap.run_counter("job")
    pid = zap.pod("job")["pid"]
    zap("checkpoint", "job", "--stop", "-m", "parked")
    pod = zap.pod("job")
    assert pod["state"] == "stopped" and proc_state(pid) in (None, "Z")
    snap = _snapshot_values(zap, "job@1")
    # --stop leaves the tasks stopped by CRIU until they are killed: not one more value written.
    assert counter_values(zap.volume("job")) == snap
    cp = zap("restore", "job@1")
    # the pod was stopped with exactly these files, untouched since: nothing to keep (issue 23)
    assert "nothing was replaced" in cp.stderr and [c["ref"] for c in zap.json("list", "job")["checkpoints"]] == ["job@1"]
    vol = zap.volume("job")
    values = counted_past(vol, len(snap) + 50, "counting")
    assert values[: len(snap)] == snap
    assert_continuous(values)
    # A stopped pod whose files moved on: a restore keeps them, files only (nothing ran).
    zap("stop", "job")
    stopped_at = counter_values(vol)
    zap("restore", "job@1")
    assert zap.json("show", "job@2")["has_processes"] is False
    assert counter_values(Path(zap.json("show", "job@2")["snapshot"]["path"])) == stopped_at
    # Restoring the files-only state ends the running processes: said, not silent (issue 15).
    out = zap("restore", "job@2")
    assert out.stdout.strip() == "restored job@2"
    assert "job@2 holds files only" in out.stderr and "the pod is stopped now" in out.stderr
    assert zap.pod("job")["state"] == "stopped"
    assert counter_values(vol) == stopped_at


def test_branch_no_start_and_start(zap):
    zap.run_counter("src")
    zap("checkpoint", "src")
    zap("branch", "--no-start", "src@1", "files")
    pod = zap.pod("files")
    assert pod["state"] == "stopped" and pod["origin"] == "src@1"
    snap = _snapshot_values(zap, "src@1")
    assert counter_values(zap.volume("files")) == snap
    # `zap start` runs the command afresh in the branch's files (the counter resumes from them).
    zap("start", "files")
    vol = zap.volume("files")
    values = counted_past(vol, len(snap) + 50, "counting")
    assert_continuous(values)


def test_dump_and_find_read_past_files_without_following_symlinks(zap):
    zap.run_counter("f")
    vol = zap.volume("f")
    (vol / "conf").mkdir()
    (vol / "conf" / "app.conf").write_text("one\n")
    os.symlink("/etc", vol / "etc-link")
    os.symlink("/etc/hostname", vol / "host-name")
    zap("checkpoint", "f")
    (vol / "conf" / "app.conf").write_text("two\n")
    zap("checkpoint", "f")
    assert zap("dump", "f@1", "conf/app.conf").stdout == "one\n"
    assert zap("dump", "f@2", f"{zap.pod('f')['path']}/conf/app.conf").stdout == "two\n"
    # The pod's symlinks are not followed out of its snapshot (to the host's /etc).
    assert "host-name is a symlink to '/etc/hostname' (not followed)" in zap.fails("dump", "f@1", "host-name", code=1)
    assert "etc-link is a symlink" in zap.fails("dump", "f@1", "etc-link/hostname", code=1)
    assert "no conf/nope in this checkpoint" in zap.fails("dump", "f@1", "conf/nope", code=2)
    assert "'..' is not allowed" in zap.fails("dump", "f@1", "../../../etc/hostname", code=2)
    # a directory comes out as a tar archive of it (restic's dump), never on a terminal
    cp = subprocess.run([*ZAP_CMD, "dump", "f@1", "conf"], env=zap.env, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(cp.stdout)) as tar:
        assert cp.returncode == 0 and tar.extractfile("conf/app.conf").read() == b"one\n"
    found = zap.json("find", "f", "*.conf")["found"]
    assert [(x["ref"], x["path"], x["type"]) for x in found] == [("f@1", "conf/app.conf", "file"),
                                                                 ("f@2", "conf/app.conf", "file")]  # fmt: skip
    assert zap.json("find", "f", "etc-link/*")["found"] == []  # not followed either
    assert "2 match(es)" in zap("find", "f", "conf/*").stderr
