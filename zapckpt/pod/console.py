"""A pod's console: its stdout and stderr are a pipe, read outside the pod by a small logger that
appends each line, with its time, to `$ZAP_HOME/console/NAME.log`. The log is not in the volume,
so a restore does not roll it back (what the pod writes in its volume still is rolled back) and
`zap logs -f` goes on across one. A checkpoint notes the pipe its processes hold (MARK, in the
image set); a restore gives them a new pipe and logger in its place (CRIU's --inherit-fd), as
Podman's conmon does.

One record per line of the log: `<UTC time, ISO 8601 with microseconds> <F|P> <text>`. P marks
a partial line (not ended within PARTIAL_AFTER seconds, or longer than MAX_RECORD bytes),
continued by the next record.

The logger: python -m zapckpt.pod.console LOG FD MAX (FD: the pipe's read end); it ends when
every writer has closed the pipe (the pod ended). Once LOG is MAX bytes or more (0: never), it
is renamed LOG.1 (the one before is dropped) and a new LOG begins; `zap logs` reads both. Two
loggers of a pod (the old one draining while a restore's new one starts) rotate under a lock on
the file, so one rotation never undoes the other's."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

MARK = "zap-console.json"  # in an image set: {"pipe": inode} of the pipe its processes write to
PARTIAL_AFTER = 0.5
MAX_RECORD = 16384


# --- zap's side: pipes and loggers ----------------------------------------------------------


def start_logger(log: Path, max_bytes: int = 0) -> tuple[int, int]:
    """A new pipe whose read end a new logger (detached: it outlives zap) drains into log,
    rotated at max_bytes; returns (write end, the pipe's inode). The caller hands the write end
    on and closes it."""
    from zapckpt.common import proc

    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    r, w = os.pipe()
    try:
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": os.pathsep.join(sys.path)}
        proc.spawn([sys.executable, "-m", "zapckpt.pod.console", str(log), str(r), str(max_bytes)], env=env,
                   pass_fds=(r,))  # fmt: skip
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return w, os.fstat(w).st_ino


def loggers(log: Path) -> list[int]:
    """Pids of the loggers writing to log."""
    from zapckpt.system.procinfo import pids_naming

    return pids_naming(b"zapckpt.pod.console\0" + str(log).encode() + b"\0")


def wait_for_loggers(log: Path, timeout: float = 3.0) -> None:
    """Once a pod's processes are gone, its logger writes what the pipe still held and ends: a
    stop returns after that, so the log is whole and nothing of the pod is left running."""
    deadline = time.monotonic() + timeout
    while loggers(log) and time.monotonic() < deadline:
        time.sleep(0.01)


def rotated(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def remove_logs(log: Path) -> None:
    for p in (log, rotated(log)):
        p.unlink(missing_ok=True)


def rename_logs(log: Path, new: Path) -> None:
    for a, b in ((log, new), (rotated(log), rotated(new))):
        if a.exists():
            a.rename(b)


def mark(images: Path, pipe: int | None) -> None:
    """Note in a dumped image set which pipe is the console (read back by held_pipe)."""
    if pipe is not None:
        (images / MARK).write_text(json.dumps({"pipe": pipe}))


def held_pipe(images: Path) -> int | None:
    """The console pipe the processes of an image set hold, if the set says (older ones do not:
    their console was a file in the volume)."""
    try:
        pipe = json.loads((images / MARK).read_text()).get("pipe")
    except (OSError, ValueError, AttributeError):
        return None
    return pipe if isinstance(pipe, int) and pipe > 0 else None


# --- reading the log ------------------------------------------------------------------------


def parse_since(text: str, now: datetime | None = None) -> str:
    """--since: a time (2026-11-27T10:00:00, a date, with or without a zone: UTC if none) or a
    duration back from now (90s, 10m, 2h, 1d); returns the record time to start from."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(s|m|h|d)", text.strip(), re.ASCII)
    try:
        if m:
            t = now - timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
        else:
            if not text.isascii():
                raise ValueError
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            if t.tzinfo is None:
                t = t.replace(tzinfo=timezone.utc)
        return _stamp(t)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is neither a time (2026-11-27T10:00:00, UTC unless it says) "
                         "nor a duration (90s, 10m, 2h, 1d)") from None  # fmt: skip


