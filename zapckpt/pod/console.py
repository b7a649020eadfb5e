"""A pod's console: its stdout and stderr are a pipe, read outside the pod by a small logger that
appends each line, with its time, to `$ZAP_HOME/console/NAME.log`. The log is not in the volume,
so a restore does not roll it back (what the pod writes in its volume still is rolled back) and
`zap logs -f` goes on across one. A checkpoint notes the pipe its processes hold (MARK, in the
image set); a restore gives them a new pipe and logger in its place (CRIU's --inherit-fd), as
Podman's conmon does.

One record per line of the log: `<UTC time, ISO 8601 with microseconds> <F|P> <text>`. P marks
a partial line (not ended within half a second, or longer than 16 KiB), continued by the next
record.

The logger is a small C program (pod/logger.c, built by scripts/install.sh: a Python one cost
12 MiB per running pod): `zap-console LOG FD MAX` (FD: the pipe's read end); it ends when every
writer has closed the pipe (the pod ended). Once LOG is MAX bytes or more (0: never), it is
renamed LOG.1 (the one before is dropped) and a new LOG begins; `zap logs` reads both. Two
loggers of a pod (the old one draining while a restore's new one starts) rotate under a lock on
the file, so one rotation never undoes the other's."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

LOGGER = "zap-console"  # the logger's binary, pod/logger.c
MARK = "zap-console.json"  # in an image set: {"pipe": inode} of the pipe its processes write to


# --- zap's side: pipes and loggers ----------------------------------------------------------


def logger_binary() -> str:
    """The logger (pod/logger.c), which scripts/install.sh builds into the virtualenv."""
    for path in (os.environ.get("ZAP_CONSOLE_LOGGER"), os.path.join(sys.prefix, "libexec", LOGGER)):
        if path and os.access(path, os.X_OK):
            return path
    from zapckpt.common.errors import ZapError

    raise ZapError(f"the console logger {LOGGER} is missing: `make install` builds it (from zapckpt/pod/logger.c)")


def start_logger(log: Path, max_bytes: int = 0) -> tuple[int, int]:
    """A new pipe whose read end a new logger (detached: it outlives zap) drains into log,
    rotated at max_bytes; returns (write end, the pipe's inode). The caller hands the write end
    on and closes it."""
    from zapckpt.common import proc

    binary = logger_binary()
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    r, w = os.pipe()
    try:
        proc.spawn([binary, str(log), str(r), str(max_bytes)], env={"PATH": os.defpath}, pass_fds=(r,))
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return w, os.fstat(w).st_ino


def loggers(log: Path) -> list[int]:
    """Pids of the loggers writing to log."""
    from zapckpt.system.procinfo import pids_naming

    return pids_naming(LOGGER.encode() + b"\0" + str(log).encode() + b"\0")


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
                         "nor a duration back from now (90s, 10m, 2h, 1d)") from None  # fmt: skip


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


# --- zap logs: the log read, and followed ------------------------------------------------------


def seek_to_last_lines(f, n: int) -> int:
    """Position f so that what is left of it is its last n lines (as `tail -n`); returns how
    many lines that is (fewer than n: the whole file)."""
    end = f.seek(0, os.SEEK_END)
    if n == 0:
        return 0
    pos, found = end, 0
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        # A final newline ends the last line; it does not start another one.
        cut = len(block) - 1 if pos + step == end and block.endswith(b"\n") else len(block)
        while True:
            cut = block.rfind(b"\n", 0, cut)
            if cut < 0:
                break
            found += 1
            if found == n:
                f.seek(pos + cut + 1)
                return n
    f.seek(0)
    return found + 1 if end else 0


class _PodState:
    """What `zap logs` needs of a pod while it reads: whether it still runs. Read straight from
    SQLite (catalog/fastread.py) as `zap ps` does, so that `zap logs` starts as fast."""

    def __init__(self, state, name: str):
        from catalog import fastread

        self.state, self.name, self.fastread = state, name, fastread

    def row(self):
        from contextlib import closing

        conn = self.fastread.open_current(*self.state.reader_args())
        if conn is None:
            return None
        with closing(conn):
            return self.fastread.pod_console(conn, self.name)

    def running(self) -> bool:
        """Running, or being restored (its lock held: a restore stops it a moment, then it writes on)."""
        from zapckpt.common.errors import Busy
        from zapckpt.pod.status import live_state
        from zapckpt.system.locks import locked

        row = self.row()
        if row is not None and live_state(row) == "running":
            return True
        try:
            with locked(self.state.locks / f"{self.name}.lock", f"pod {self.name!r}", 0):
                return False
        except Busy:
            return True


def follow_log(state, name: str, follow: bool, out, tail: int | None = None, since: str | None = None,
               timestamps: bool = False) -> bool:  # fmt: skip
    """`zap logs` of a pod whose log is a console log ($ZAP_HOME/console/NAME.log); returns
    False, having read nothing, for a pod this cannot tell about (an unknown name, a catalog to
    migrate, a pod from before the console log): the caller takes the ORM path (logs_in_volume)."""
    pod = _PodState(state, name)
    row = pod.row()
    path = state.console_log(name)
    if row is None or not (path.exists() or row.console_pipe is not None):
        return False
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if not follow:
            return True
        f = None
    reader = Reader(since, timestamps)
    old = rotated(path)
    while f is None:  # the pod's logger has not written yet
        time.sleep(0.2)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if not pod.running():
                return True
    got = seek_to_last_lines(f, tail) if tail is not None else 0
    if tail is None or got < tail:  # the file before the last rotation first
        try:
            with open(old, "rb") as g:
                if tail is not None:
                    seek_to_last_lines(g, tail - got)
                out.write(reader.feed(g.read()))
        except FileNotFoundError:
            pass
    copy(f, reader.feed, out, (lambda: (pod.running(), path)) if follow else None, path)
    out.write(reader.feed(b"", final=True))  # a line the pod has not ended yet, as far as it goes
    out.flush()
    return True


def copy(f, render, out, still, path: Path | None = None) -> None:
    """Write what f holds, rendered, to out, and close it; with still() (following: whether
    the pod runs), what comes after too, until it stops (and across a rotation of the log at
    path, if given)."""
    try:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(render(chunk))
                out.flush()
                continue
            if still is None:
                return
            if path is not None and _rotated_away(f, path):
                out.write(render(f.read()))  # what was written before the rotation
                f.close()
                f = open(path, "rb")
                continue
            running, log = still()
            if not running:
                wait_for_loggers(log)  # what its logger still had in hand
                out.write(render(f.read()))
                out.flush()
                return
            time.sleep(0.2)
    finally:
        f.close()


def _rotated_away(f, path: Path) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False
