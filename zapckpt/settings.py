"""State-directory settings a user may change (`zap init --ghost-limit SIZE`), kept in the
catalog's settings table."""

from __future__ import annotations

from catalog import queries
from zapckpt.common import sizes
from zapckpt.common.errors import UsageError
from zapckpt.criu.runner import DEFAULT_GHOST_LIMIT


def parse_size(text: str, what: str) -> int:
    try:
        return sizes.parse_size(text)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: a size like 64M, 1G or 1048576") from None


def ghost_limit(ctx) -> int:
    """The largest unlinked-but-open file CRIU may copy into a checkpoint (default 64 MiB)."""
    with ctx.catalog.session() as s:
        raw = queries.get_setting(s, ctx.host_id, "criu.ghost_limit")
    return int(raw) if raw else DEFAULT_GHOST_LIMIT


DEFAULT_LOG_MAX = 16 << 20


def log_max(ctx) -> int:
    """The size at which a pod's console log is rotated (one older file kept); 0: never."""
    with ctx.catalog.session() as s:
        raw = queries.get_setting(s, ctx.host_id, "console.log_max")
    return int(raw) if raw else DEFAULT_LOG_MAX


def set_log_max(ctx, value: int) -> None:
    with ctx.catalog.session() as s:
        queries.set_setting(s, ctx.host_id, "console.log_max", str(value))
        s.commit()


def set_ghost_limit(ctx, value: int) -> None:
    with ctx.catalog.session() as s:
        queries.set_setting(s, ctx.host_id, "criu.ghost_limit", str(value))
        s.commit()
