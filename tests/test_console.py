"""The console log outside the snapshot (issue 15): what a pod writes to stdout and stderr
survives a rollback, `zap logs -f` follows across one, a branch has a log of its own, and
`--tail`, `--since`, `--timestamps` select and show it; what the pod writes in its volume is
still rolled back. Record parsing is unit-tested at the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import ZAP_CMD, wait_for

# One line a tick on stdout, and the same count in a file of the volume.
TICKER = "i=0; while :; do i=$((i+1)); echo tick $i; echo $i > count.txt; sleep 0.1; done"


def _ticks(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^tick (\d+)$", text, re.M)]


@pytest.mark.system
def test_console_survives_rollback_and_follows_across_it(zap):
    zap("run", "tk", "--", "sh", "-c", TICKER)
    vol = zap.volume("tk")
    wait_for(lambda: len(_ticks(zap("logs", "tk").stdout)) >= 5, what="ticks")
    follower = subprocess.Popen([*ZAP_CMD, "logs", "-f", "tk"], stdout=subprocess.PIPE,
                                text=True, env=zap.env)  # fmt: skip
    try:
        zap("checkpoint", "tk")
        snap = zap.json("show", "tk@1")["snapshot"]["path"]
        at = int(open(f"{snap}/count.txt").read())
        wait_for(lambda: max(_ticks(zap("logs", "tk").stdout)) >= at + 10, what="ticks after the checkpoint")
        before = max(_ticks(zap("logs", "tk").stdout))
        zap("restore", "tk@1")
        # The volume is rolled back; the console log keeps what was written since the checkpoint.
        assert int((vol / "count.txt").read_text()) < before
        # the restored process's own lines (the log goes back to the checkpoint's count, then on)
        dropped = lambda t: any(b <= a for a, b in zip(t, t[1:]))  # noqa: E731
        after = wait_for(lambda: (t := _ticks(zap("logs", "tk").stdout)) and dropped(t) and t[-1] > at + 3 and t,
                         what="ticks after")  # fmt: skip
        assert set(range(1, before + 1)) <= set(after)  # nothing written before the restore is gone
        drop = next(i for i in range(len(after) - 1) if after[i + 1] <= after[i])  # where the restore came
        assert after[drop] >= before and at < after[drop + 1] <= at + 2, after[drop - 2 : drop + 5]  # on from the checkpoint
        wait_for(lambda: (vol / "count.txt").read_text().strip() != str(at), what="the restored pod writing")
    finally:
        zap("stop", "tk")  # ends the follower: the pod no longer runs
        out, _ = follower.communicate(timeout=30)
    followed = _ticks(out)
    assert followed[-1] > at + 3 and set(range(1, before + 1)) <= set(followed)  # -f went on after the restore
    assert followed == _ticks(zap("logs", "tk").stdout)

    # --tail, --since, --timestamps; a branch's log is its own, and `exec -d` writes to the console.
    assert _ticks(zap("logs", "--tail", "3", "tk").stdout) == followed[-3:]
    assert zap("logs", "--since", "1h", "tk").stdout == zap("logs", "tk").stdout
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert zap("logs", "--since", future, "tk").stdout == ""
    stamped = zap("logs", "-t", "--tail", "2", "tk").stdout.splitlines()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z tick \d+", ln) for ln in stamped), stamped
    assert "is neither a time" in zap.fails("logs", "--since", "soon", "tk", code=2)
    zap("branch", "tk@1", "tk2")
    wait_for(lambda: len(_ticks(zap("logs", "tk2").stdout)) >= 3, what="the branch's ticks")
    assert _ticks(zap("logs", "tk2").stdout)[0] == at + 1  # from the checkpoint on, nothing of the original's
    zap("exec", "-d", "tk2", "--", "sh", "-c", "echo from a daemon; exec sleep 600")
    wait_for(lambda: "from a daemon" in zap("logs", "tk2").stdout, what="the daemon's line")
    zap("checkpoint", "tk2")  # the daemon holds the console too: dumped and restored with it
    n = len(_ticks(zap("logs", "tk2").stdout))
    zap("restore", "tk2@1")
    # the restored processes write to the new console: five more lines than before the restore
    wait_for(lambda: len(_ticks(zap("logs", "tk2").stdout)) > n + 5, what="the restored branch's lines")
    zap("rm", "-f", "tk2", "--yes")
    assert not (zap.home / "console" / "tk2.log").exists()


@pytest.mark.system
def test_partial_lines_and_stderr(zap):
    zap("run", "pl", "--", "sh", "-c", "printf 'half'; sleep 1.2; printf ' and the rest\\n'; echo err >&2; sleep 600")
    wait_for(lambda: "err" in zap("logs", "pl").stdout, what="the lines")
    assert zap("logs", "pl").stdout == "half and the rest\nerr\n"
    raw = (zap.home / "console" / "pl.log").read_text().splitlines()
    assert [ln.split(" ", 2)[1:] for ln in raw] == [["P", "half"], ["F", " and the rest"], ["F", "err"]]


@pytest.mark.system
def test_log_rotation_keeps_one_older_file_and_reads_across_it(zap):
    """`zap init --log-max` (issue 15): the logger starts a new file once the log is that big,
    keeping one older one; `zap logs` (and -n, and -f across a rotation) reads on from the older
    into the newer without a gap or a repeat."""
    zap("init", "--log-max", "4K")
    follower = None
    zap("run", "rot", "--", "sh", "-c", "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line $i; sleep 0.02; done; "
        "exec sleep 600")  # fmt: skip
    log = zap.home / "console" / "rot.log"
    follower = subprocess.Popen([*ZAP_CMD, "logs", "-f", "rot"], stdout=subprocess.PIPE,
                                text=True, env=zap.env)  # fmt: skip
    try:
        wait_for(lambda: "line 400" in zap("logs", "rot").stdout, timeout=30, what="400 lines")
        assert log.stat().st_size < 8192 and (zap.home / "console" / "rot.log.1").stat().st_size >= 4096
        shown = [int(n) for n in re.findall(r"^line (\d+)$", zap("logs", "rot").stdout, re.M)]
        assert shown == list(range(shown[0], 401)) and shown[0] > 1  # the oldest lines went with a rotation
        assert zap("logs", "rot", "-n", "100").stdout.splitlines() == [f"line {n}" for n in range(301, 401)]
        zap("stop", "rot")
        followed = [int(n) for n in re.findall(r"^line (\d+)$", follower.communicate(timeout=30)[0], re.M)]
        assert followed == list(range(1, 401))  # it kept up: every line once, in order
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert "bad --log-max" in zap.fails("init", "--log-max", "lots", code=2)


@pytest.mark.system
def test_the_logger_outlives_a_stray_signal(zap):
    """A pod whose logger ended would get EPIPE on its next line: the logger ignores SIGTERM,
    SIGINT and SIGHUP, and ends with its pod."""
    zap("run", "lg", "--", "sh", "-c", TICKER)
    wait_for(lambda: len(_ticks(zap("logs", "lg").stdout)) >= 3, what="ticks")
    log = str(zap.home / "console" / "lg.log").encode()
    marker = b"/zap-console\0%s\0" % log  # the C logger (zapckpt/pod/logger.c)
    (logger,) = [int(p) for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    # small, as it runs beside every pod: well under the 12 MiB a Python logger took
    rss = int(next(ln.split()[1] for ln in Path(f"/proc/{logger}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:")))  # fmt: skip
    assert rss < 3 * 1024, f"the logger takes {rss} KiB"
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(logger, sig)
    seen = max(_ticks(zap("logs", "lg").stdout))
    wait_for(lambda: max(_ticks(zap("logs", "lg").stdout)) >= seen + 5, what="ticks after the signals")
    assert marker in _cmdline(str(logger))  # the same logger, alive
    zap("stop", "lg")
    assert not _cmdline(str(logger))  # gone with its pod


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def test_records_join_partial_lines_and_select_by_time():
    from zapckpt.pod.console import lines, parse_since

    recs = [b"2026-01-01T00:00:01.000000Z F one\n", b"2026-01-01T00:00:02.000000Z P tw\n",
            b"2026-01-01T00:00:03.000000Z F o\n", b"2026-01-01T00:00:04.000000Z P thr\n"]  # fmt: skip
    assert list(lines(iter(recs))) == [b"one\n", b"two\n"]
    assert list(lines(iter(recs), unfinished=True))[-1] == b"thr\n"
    assert list(lines(iter(recs), since="2026-01-01T00:00:02.000000Z", timestamps=True)) == [
        b"2026-01-01T00:00:02.000000Z two\n"]  # a line's time is its first record's
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert parse_since("90s", now) == "2026-01-01T11:58:30.000000Z"
    assert parse_since("2026-01-01T10:00:00+02:00", now) == "2026-01-01T08:00:00.000000Z"
    assert parse_since("2026-01-01", now) == "2026-01-01T00:00:00.000000Z"
    for bad in ("x", "10", "1e3s", "٣s", "nan", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(ValueError):
            parse_since(bad, now)


def test_reader_holds_back_unfinished_lines_across_chunks():
    from zapckpt.pod.console import Reader

    log = (b"2026-01-01T00:00:01.000000Z F one\n2026-01-01T00:00:02.000000Z P tw\n"
           b"2026-01-01T00:00:03.000000Z F o\n2026-01-01T00:00:04.000000Z P thr\n")  # fmt: skip
    for cut in range(len(log)):  # whatever sizes the reads come in
        r = Reader()
        out = r.feed(log[:cut]) + r.feed(log[cut:])
        assert out == b"one\ntwo\n", cut
        assert r.feed(b"", final=True) == b"thr\n"
