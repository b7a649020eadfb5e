"""Typed errors. The CLI turns each into one line on stderr and its exit code."""


class ZapError(Exception):
    """An operation failed; nothing was left half-done (exit code 1)."""

    exit_code = 1


class UsageError(ZapError):
    """Bad input: a malformed name, an option that does not apply (exit code 2)."""

    exit_code = 2


class NotFound(UsageError):
    """Unknown pod or checkpoint reference (exit code 2)."""


def unknown_pod(name: str) -> NotFound:
    return NotFound(f"no pod named {name!r} (see `zap ps`)")


class AlreadyExists(UsageError):
    """A name that is already taken (exit code 2)."""


class Busy(ZapError):
    """Another zap operation holds the lock we need."""


def one_line(text) -> str:
    """A message (an exception, CRIU's stderr...) as one line: its non-empty lines joined."""
    return "; ".join(ln.strip() for ln in str(text).splitlines() if ln.strip())
