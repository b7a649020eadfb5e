"""`zap suspend [--all | POD...]` and `zap resume [--all | POD...]`: pods that outlive a host
reboot. Suspend ends each running pod with a `--stop` checkpoint (its connections to the
outside stay held by CRIU's network lock) and marks it; resume restores exactly that checkpoint
(which brings those connections back, as an in-place restore of a --stop checkpoint does) once
the pool is mounted again, and clears the mark. scripts/systemd/zapckpt.service runs them at
shutdown and boot. One pod failing does not stop the others: each gets its own line."""

from __future__ import annotations

from dataclasses import dataclass

from catalog import hosts, queries
from zapckpt.common.errors import UsageError, ZapError, one_line
from zapckpt.context import Context
from zapckpt.ops import checkpoint as ckpt
from zapckpt.ops import restore as rst
from zapckpt.pod.status import live_state
from zapckpt.system.signals import deferred_interrupts

SUSPEND_KIND = "suspend"


@dataclass
class Outcome:
    pod: str
    ok: bool
    what: str


def _names(ctx: Context, names: list[str], all_: bool, which, why_not, named_ok=None) -> list[str]:
    """The pods to work on: --all picks those `which` accepts; a named pod it (or named_ok) does
    not accept is bad input (exit 2, `why_not(pod)` says why), as an unknown one is, before
    anything is done."""
    if all_ == bool(names):
        raise UsageError("name the pods, or give --all")
    with ctx.catalog.session() as s:
        if all_:
            return [p.name for p in queries.list_pods(s, ctx.host_id) if which(p)]
        for n in names:
            pod = queries.get_pod(s, n)
            if (fenced := hosts.fenced(s, pod, ctx.host)) is not None:
                raise fenced
            if not (named_ok or which)(pod):
                raise UsageError(why_not(pod))
        return list(dict.fromkeys(names))


def suspend(ctx: Context, names: list[str], all_: bool) -> list[Outcome]:
    out = []
    running = lambda p: live_state(p) == "running"  # noqa: E731
    why = lambda p: f"pod {p.name!r} is not running ({live_state(p)}): nothing to suspend"  # noqa: E731
    todo = _names(ctx, names, all_, running, why, named_ok=lambda p: running(p) or p.suspended_by is not None)
    ctx.ensure_pool()
    for name in todo:
        try:
            with ctx.pod_lock(name), ctx.catalog.session() as s:
                pod = queries.get_pod(s, name)
                if pod.suspended_by:
                    out.append(Outcome(name, True, f"already suspended ({pod.name}@{_seq(s, pod.suspended_by)})"))
                    continue
                if live_state(pod) != "running":
                    out.append(Outcome(name, False, f"not running ({live_state(pod)}): nothing to suspend"))
                    continue
                with deferred_interrupts():
                    ck = ckpt.take(ctx, s, pod, "suspend", stop=True, kind=SUSPEND_KIND)
                    pod.suspended_by = ck.id
                out.append(Outcome(name, True, f"suspended as {ck.ref}"))
        except ZapError as e:
            out.append(Outcome(name, False, one_line(e)))
    return out


def resume(ctx: Context, names: list[str], all_: bool) -> list[Outcome]:
    out = []
    why = lambda p: f"pod {p.name!r} is not suspended (`zap start {p.name}` runs it, `zap restore` brings back a checkpoint)"  # noqa: E731
    todo = _names(ctx, names, all_, lambda p: p.suspended_by is not None, why)
    ctx.ensure_pool()  # after a reboot: mounted again first
    for name in todo:
        try:
            with ctx.catalog.session() as s:
                pod = queries.get_pod(s, name)
                ck_id = pod.suspended_by
                if ck_id is None:
                    out.append(Outcome(name, False, "not suspended"))
                    continue
                ref = f"{name}@{_seq(s, ck_id)}"
            ck, _saved = rst.restore(ctx, ck_id, saved_message="replaced by resume")
            with ctx.catalog.session() as s:
                queries.get_pod(s, name).suspended_by = None
            out.append(Outcome(name, True, f"resumed from {ref}"))
        except ZapError as e:
            out.append(Outcome(name, False, one_line(e)))
    return out


def _seq(s, ck_id: str) -> int | str:
    ck = queries.resolve_ref(s, ck_id) if ck_id else None
    return ck.seq if ck else "?"
