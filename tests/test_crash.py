"""zap killed with SIGKILL at each phase of checkpoint, restore, branch, rmckpt and import, then
recovered: no pod frozen or running twice, nothing left that no catalog row names, `zap verify`
clean, every earlier checkpoint branchable with its data continuing exactly.

A phase is reached through ZAP_FAULT: zap kills itself at a named point (zapckpt/intents.py),
or while its CRIU child runs. ZAP_CRASH_RUNS repeats every phase (bench/crash_soak.sh runs 20
of each).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import COUNTER, WORKLOADS, ZAP_CMD, assert_continuous, counter_values, proc_state, wait_for

RUNS = int(os.environ.get("ZAP_CRASH_RUNS", "1"))


def _staging_base(zap) -> str:
    # As zapckpt/state.py names it.
    return f"/dev/shm/zapckpt.{hashlib.sha1(str(zap.home).encode()).hexdigest()[:10]}"


def killed(zap, *args: str, fault: str) -> None:
    """Run `zap ARGS` with ZAP_FAULT: it SIGKILLs itself at that point (criu-dump and
    criu-restore: 50 ms after starting CRIU, which goes on without it)."""
    cp = zap(*args, check=False, env={"ZAP_FAULT": fault})
    assert cp.returncode == -signal.SIGKILL, f"zap {' '.join(map(str, args))} was not killed at {fault} ({cp.returncode}): {cp.stderr}"


def counters(zap) -> list[int]:
    """Host pids of the counter processes (`python3 COUNTER`) of this test's pods."""
    found = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                argv = Path(f"/proc/{e}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"python3", str(COUNTER).encode()] and proc_state(int(e)) not in (None, "Z"):
                found.append(int(e))
    return found


def assert_recovered(zap, running: dict[str, int]) -> dict:
    """Recovery settles everything; then the invariants. running: pod -> copies expected (0/1)."""
    rec = zap.json("recover")
    again = zap.json("recover")
    assert again == {"operations": [], "retired": [], "removed": []}, again
    for name, copies in running.items():
        pod = zap.pod(name)
        assert pod["state"] == ("running" if copies else "stopped"), (name, pod["state"], rec)
        if copies:
            assert proc_state(pod["pid"]) not in ("T", "t", None), (name, proc_state(pod["pid"]))
    assert len(counters(zap)) == sum(running.values()), (counters(zap), rec)
    doc = zap.json("verify")
    assert doc["ok"] and doc["unrecorded"] == [], doc
    assert not [p for p in Path(_staging_base(zap)).glob("*")], "staging left behind"
    return rec


def assert_counts_on(zap, name: str) -> None:
    vol = zap.volume(name)
    n = len(counter_values(vol))
    wait_for(lambda: len(counter_values(vol)) > n + 20, what=f"{name} to count on")
    assert_continuous(counter_values(vol))


def assert_branchable(zap, ref: str, name: str) -> None:
    """An earlier checkpoint still forks, and the fork counts on exactly from its values."""
    zap("branch", ref, name)
    snap = Path(zap.json("show", ref)["snapshot"]["path"])
    base = counter_values(snap)
    vol = zap.volume(name)
    wait_for(lambda: len(counter_values(vol)) > len(base) + 20, what=f"{name} to count")
    vals = counter_values(vol)
    assert vals[: len(base)] == base
    assert_continuous(vals)
    zap("rm", "--force", name)


def _pod_with_checkpoint(zap, name: str = "c") -> None:
    zap.run_counter(name)
    zap("checkpoint", name)


CHECKPOINT_FAULTS = ["checkpoint:before-dump", "checkpoint:dumped", "checkpoint:ingested", "checkpoint:committed"]


@pytest.mark.parametrize("run", range(RUNS))
def test_killed_checkpoint(zap, run):
    _pod_with_checkpoint(zap)
    for fault in CHECKPOINT_FAULTS:
        killed(zap, "checkpoint", "c", fault=fault)
        rec = assert_recovered(zap, {"c": 1})
        assert [o["op"] for o in rec["operations"]] == ["checkpoint"], rec
        committed = fault == "checkpoint:committed"
        assert rec["operations"][0]["outcome"].startswith("finished" if committed else "undone"), rec
        assert_counts_on(zap, "c")
    killed(zap, "checkpoint", "c", fault="criu-dump")
    assert_recovered(zap, {"c": 1})
    assert_counts_on(zap, "c")
    # --stop killed after the dump (tasks left stopped, nothing committed): resumed, not frozen
    killed(zap, "checkpoint", "--stop", "c", fault="checkpoint:dumped")
    assert_recovered(zap, {"c": 1})
    assert_counts_on(zap, "c")
    # --stop killed after the commit: the pod ends as the checkpoint says, and restores from it
    killed(zap, "checkpoint", "--stop", "c", fault="checkpoint:committed")
    assert_recovered(zap, {"c": 0})
    zap("restore", "c@latest")
    assert_counts_on(zap, "c")
    assert_branchable(zap, "c@1", "c-fork")


RESTORE_FAULTS = ["restore:saved", "restore:swapped", "restore:restored"]


@pytest.mark.parametrize("run", range(RUNS))
def test_killed_restore(zap, run):
    _pod_with_checkpoint(zap)
    for fault in RESTORE_FAULTS:
        killed(zap, "restore", "c@1", fault=fault)
        rec = assert_recovered(zap, {"c": 1})
        ops = [o["op"] for o in rec["operations"]]
        assert ops[-1] == "restore", rec
        assert_counts_on(zap, "c")
    killed(zap, "restore", "c@1", fault="criu-dump")  # while it saves the state it replaces
    assert_recovered(zap, {"c": 1})
    assert_counts_on(zap, "c")
    killed(zap, "restore", "c@1", fault="criu-restore")
    rec = assert_recovered(zap, {"c": 1})
    # CRIU goes on without zap: it finishes the restore (recovery adopts it) where pid 1 shares
    # our root, and fails its pidfile (and kills what it restored) where not (recovery undoes).
    assert rec["operations"][-1]["outcome"].startswith(("finished", "undone (the pod was put back")), rec
    assert_counts_on(zap, "c")
    # The rollback itself stays undoable: every state it replaced is a checkpoint.
    assert zap("restore", "c@latest").returncode == 0
    assert_counts_on(zap, "c")
    assert_branchable(zap, "c@1", "c-fork")


def test_killed_while_restored_tasks_wait_for_their_locks(zap):
    """A restore of a pod holding POSIX locks on a mapped file keeps the restored tasks stopped
    until zap has taken those locks again inside them (criu/locks.py): zap killed right there
    (restore:stopped) must not leave them stopped, nor lockless and running. Recovery undoes the
    restore: the state it replaced comes back, locks held, the tasks running."""
    zap("run", "lk", "--", "python3", str(WORKLOADS / "lock_mapped.py"))
    vol = zap.volume("lk")
    wait_for(lambda: (vol / "locked").exists(), what="the locks")
    zap("checkpoint", "lk")
    killed(zap, "restore", "lk@1", fault="restore:stopped")
    rec = zap.json("recover")
    assert rec["operations"][-1]["outcome"].startswith("undone (the pod was put back"), rec
    pod = zap.pod("lk")
    assert pod["state"] == "running" and proc_state(pod["pid"]) not in ("T", "t")
    held = []
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{e}/ns/pid").st_ino == os.stat(f"/proc/{pod['pid']}/ns/pid").st_ino:
                assert proc_state(int(e)) not in ("T", "t"), e  # none left stopped
                held += [ln for ln in Path("/proc/locks").read_text().splitlines() if f" {e} " in ln]
        except OSError:
            continue
    assert len(held) == 2, held  # both locks, the mapped file's included
    n = (vol / "mapped.dat").read_bytes()[:8]
    wait_for(lambda: (vol / "mapped.dat").read_bytes()[:8] != n, what="the process counting")
    doc = zap.json("verify")
    assert doc["ok"] and doc["unrecorded"] == [], doc


@pytest.mark.parametrize("run", range(RUNS))
def test_killed_branch_leaves_nothing_and_retry_works(zap, run):
    _pod_with_checkpoint(zap)
    for kill in ({"fault": "branch:before-restore"}, {"fault": "criu-restore"}, {"fault": "branch:restored"}):
        killed(zap, "branch", "c@1", "fork", **kill)
        rec = assert_recovered(zap, {"c": 1})
        assert rec["operations"][-1]["outcome"].startswith("undone"), rec
        assert "fork" not in [p["name"] for p in zap.json("ps")["pods"]]
    assert_branchable(zap, "c@1", "fork")  # the same name works
    assert_counts_on(zap, "c")


@pytest.mark.parametrize("run", range(RUNS))
def test_killed_rmckpt_and_import(zap, run, tmp_path):
    _pod_with_checkpoint(zap)
    zap("checkpoint", "c")
    killed(zap, "rmckpt", "c@2", fault="remove:committed")
    rec = assert_recovered(zap, {"c": 1})
    assert [o["op"] for o in rec["operations"]] == ["remove"], rec
    assert [c["seq"] for c in zap.json("list", "c")["checkpoints"]] == [1]
    # A diff against the live files killed with its temporary snapshot made (issue 15).
    killed(zap, "diff", "c@1", fault="diff:snapshotted")
    rec = assert_recovered(zap, {"c": 1})  # verify: no unrecorded snapshot left
    assert [(o["op"], o["outcome"].split()[0]) for o in rec["operations"]] == [("diff", "finished")], rec
    out = tmp_path / "c1.zap"
    zap("export", "c@1", out)
    killed(zap, "import", out, "--name", "imp", fault="import:received")
    rec = assert_recovered(zap, {"c": 1})
    assert rec["operations"][-1]["outcome"].startswith("undone"), rec
    zap("import", out, "--name", "imp")  # the retry works
    assert_branchable(zap, "c@1", "fork")


def test_frozen_pod_is_reported_and_refused(zap):
    """A pod whose tasks are stopped is `frozen` in zap ps, and neither a checkpoint nor a
    restore pretends otherwise."""
    pod = zap.run_counter("f")
    zap("checkpoint", "f")
    os.kill(pod["pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(pod["pid"]) == "T", what="the stop")
        assert zap.pod("f")["state"] == "frozen"
        assert "frozen" in zap.fails("checkpoint", "f", code=2)
        assert "frozen" in zap.fails("restore", "f@1", code=1)
    finally:
        os.kill(pod["pid"], signal.SIGCONT)
    assert zap.pod("f")["state"] == "running"
    assert len(zap.json("list", "f")["checkpoints"]) == 1


def test_branches_during_a_prune_wait_or_miss_cleanly(zap):
    """A prune and two branches of the checkpoint it removes, all at once: each branch either
    comes first (then the checkpoint is an origin and stays) or finds it gone (one line, exit
    2); never a locked database or a half-read image set."""
    zap.run_counter("c")
    for _ in range(5):
        zap("checkpoint", "c")
    cmds = [["prune", "c", "--keep-last", "1"], ["branch", "c@1", "b1"], ["branch", "c@1", "b2"]]
    procs = [subprocess.Popen([*ZAP_CMD, *c], env=zap.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert results[0][0] == 0, results[0]
    made = []
    for (rc, err), name in zip(results[1:], ("b1", "b2")):
        assert rc in (0, 2), (name, rc, err)
        if rc == 0:
            made.append(name)
        else:
            assert "no checkpoint c@1" in err and err.count("\n") == 1, err
    seqs = [c["seq"] for c in zap.json("list", "c")["checkpoints"]]
    assert (1 in seqs) == bool(made), (seqs, made)
    for name in made:
        assert_counts_on(zap, name)
    assert zap.json("verify")["ok"]


def test_verify_finds_and_repairs_unrecorded_objects(zap):
    """What no catalog row names (a stray snapshot, volume, pack, staging directory) is reported
    by `zap verify` (exit 1) and removed by `zap verify --repair`; recorded data is untouched."""
    zap.run_counter("c")
    zap("checkpoint", "c")
    pool = zap.home / "pool"
    subprocess.run(["btrfs", "subvolume", "create", str(pool / "snapshots" / "stray")], check=True, capture_output=True)
    subprocess.run(["btrfs", "subvolume", "create", str(pool / "pods" / "ghost")], check=True, capture_output=True)
    (zap.home / "store" / "packs" / "stray.pack").write_bytes(b"x" * 100)
    stray_stage = Path(_staging_base(zap)) / "dump-stray-abc"
    stray_stage.mkdir(parents=True)
    cp = zap("verify", "--json", check=False)
    doc = __import__("json").loads(cp.stdout)
    assert cp.returncode == 1 and not doc["ok"], doc
    assert len(doc["unrecorded"]) == 4 and all(any(k in u for u in doc["unrecorded"]) for k in
                                               ("stray", "ghost", "stray.pack", "dump-stray-abc")), doc  # fmt: skip
    doc = zap.json("verify", "--repair")
    assert doc["ok"] and len(doc["unrecorded"]) == 4 and doc["repaired"], doc
    assert zap.json("verify")["unrecorded"] == []
    assert not (pool / "snapshots" / "stray").exists() and not (pool / "pods" / "ghost").exists()
    assert_branchable(zap, "c@1", "fork")


@pytest.mark.system  # a tmpfs of its own
def test_full_state_directory_is_one_line_and_changes_nothing(tmp_path):
    """A state directory with no space left (the catalog cannot be written): a checkpoint fails
    with one line, the pod runs on, and once there is space again everything works."""
    from conftest import Zap, _leftovers, _net_leftovers

    home, mp, img = tmp_path / "home", tmp_path / "pool", tmp_path / "pool.img"
    home.mkdir()
    mp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(home)], check=True)
    try:
        subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mp)], check=True)
        z = Zap(home)
        try:
            z("init", "--pool", mp)
            z.run_counter("c")
            z("checkpoint", "c")
            filler = home / "filler"
            # Unbuffered: a buffered file would raise ENOSPC again when closed, with its unwritten rest.
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError:
                pass
            finally:
                os.close(fd)
            cp = z("checkpoint", "c", check=False)
            lines = cp.stderr.strip().splitlines()
            assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("zap: error: "), cp.stderr
            assert "internal error" not in cp.stderr and ("full" in cp.stderr or "space" in cp.stderr), cp.stderr
            filler.unlink()
            assert z.pod("c")["state"] == "running"
            assert_counts_on(z, "c")
            z("checkpoint", "c")
            assert [c["seq"] for c in z.json("list", "c")["checkpoints"]] == [1, 2]
            doc = z.json("verify")
            assert doc["ok"] and doc["unrecorded"] == [], doc
            assert_branchable(z, "c@1", "fork")
        finally:
            (home / "filler").unlink(missing_ok=True)  # space first, or nothing below could clean up
            z("rm", "--force", "c", check=False)
            z("deinit", check=False)
            left = [x for x in _leftovers(home) if x != f"mount: {home}"]  # the tmpfs itself goes below
            assert not left + _net_leftovers(z.bridge, home), left
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
        subprocess.run(["umount", str(home)], capture_output=True)


def test_a_recovery_that_fails_does_not_lock_the_user_out(zap):
    """An intent record recovery cannot settle (here: an unknown operation): commands that only
    look, and deinit, go on with a warning; the others refuse with one line; recover says why."""
    import sqlite3

    zap.run_counter("c")
    db = sqlite3.connect(zap.home / "catalog.db")
    db.execute("INSERT INTO intents (id, op, pod, owner_pid, owner_start, created_at, data) "
               "VALUES ('bad', 'bogus', 'c', 999999, 1, '2026-01-01 00:00:00', '{}')")  # fmt: skip
    db.commit()
    db.close()
    cp = zap("ps", check=False)
    assert cp.returncode == 0 and "zap: warning: interrupted operations could not be settled" in cp.stderr, cp.stderr
    assert "unknown operation" in zap.fails("checkpoint", "c", code=1)
    assert "unknown operation 'bogus'" in zap.fails("recover", code=1)
    assert zap.pod("c")["state"] == "running"
    db = sqlite3.connect(zap.home / "catalog.db")
    db.execute("DELETE FROM intents WHERE id = 'bad'")
    db.commit()
    db.close()
