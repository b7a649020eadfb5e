"""The one subprocess wrapper: every external tool (btrfs, mount, criu, ...) runs through here.

It captures stderr and raises CommandError carrying argv, exit status and stderr, so callers can
turn a failure into one clear line without re-running anything.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import ZapError

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
) -> Result:
    """Run argv to completion, capturing stdout and stderr as text. own_session keeps terminal
    signals (Ctrl-C) away from a child that must not die half-way."""
    argv = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            close_fds=True,
            start_new_session=own_session,
        )
    except FileNotFoundError:
        raise ToolMissing(argv[0]) from None
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, -1, f"timed out after {timeout}s") from e
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stderr, cp.stdout)
    return Result(argv, cp.returncode, cp.stdout, cp.stderr)


def spawn_detached(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start argv in a new session with no inherited descriptors (pods must not hold our fds)."""
    argv = [str(a) for a in argv]
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolMissing(argv[0]) from None
