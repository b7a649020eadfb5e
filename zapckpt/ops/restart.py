"""Restart policies (`zap run --restart on-failure[:N]|always`, as Podman's and Docker's) and
the exit status of pods, carried out by the supervisor (ops/watch.py: the one that also takes
the watches' checkpoints).

A pod is restarted (its command run afresh in its current files, as `zap start` does) when it
ended by itself: its init is gone while zap still means it to run (desired state "running").
A pod stopped by zap (stop, kill with a terminating signal, checkpoint --stop, suspend, rm,
deinit) is never restarted, and neither is one a restore or another command is working on:
the decision is taken under the pod's lock, from the catalog as it is then.
- `always` (and `unless-stopped`, the same thing here: zap never restarts a pod it stopped):
  whatever its status;
- `on-failure[:N]`: if it exited non-zero or was killed by a signal, or if its status is
  unknown (it ended while no supervisor listened); at most N times in a row (a start by hand
  counts again from 0).
After a reboot the pods that were running are gone: the supervisor (started at boot by
scripts/systemd/zapckpt-watch.service, or by the next zap command that needs it) restarts them
by their policies. A restart waits a second after the one before (no busy loop for a command
that fails at once)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from catalog import queries
from zapckpt.common.errors import Busy, UsageError, ZapError, one_line
from zapckpt.context import Context
from zapckpt.pod import lifecycle
from zapckpt.pod.status import live_state
from zapckpt.system import procinfo

POLICIES = ("no", "on-failure", "always", "unless-stopped")
MIN_INTERVAL = 1.0  # seconds between two restarts of one pod


def parse(text: str) -> tuple[str, int | None]:
    """"on-failure:3" -> ("on-failure", 3); "unless-stopped" is stored as "always"."""
    policy, _, count = text.strip().partition(":")
    if policy not in POLICIES or (count and policy != "on-failure"):
        raise UsageError(f"bad --restart {text!r}: no, on-failure[:N], always or unless-stopped")
    if count and not (count.isascii() and count.isdigit() and 0 < int(count) < 10**6):
        raise UsageError(f"bad --restart {text!r}: N in on-failure:N is a count from 1")
    return ("always" if policy == "unless-stopped" else policy), (int(count) if count else None)


def due(policy: str, max_count: int | None, count: int, exit_code: int | None) -> bool:
    if policy == "always":
        return True
    if policy == "on-failure":
        return exit_code != 0 and (max_count is None or count < max_count)
    return False


def policy_of(ctx: Context, name: str | None = None, ref: str | None = None) -> str:
    """The restart policy of the pod called name, or of the pod checkpoint ref belongs to."""
    with ctx.catalog.session() as s:
        pod = queries.resolve_ref(s, ref).pod if ref is not None else queries.find_pod(s, name)
        return pod.restart if pod is not None else "no"


def with_policies(ctx: Context) -> list[str]:
    """The pods with a restart policy: while there are any, the supervisor runs."""
    with ctx.catalog.session() as s:
        return queries.pods_with_restart_policy(s, ctx.host_id)


def inits(ctx: Context) -> tuple[dict[int, str], dict[int, str]]:
    """host pid of the init -> pod: of the pods running now (whose ends are to be seen), and of
    the pods whose init has ended without its status recorded yet."""
    running, ended = {}, {}
    with ctx.catalog.session() as s:
        for p in queries.list_pods(s, ctx.host_id):
            if not p.init_pid:
                continue
            if procinfo.is_alive(p.init_pid, p.init_starttime):
                running[p.init_pid] = p.name
            elif p.exit_code is None:
                ended[p.init_pid] = p.name
    return running, ended


def settle(ctx: Context, name: str, exit_code: int | None, last_restart: dict[str, float]) -> str | None:
    """Record how the pod's init ended (exit_code None: not seen) and restart it if its policy
    says so; returns what was done, for the supervisor's log (None: nothing to do). Busy: another
    command holds the pod; ask again later."""
    with ctx.catalog.session() as s:
        pod = queries.find_pod(s, name)
        if pod is None or procinfo.is_alive(pod.init_pid, pod.init_starttime):
            return None  # most passes: nothing happened (no lock taken)
    try:
        with ctx.pod_lock(name, wait=0):
            with ctx.catalog.session() as s:
                pod = queries.find_pod(s, name)
                if pod is None or live_state(pod) not in ("dead", "stopped"):
                    return None
                if exit_code is not None and pod.exit_code is None:
                    pod.exit_code, pod.exited_at = exit_code, datetime.now(timezone.utc)
                    s.commit()
                ended = f"exit {pod.exit_code}" if pod.exit_code is not None else "exit status not seen"
                if live_state(pod) != "dead" or not due(pod.restart, pod.restart_max, pod.restart_count, pod.exit_code):
                    return f"ended ({ended})" if exit_code is not None else None
                wait = last_restart.get(name, 0.0) + MIN_INTERVAL - time.monotonic()
                if wait > 0:
                    return None  # the next pass restarts it
                count = pod.restart_count + 1
            last_restart[name] = time.monotonic()
            lifecycle.start(ctx, name)  # the lock is ours already
            with ctx.catalog.session() as s:
                queries.get_pod(s, name).restart_count = count
            return f"ended ({ended}); restarted by its policy ({count} restart(s))"
    except ZapError as e:
        if isinstance(e, Busy):
            raise  # another command holds it: the supervisor looks again at its next pass
        last_restart[name] = time.monotonic()
        return f"restart failed: {one_line(e)}"
