"""The one subprocess wrapper: every external tool (btrfs, mount, criu, ...) runs through here.

It captures stderr and raises CommandError carrying argv, exit status and stderr, so callers can
turn a failure into one clear line without re-running anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Sequence

from zapckpt.common.errors import ZapError

# Lines every CRIU run prints on this kind of kernel; they never explain a failure.
NOISE = ("rlimit: Can't setup RLIMIT_NOFILE",)


class CommandError(ZapError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        super().__init__(f"{self.argv[0]} failed (exit {returncode}): {self.reason()}")

    def reason(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not any(n in ln for n in NOISE)]
        return lines[-1] if lines else "no error output"


class ToolMissing(ZapError):
    def __init__(self, tool: str):
        super().__init__(f"{tool} not found; run `zap doctor` to see how to install it")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    input: str | None = None,
    timeout: float | None = None,
    own_session: bool = False,
    kill_group: bool = False,
    umask: int = -1,
    stdio_from=None,
    on_start=None,
    pass_fds: Sequence[int] = (),
    join_cgroups: Sequence[str] = (),
) -> Result:
    """Run argv to completion, capturing stdout and stderr as text. own_session keeps terminal
    signals (Ctrl-C) away from a child that must not die half-way. On a timeout the child is
    killed, with its whole process group if kill_group (it needs own_session), and
    CommandError says so. stdio_from, if given, is called in the child before it execs and
    returns (stdin, stdout) descriptors for it (stderr goes with stdout); output is then not
    captured. pass_fds: descriptors the child keeps (at the same numbers). join_cgroups: the
    cgroup.procs files the child joins before it execs (everything it starts is then inside)."""
    argv = [str(a) for a in argv]

    def preexec() -> None:
        _join(join_cgroups)
        if stdio_from is not None:
            stdin, stdout = stdio_from()
            os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stdout, 2)
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            start_new_session=own_session,
            umask=umask,
            preexec_fn=preexec if stdio_from is not None else _joiner(join_cgroups),
        )
    except FileNotFoundError:
        raise ToolMissing(argv[0]) from None
    except subprocess.SubprocessError as e:  # stdio_from failed in the child
        raise CommandError(argv, -1, f"preparing {argv[0]} failed: {e}") from None
    if on_start is not None:
        on_start(child.pid) if getattr(on_start, "wants_pid", False) else on_start()
    try:
        out, err = child.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        if kill_group and own_session:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.kill()
        child.communicate()
        raise CommandError(argv, -1, f"timed out after {timeout:g}s") from None
    except BaseException:
        child.kill()
        child.wait()
        raise
    if check and child.returncode != 0:
        raise CommandError(argv, child.returncode, err, out)
    return Result(argv, child.returncode, out, err)


class Timeout(ZapError):
    """A command did not finish in its time and was killed."""


# What a shell prints when a child of its dies of the SIGKILL a timeout sent (dash: "Killed").
_KILLED_NOTES = {b"Killed", b"Killed: 9"}


def interactive(argv: Sequence[str], *, env: Mapping[str, str] | None = None, quiet: bool = False,
                timeout: float | None = None, kill=None, what: str | None = None,
                pass_fds: Sequence[int] = (), join_cgroups: Sequence[str] = ()) -> int:  # fmt: skip
    """Run argv on the user's terminal (stdio inherited, or discarded if quiet) and return its
    exit status (128 + N if signal N killed it). On Ctrl-C it is killed (with a timeout, by kill) and the status is 130. On a
    timeout, kill(pid) (default: SIGKILL to it alone; pass procinfo.kill_tree for all it
    started) and Timeout. With a timeout, its stderr is relayed line by line, so that the
    "Killed" the shells it started print about our kill is not shown as its own words."""
    argv = [str(a) for a in argv]
    out = subprocess.DEVNULL if quiet else None
    relay = timeout is not None and not quiet
    try:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE if relay else out, close_fds=True,
                                 pass_fds=tuple(pass_fds), preexec_fn=_joiner(join_cgroups))  # fmt: skip
    except FileNotFoundError:
        raise ToolMissing(argv[0]) from None
    killed = threading.Event()
    relayer = threading.Thread(target=_relay, args=(child.stderr, killed), daemon=True) if relay else None
    if relayer is not None:
        relayer.start()
    try:
        try:
            rc = child.wait(timeout)
            return 128 - rc if rc < 0 else rc  # killed by a signal: as a shell says it (SIGKILL: 137)
        except KeyboardInterrupt:  # it may not have seen the signal (sent to us alone): it ends too
            ((kill or _kill_one) if timeout is not None else _kill_one)(child.pid)
            child.wait()
            return 130
        except subprocess.TimeoutExpired:
            killed.set()
            (kill or _kill_one)(child.pid)
            child.wait()
            raise Timeout(f"{what or argv[0]} did not finish within {timeout:g}s and was killed") from None
    finally:
        if relayer is not None:
            relayer.join(2)


def _relay(stream, killed: threading.Event) -> None:
    out = getattr(sys.stderr, "buffer", None)
    for line in iter(stream.readline, b""):
        if killed.is_set() and line.strip() in _KILLED_NOTES:
            continue
        try:
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sys.stderr.write(line.decode(errors="replace"))
        except (OSError, ValueError):
            pass
    stream.close()


def _kill_one(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL, pass_fds: Sequence[int] = (), join_cgroups: Sequence[str] = ()) -> subprocess.Popen:  # fmt: skip
    """Start argv and return at once (the caller watches it): in a new session, so terminal
    signals stay away from it, with no descriptor of ours but pass_fds (pods must not hold our
    files); in the cgroups of join_cgroups (run)."""
    argv = [str(a) for a in argv]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env,
                                close_fds=True, pass_fds=tuple(pass_fds), start_new_session=True,
                                preexec_fn=_joiner(join_cgroups))  # fmt: skip
    except FileNotFoundError:
        raise ToolMissing(argv[0]) from None
    except subprocess.SubprocessError as e:  # joining a cgroup failed in the child
        raise CommandError(argv, -1, f"starting {argv[0]} failed: {e}") from None


def _joiner(procs_files: Sequence[str]):
    """The preexec_fn that joins the cgroups (None when there are none: no preexec at all)."""
    return (lambda: _join(procs_files)) if procs_files else None


def _join(procs_files: Sequence[str]) -> None:
    """In a child before exec: move it into each cgroup (writing 0 names the writer)."""
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _chain(argvs: Sequence[Sequence[str]], stdin, stdout):
    """Start argv1 | argv2 | ...: (processes, their stderr files)."""
    import tempfile

    procs, errs = [], []
    prev = stdin
    try:
        for i, argv in enumerate(argvs):
            err = tempfile.TemporaryFile()
            errs.append(err)
            last = i == len(argvs) - 1
            p = subprocess.Popen([str(a) for a in argv], stdin=prev, stdout=stdout if last else subprocess.PIPE,
                                 stderr=err, close_fds=True, start_new_session=True)  # fmt: skip
            if prev not in (None, subprocess.PIPE) and not isinstance(prev, int):
                prev.close()  # the child has it now
            procs.append(p)
            prev = p.stdout if not last else None
    except FileNotFoundError as e:
        for p in procs:
            _kill_one(p.pid)
            p.wait()
        raise ToolMissing(e.filename or str(argvs[len(procs)][0])) from None
    return procs, errs


def _finish(argvs, procs, errs, failed: bool) -> None:
    for p in procs:
        if failed:
            _kill_one(p.pid)
        p.wait()
    try:
        if not failed:
            for argv, p, err in zip(argvs, procs, errs):
                if p.returncode != 0:
                    err.seek(0)
                    raise CommandError(argv, p.returncode, err.read().decode(errors="replace"))
    finally:
        for err in errs:
            err.close()


@contextmanager
def pipe_from(*argvs: Sequence[str]):
    """Read, as a binary stream, what the pipeline argv1 | argv2 | ... writes; leaving the block
    waits for it and raises CommandError for the first command that failed."""
    procs, errs = _chain(argvs, subprocess.DEVNULL, subprocess.PIPE)
    failed = True
    try:
        yield procs[-1].stdout
        failed = False
    finally:
        procs[-1].stdout.close()
        _finish(argvs, procs, errs, failed)


@contextmanager
def pipe_into(*argvs: Sequence[str]):
    """Write, as a binary stream, into the pipeline argv1 | argv2 | ...; leaving the block
    closes it, waits, and raises CommandError for the first command that failed."""
    procs, errs = _chain([argvs[0]], subprocess.PIPE, subprocess.DEVNULL if len(argvs) == 1 else subprocess.PIPE)
    if len(argvs) > 1:
        more, more_errs = _chain(argvs[1:], procs[0].stdout, subprocess.DEVNULL)
        procs, errs = procs + more, errs + more_errs
    failed = True
    try:
        yield procs[0].stdin
        failed = False
    finally:
        try:
            procs[0].stdin.close()
        except BrokenPipeError:
            pass
        _finish(argvs, procs, errs, failed)
