"""`zap guard NAME [--check CMD] -- CMD`: run a risky command inside a pod between a pre and a
post checkpoint (as snapper's pre/post pairs), and roll the pod back, files and processes, if
the command or the health check fails or is interrupted. The failed state is kept (restore
saves the state it replaces), so it can be inspected later.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from catalog import Checkpoint, queries
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.common.proc import Timeout
from zapckpt.context import Context
from zapckpt.ops import checkpoint as ckpt
from zapckpt.ops import restore as rst
from zapckpt.pod.lifecycle import exec_in, live_state
from zapckpt.system.signals import deferred_interrupts


class GuardFailed(ZapError):
    """The command failed and the pod was rolled back (exit code 1)."""


@dataclass
class GuardResult:
    pre: str
    post: str


def _say(msg: str) -> None:
    print(f"zap guard: {msg}", file=sys.stderr, flush=True)


def outcome(what: str, run, command: list[str], check: str | None, check_timeout: float) -> str | None:
    """Run the command, then the health check, with run(argv, timeout=None) -> exit code (it
    raises proc.Timeout); None if both passed, else what went wrong. Shared with --host."""
    rc = run(command)
    if rc == 130:
        return f"`{what}` was interrupted"
    if rc != 0:
        return f"`{what}` failed (exit {rc})"
    if not check:
        return None
    _say(f"health check: {check}")
    try:
        crc = run(["sh", "-c", check], timeout=check_timeout)
    except Timeout:
        return f"the health check `{check}` hung (killed after {check_timeout:g}s)"
    if crc == 130:
        return "the health check was interrupted"
    return f"the health check `{check}` failed (exit {crc})" if crc != 0 else None


def guard(ctx: Context, name: str, command: list[str], check: str | None = None,
          check_timeout: float = 60.0) -> GuardResult:  # fmt: skip
    if not command:
        raise UsageError("no command given: zap guard NAME -- CMD [ARGS...]")
    # The pod is held from the pre checkpoint to the post one (or the rollback): no other zap
    # command checkpoints, restores or stops it in between, so the pair is the command's alone.
    with ctx.pod_lock(name):
        return _guarded(ctx, name, command, check, check_timeout)


def _guarded(ctx: Context, name: str, command: list[str], check: str | None, check_timeout: float) -> GuardResult:
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        if live_state(pod) != "running":
            raise UsageError(f"pod {name!r} is not running ({live_state(pod)}); guard needs its processes (`zap start {name}`)")
    # A command that is not there would fail after the pre checkpoint for nothing.
    if exec_in(ctx, name, ["sh", "-c", 'command -v "$1"', "sh", command[0]], quiet=True) != 0:
        raise UsageError(f"{command[0]!r} is not found inside pod {name!r}")
    what = shlex.join(command)
    pre = ckpt.checkpoint(ctx, name, f"pre: {what}", kind="pre")
    pre_ref = _ref(ctx, pre)
    _say(f"pre checkpoint {pre_ref}; running `{what}` in {name}")
    failure = outcome(what, lambda argv, timeout=None: exec_in(ctx, name, argv, timeout=timeout), command, check,
                      check_timeout)  # fmt: skip
    if failure is None:
        post_ref = _ref(ctx, ckpt.checkpoint(ctx, name, f"post: {what}", kind="post"))
        _say(f"`{what}` succeeded; post checkpoint {post_ref} (`zap diff {pre_ref} {post_ref}` shows what it changed)")
        return GuardResult(pre_ref, post_ref)
    _say(f"{failure}; rolling {name} back to {pre_ref}")
    with deferred_interrupts():
        try:
            _ck, saved = rst.restore(ctx, pre.id, saved_message=f"failed: {what}")
        except ZapError as e:
            raise ZapError(f"{failure}, and rolling back to {pre_ref} failed too: {e} "
                           f"(the state before is kept as {pre_ref})") from None  # fmt: skip
    kept = f"the failed state is kept as {_ref(ctx, saved)}" if saved is not None else "its files had not changed"
    raise GuardFailed(f"{failure}; rolled {name} back to {pre_ref} (files and processes); {kept}")


def _ref(ctx: Context, ck: Checkpoint) -> str:
    with ctx.catalog.session() as s:
        return queries.resolve_ref(s, ck.id).ref