def _stamp(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lines(records: Iterator[bytes], since: str | None = None, timestamps: bool = False,
          unfinished: bool = False) -> Iterator[bytes]:  # fmt: skip
    """Whole lines from log records (partial records joined), each with its time if timestamps;
    lines that began before `since` are left out; unfinished: also a line whose records so far
    are all partial."""
    start, parts = None, []
    for rec in records:
        stamp, _, rest = rec.partition(b" ")
        flag, _, text = rest.partition(b" ")
        if start is None:
            start = stamp
        parts.append(text.rstrip(b"\n"))
        if flag == b"P":
            continue
        if since is None or start.decode(errors="replace") >= since:
            yield (start + b" " if timestamps else b"") + b"".join(parts) + b"\n"
        start, parts = None, []
    if unfinished and parts and (since is None or start.decode(errors="replace") >= since):
        yield (start + b" " if timestamps else b"") + b"".join(parts) + b"\n"


class Reader:
    """Turns the log, read in chunks of any size, into lines (see lines()); a line whose
    records so far are partial is held back until it ends, or until the last read (final)."""

    def __init__(self, since: str | None = None, timestamps: bool = False):
        self.since, self.timestamps, self.held = since, timestamps, b""

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        data = self.held + chunk
        cut = data.rfind(b"\n") + 1
        recs = data[:cut].split(b"\n")[:-1]
        k = len(recs)
        while k and not final and recs[k - 1].split(b" ", 2)[1:2] == [b"P"]:
            k -= 1  # a line still being written
        self.held = b"".join(r + b"\n" for r in recs[k:]) + data[cut:]
        return b"".join(lines((r + b"\n" for r in recs[:k]), self.since, self.timestamps, final))


# --- the logger ------------------------------------------------------------------------------


def _record(text: bytes, partial: bool) -> bytes:
    return f"{_stamp(datetime.now(timezone.utc))} {'P' if partial else 'F'} ".encode() + text + b"\n"


def _open_log(log: str) -> int:
    # The state directory is root's (0700); the log is too, and never reached through a link.
    return os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _rotate(log: str, out: int, max_bytes: int) -> int:
    """The descriptor to write to from now on: a new LOG once this one is full."""
    if not max_bytes or os.fstat(out).st_size < max_bytes:
        return out
    fcntl.flock(out, fcntl.LOCK_EX)  # the other logger of the pod, if any, waits here
    try:
        try:
            current = os.stat(log, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(out).st_ino:  # nobody rotated it before us
            os.rename(log, log + ".1")
    finally:
        fcntl.flock(out, fcntl.LOCK_UN)
    os.close(out)
    return _open_log(log)


def main() -> None:
    log, fd, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
    # It ends with its pod, not before: a pod whose logger is gone gets EPIPE (or dies of SIGPIPE)
    # on its next line, so a stray `pkill`, a hangup or a Ctrl-C does not end it.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    out = _open_log(log)
    pending, since = b"", 0.0
    while True:
        wait = max(0.0, since + PARTIAL_AFTER - time.monotonic()) if pending else None
        if not select.select([fd], [], [], wait)[0]:
            os.write(out, _record(pending, partial=True))  # a line left open: shown now, continued later
            pending = b""
            continue
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        had = pending
        *done, pending = (pending + chunk).split(b"\n")
        if pending and (done or not had):
            since = time.monotonic()  # a new unfinished line
        batch = [_record(ln, partial=False) for ln in done]
        while len(pending) > MAX_RECORD:
            batch.append(_record(pending[:MAX_RECORD], partial=True))
            pending = pending[MAX_RECORD:]
        if batch:
            os.write(out, b"".join(batch))
            out = _rotate(log, out, max_bytes)
    if pending:
        os.write(out, _record(pending, partial=False))
    os.close(out)


if __name__ == "__main__":
    main()
