"""Continuous checkpoints: `zap watch POD --every DURATION [--keep-*]`, `zap watch --list`,
`zap unwatch POD`, and the supervisor that does the work (`zap watch-serve`). The supervisor
also carries out restart policies and records how pods end (ops/restart.py): it runs while a
pod is watched or has a policy.

One supervisor per state directory, started on demand by the watch commands (and at boot by
scripts/systemd/zapckpt-watch.service): it holds state/locks/watch.lock while it lives, keeps
its pid in state/watch.pid and one line per tick in state/logs/watch.log, and exits when no
watch is left. Each tick of a pod:

- the pod is not running: skipped (nothing to dump), said so;
- nothing happened since its last watched checkpoint (its processes used no CPU time and its
  volume's generation, after writing back dirty data, did not move): skipped, not dumped, and
  said so: a checkpoint would hold exactly what the last one holds;
- otherwise a checkpoint (kind "watch"), whose work after the thaw (ingest, compression) and the
  pruning that follows run at idle priority, then the keep policy over the pod's watch
  checkpoints (never an origin of a branch; manual checkpoints are never touched);
- a failure is logged, counted and retried at the next tick; the checkpoint operation itself
  guarantees the pod is never left frozen.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from catalog import Checkpoint, Watch, hosts, queries
from zapckpt.common import proc
from zapckpt.common.errors import Busy, NotFound, UsageError, ZapError, one_line
from zapckpt.context import Context
from zapckpt.ops import checkpoint as ckpt
from zapckpt.ops import restart
from zapckpt.ops.adopt import retire
from zapckpt.ops.remove import plan_prune, remove_checkpoints
from zapckpt.pod.status import live_state
from zapckpt.system import exits, priority, procinfo
from zapckpt.system.signals import deferred_interrupts

MIN_EVERY = 1.0
WATCH_KIND = "watch"
# A pack is rewritten once half of it is unused (store/gc.py); `zap prune` frees everything.
WATCH_MIN_UNUSED = 0.5
IDLE_WAIT = 30.0  # the longest sleep between looks at the catalog (changes also wake it at once)
POLICY_POLL = 1.0  # while pods have restart policies (a pod's end also wakes it at once)
GRACE = 10.0  # started for a pod about to run: it waits that long for the pod's row to appear


def _lock_path(ctx: Context) -> Path:
    return ctx.state.locks / "watch.lock"


def _pid_path(ctx: Context) -> Path:
    return ctx.state.root / "watch.pid"


def log_path(ctx: Context) -> Path:
    return ctx.state.logs / "watch.log"


# --- the commands ---------------------------------------------------------------------------
def watch(ctx: Context, name: str, every: float, keep_last: int | None, keep_hourly: int | None,
          keep_daily: int | None) -> dict:  # fmt: skip
    """Start (or change) the watch of a pod; the supervisor is started if it is not running."""
    if every < MIN_EVERY:
        raise UsageError(f"--every must be at least {MIN_EVERY:g}s")
    if any(k is not None and k < 1 for k in (keep_last, keep_hourly, keep_daily)):
        raise UsageError("keep counts of a watch must be at least 1 (a watch that keeps nothing records nothing)")
    with ctx.pod_lock(name), ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        w = queries.get_watch(s, pod)
        if w is None:
            w = queries.add_watch(s, Watch(pod_id=pod.id, every_s=every))
        w.every_s, w.keep_last, w.keep_hourly, w.keep_daily = every, keep_last, keep_hourly, keep_daily
        s.flush()
        rec = _record(pod.name, w)
    if not _wake(ctx):
        ensure_supervisor(ctx)
    return rec


def unwatch(ctx: Context, name: str) -> None:
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        w = queries.get_watch(s, pod)
        if w is None:
            raise NotFound(f"pod {name!r} is not watched (see `zap watch --list`)")
        queries.delete_watch(s, w)
    # The supervisor looks at the catalog again at once, and exits if no watch is left. A tick
    # of this pod that is already running finishes.
    _wake(ctx)


def list_watches(ctx: Context) -> list[dict]:
    with ctx.catalog.session() as s:
        return [_record(name, w) for name, w in queries.watches(s, ctx.host_id)]


def _record(name: str, w: Watch) -> dict:
    return {
        "pod": name,
        "every_s": w.every_s,
        "keep": {"last": w.keep_last, "hourly": w.keep_hourly, "daily": w.keep_daily},
        "last_at": _iso(w.last_at),
        "last_result": w.last_result,
        "last_ok": w.last_ok,
        "taken": w.taken or 0,
        "skipped": w.skipped or 0,
        "failed": w.failed or 0,
    }


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


# --- the supervisor, seen from outside ------------------------------------------------------
def supervisor_pid(ctx: Context) -> int | None:
    """The running supervisor's pid, or None: it is running exactly while its lock is held."""
    try:
        fd = os.open(_lock_path(ctx), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        try:
            pid, start = (int(x) for x in _pid_path(ctx).read_text().split()[:2])
        except (OSError, ValueError):
            return -1  # held, pid not written yet
        # A file left by a killed supervisor may name a pid reused since: never signal that one.
        return pid if procinfo.is_alive(pid, start) else -1
    finally:
        os.close(fd)


def _wake(ctx: Context) -> bool:
    """Tell a running supervisor that the watches changed; False if none runs."""
    pid = supervisor_pid(ctx)
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
        return True
    except ProcessLookupError:
        return False


def ensure_supervisor(ctx: Context, wait: float = 60.0) -> int:
    """Start the supervisor unless it runs; returns its pid. It is up in well under a second
    here; the wait is for a loaded machine (an emulated guest under load took over 10 s)."""
    pid = supervisor_pid(ctx)
    if pid is not None:
        return pid
    env = dict(os.environ, ZAP_HOME=str(ctx.state.root))
    with open(log_path(ctx), "ab") as log:
        proc.spawn([sys.executable, "-m", "zapckpt.ops.watch"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pid = supervisor_pid(ctx)
        if pid is not None and pid > 0:
            return pid
        time.sleep(0.02)
    raise ZapError(f"the supervisor did not start within {wait:g}s; see {log_path(ctx)}")


def supervise(ctx: Context, policy: str) -> None:
    """Before a pod with a restart policy starts (run, start, restore, branch): the supervisor
    listens to process events once this returns, so even a pod that ends at once is seen. After
    the start, notify() makes it look at the new init at once."""
    if policy != "no":
        ensure_supervisor(ctx)


def notify(ctx: Context) -> None:
    """A pod started or was restored: the supervisor, if running, looks at its new init now."""
    _wake(ctx)


def stop_supervisor(ctx: Context, timeout: float = 30.0) -> bool:
    """SIGTERM the supervisor and wait for it (a tick in progress finishes first)."""
    pid = supervisor_pid(ctx)
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while supervisor_pid(ctx) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


# --- the supervisor ---------------------------------------------------------------------------
def serve(ctx: Context) -> int:
    """The supervisor's loop (`zap watch-serve`). Returns when no watch is left or on SIGTERM."""
    stop, wake = threading.Event(), threading.Event()
    known: dict[int, str] = {}  # the inits seen running at the last pass
    pending: dict[int, tuple[str, int | None]] = {}  # ended, not settled yet (the pod was busy)
    last_restart: dict[str, float] = {}

    def on_stop(_n, _f) -> None:
        stop.set()
        wake.set()

    # Before the lock is taken: whoever sees it held may signal us.
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_stop)
    signal.signal(signal.SIGUSR1, lambda _n, _f: wake.set())  # `zap watch` / `unwatch` changed the list
    lock = os.open(_lock_path(ctx), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return 0  # one is running already
    # Listening before the pid is written: whoever waited for it (supervise) may start a pod now.
    listener = exits.ExitListener(on_exit=wake.set)  # a pod's init ended: wakes the loop at once
    start = procinfo.starttime(os.getpid())
    _pid_path(ctx).write_text(f"{os.getpid()} {start}\n")
    log = open(log_path(ctx), "a", buffering=1)
    say = lambda msg: log.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {msg}\n")  # noqa: E731
    born = time.monotonic()
    say(f"supervisor started (pid {os.getpid()})" + ("" if listener.available else
        "; the kernel's process events are not available here: exit statuses are not seen"))
    try:
        while not stop.is_set():
            wake.clear()  # before reading: a change from now on wakes the next wait
            due = _schedule(ctx)
            policies = restart.with_policies(ctx)
            if not due and not policies and time.monotonic() - born > GRACE:
                say("no watch or restart policy left: supervisor exits")
                break
            known = _settle_exits(ctx, listener, known, pending, policies, last_restart, say)
            _fleet_duties(ctx, say)
            now = time.time()
            ran = False
            for name, at in sorted(due.items(), key=lambda kv: kv[1]):
                if at <= now and not stop.is_set():
                    say(f"{name}: {tick(ctx, name, scheduled=max(at, now - 1.0))}")
                    ran = True
            if ran:
                continue  # the schedule moved: read it again
            # Asleep until the next tick is due; a change to the watches, or a pod's end, wakes it
            # earlier. Pods with restart policies are looked at every second besides.
            nap = min(max(min(due.values()) - now, 0.01), IDLE_WAIT) if due else IDLE_WAIT
            wake.wait(min(nap, POLICY_POLL) if policies or time.monotonic() - born <= GRACE else nap)
        if stop.is_set():
            say("supervisor stopped (signal)")
    finally:
        listener.close()
        _pid_path(ctx).unlink(missing_ok=True)
        log.close()
        os.close(lock)
    return 0


def _fleet_duties(ctx: Context, say) -> None:
    """A host of a shared catalog: seen alive (`zap host ls`), and any of its pods another host
    adopted while it was cut off taken down here at once (ops/adopt.py)."""
    if ctx.catalog.url.embedded:
        return
    try:
        with ctx.catalog.session() as s:
            hosts.seen(s, ctx.host_id)
        for line in retire(ctx):
            say(line)
    except ZapError as e:
        say(f"fleet: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - the catalog out of reach: tried again at the next pass
        say(f"fleet: the catalog cannot be reached ({type(e).__name__}); trying again")


def _settle_exits(ctx: Context, listener, known: dict[int, str], pending: dict, policies: list[str],
                  last_restart: dict[str, float], say) -> dict[int, str]:  # fmt: skip
    """Record the exit status of each pod whose init ended since the last pass, restart the
    pods whose policies say so (ops/restart.py); returns the inits running now."""
    running, ended = restart.inits(ctx)
    for pid, name in known.items():
        if pid not in running and pid not in pending:
            pending[pid] = (name, listener.take(pid))
    for pid, name in ended.items():  # ended before a pass saw it run
        if pid not in pending and (code := listener.take(pid)) is not None:
            pending[pid] = (name, code)
    handled = {n for n, _c in pending.values()}  # looked at above, or again at the next pass
    for pid, (name, code) in list(pending.items()):
        try:
            msg = restart.settle(ctx, name, code, last_restart)
        except Busy:
            continue
        del pending[pid]
        if msg:
            say(f"{name}: {msg}")
    for name in policies:  # dead before we saw it run: after a reboot, or while we were away
        if name not in handled:
            try:
                msg = restart.settle(ctx, name, None, last_restart)
            except Busy:
                continue
            if msg:
                say(f"{name}: {msg}")
    running, _ended = restart.inits(ctx)
    listener.watch(set(running))
    return running


def _schedule(ctx: Context) -> dict[str, float]:
    """pod name -> when (epoch seconds) its next tick is due; the first one right away."""
    with ctx.catalog.session() as s:
        out = {}
        for name, w in queries.watches(s, ctx.host_id):
            last = w.last_at.replace(tzinfo=timezone.utc).timestamp() if w.last_at else None
            out[name] = last + w.every_s if last is not None else 0.0
        return out


def tick(ctx: Context, name: str, scheduled: float | None = None) -> str:
    """One tick of a watched pod; returns (and records) what it did, in one line."""
    started = scheduled if scheduled is not None else time.time()
    ok, outcome, seen = True, "skipped", None
    try:
        with ctx.catalog.session() as s:
            pod = queries.find_pod(s, name)
            w = queries.get_watch(s, pod) if pod is not None else None
            if w is None:
                return "no longer watched"
            state = live_state(pod)
            last_seen = (w.seen_cpu, w.seen_generation)
            policy = (w.keep_last, w.keep_hourly, w.keep_daily)
            volume, init_pid = Path(pod.volume), pod.init_pid
        if state != "running":
            result = f"skipped: the pod is {state}, nothing to dump"
        else:
            now_seen = _activity(ctx, volume, init_pid)
            if now_seen[1] is not None and now_seen == last_seen:
                result = "skipped: nothing changed since the last watched checkpoint (no CPU time used, no file written)"
            else:
                with deferred_interrupts():
                    ck = _checkpoint(ctx, name)
                    removed = _keep(ctx, name, policy)
                seen = _activity(ctx, volume, init_pid)
                outcome = "taken"
                result = f"took {name}@{ck.seq} (frozen {ck.frozen_ms or 0:.0f} ms)"
                if removed:
                    result += f"; removed {', '.join(removed)} (keep policy)"
    except Busy:
        result = "skipped: another zap command is working on the pod (a guard, a restore...)"
    except Exception as e:  # noqa: BLE001 - logged, counted, retried at the next tick
        ok, outcome = False, "failed"
        result = "failed: " + (one_line(e) or type(e).__name__)
    _note(ctx, name, started, result, ok, outcome, seen)
    return result


def _activity(ctx: Context, volume: Path, init_pid: int) -> tuple[int, int | None]:
    """(CPU ticks of the pod's processes, its volume's generation after writing back)."""
    backend = ctx.pool.backend
    backend.flush(volume)  # a write not yet committed would not move the generation
    return procinfo.cpu_ticks(init_pid), backend.volume_generation(volume)


def _checkpoint(ctx: Context, name: str) -> Checkpoint:
    # No waiting for a pod another command holds (a guard may run for minutes): that tick is
    # skipped, and the other pods' ticks are not held up.
    with ctx.pod_lock(name, wait=0), ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        return ckpt.take(ctx, s, pod, "watch", kind=WATCH_KIND, background=True)


def _keep(ctx: Context, name: str, policy: tuple) -> list[str]:
    """The keep policy over the pod's watch checkpoints; returns the refs it removed."""
    if all(k is None for k in policy):
        return []
    keep_last, keep_hourly, keep_daily = (k or 0 for k in policy)
    with priority.idle(), ctx.pod_lock(name), ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        watched = [c for c in pod.checkpoints if c.kind == WATCH_KIND]
        # a checkpoint a person tagged is theirs now: the watch's policy never removes it
        doomed = [d.ck for d in plan_prune(s, watched, keep_last, keep_hourly, keep_daily, keep_tagged=True)
                  if not d.keep]  # fmt: skip
        refs = [c.ref for c in doomed]
        remove_checkpoints(ctx, s, doomed, min_unused=WATCH_MIN_UNUSED)
        return refs


def _note(ctx: Context, name: str, started: float, result: str, ok: bool, outcome: str, seen) -> None:
    with ctx.catalog.session() as s:
        pod = queries.find_pod(s, name)
        w = queries.get_watch(s, pod) if pod is not None else None
        if w is None:
            return
        w.last_at = datetime.fromtimestamp(started, timezone.utc)
        w.last_result, w.last_ok = result, ok
        if outcome == "taken":
            w.taken = (w.taken or 0) + 1
            w.seen_cpu, w.seen_generation = seen
        elif outcome == "skipped":
            w.skipped = (w.skipped or 0) + 1
        else:
            w.failed = (w.failed or 0) + 1



def main() -> int:
    """python -m zapckpt.ops.watch (`zap watch-serve` does the same): the supervisor, as zap
    starts it on demand; what goes wrong goes to its log (its stderr)."""
    from zapckpt.common.errors import ZapError, one_line

    try:
        return serve(Context())
    except ZapError as e:
        print(f"zap watch-serve: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
