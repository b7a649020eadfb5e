"""Rollback in place (`zap restore`) and fork (`zap branch`) from a checkpoint.

The processes come back lazily where they can (ops/revive.py): they run as soon as everything
but their memory is back, and their pages follow. A command reports then (report: the CLI's
printing, done by the parent of a fork, system/detach.py), and its child goes on holding the
pod's lock until the last page is in and the state a restore replaced is stored: meanwhile the
pod is `restoring` and commands on it wait. A restore that fails after it was reported (a page
that could not come) is undone as one that fails before: the pod is killed, put back as it was,
and the pod's note says what happened. Without report (guard, resume, tests) all of it is done
before the call returns."""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod, queries
from zapckpt.common import proc
from zapckpt.common.errors import AlreadyExists, UsageError, ZapError, one_line
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.criu import locks
from zapckpt.criu import runner as criu
from zapckpt.criu.images import listening_ports
from zapckpt.names import check_name
from zapckpt.net import podnet
from zapckpt.ops import checkpoint as ckpt
from zapckpt.ops import intents
from zapckpt.ops.revive import Prepared, Running, prepared, restore_processes
from zapckpt.pod.lifecycle import check_ports_free, live_state, write_network_files
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes
from zapckpt.system import detach, faults, procinfo
from zapckpt.system.signals import deferred_interrupts

# What a report callback is given: what the command prints once the pod runs.
Report = Callable[["Outcome"], None]


@dataclass
class Outcome:
    ref: str  # the checkpoint restored or branched
    pod: str
    files_only: bool  # ck had no processes: the pod is stopped
    saved_ref: str | None = None  # restore: the state it replaced, kept as this checkpoint
    warnings: list[str] = field(default_factory=list)
    lazy: bool = False  # its memory still comes in
    mount_path: str = ""
    expected: list[dict] = field(default_factory=list)  # the processes the checkpoint held
    init_pid: int | None = None

    def final(self) -> "Outcome":
        """At report time (as late as can be: a process that dies of what it finds restored
        needs its first moments): the processes that exited right after the restore, said."""
        if gone := self.exited():
            self.warnings.append(gone)
        return self

    def exited(self, within: float = 0.0) -> str | None:
        """The processes of the checkpoint gone now (looked for again for `within` seconds)."""
        deadline = time.monotonic() + within
        while True:
            gone = procinfo.missing_processes(self.expected, self.init_pid) if self.init_pid and self.expected else []
            if gone or time.monotonic() >= deadline:
                return f"exited right after the restore: {procinfo.name_processes(gone)}" if gone else None
            time.sleep(0.02)


def _check_snapshot(ctx: Context, s: Session, ck: Checkpoint) -> Path:
    """The checkpoint's snapshot on this host (received from the fleet's store if it was taken
    elsewhere); refuse before touching anything if the files cannot be brought back (the images
    are checked when they are prepared, which restore and branch do before changing anything)."""
    # the packs come from the store (where they are not cached here) while the volume is received
    with ctx.store.prefetching(image_sets.pack_digests(ctx, s, ck) if ck.has_images else {}):
        snap = volumes.ensure_local(ctx, s, ck)
    try:
        ctx.pool.backend.ensure_browsable(snap)
    except ZapError:
        pass  # reported as missing just below
    if not snap.is_dir():
        raise ZapError(f"checkpoint {ck.ref} is damaged: its snapshot {snap} is missing")
    return snap


def exited_warning(ck: Checkpoint, init_pid: int) -> list[str]:
    gone = procinfo.missing_processes(ck.processes or [], init_pid)
    return [f"exited right after the restore: {procinfo.name_processes(gone)}"] if gone else []


def _go_background(run: Running | None, outcome: Outcome, report: Report | None, rec: intents.Record,
                   s: Session) -> detach.Handover | None:  # fmt: skip
    """Report now and go on in the background (a fork; see module doc), if there is anything
    left to do and someone to report to; the child takes over the intent record."""
    if report is None:
        return None
    s.commit()  # nothing uncommitted crosses the fork

    def before_fork() -> None:
        # No SQLite connection may cross the fork: SQLite keeps its POSIX locks' bookkeeping per
        # process, and a child that inherits it believes it holds locks it does not (another
        # process then resets the WAL index under it: commits lost). The child opens its own.
        # (A fleet's advisory lock is on a connection of its own, checked out: not closed here.)
        rec.ctx.catalog.engine.dispose()

    handover = detach.go(lambda: report(outcome.final()), before_fork=before_fork,
                         log=rec.ctx.log_path(outcome.pod, "background"))  # fmt: skip
    try:
        rec.adopt()
        if run is not None and run.pages is not None:
            run.pages.settle()
    except BaseException as e:
        handover.failed(one_line(e) if isinstance(e, ZapError) else f"{type(e).__name__}: {e}")
        raise
    handover.ready()
    faults.point("restore:detached")  # the background half, after it reported: tests kill or hold it here
    return handover


def restore(ctx: Context, ref: str, saved_message: str | None = None,
            report: Report | None = None) -> tuple[Checkpoint, Checkpoint | None]:  # fmt: skip
    """Roll the pod of `ref` back to it, files and processes; returns (ref, the saved state, or
    None where there was nothing to keep: a stopped pod whose files are ref's)."""
    pool = ctx.ensure_pool()  # mounted (after a reboot or deinit) before anything looks at snapshots
    if not pool.backend.capabilities.in_place_rollback:
        raise UsageError(f"the {pool.backend.name} backend cannot roll a volume back in place; branch instead")
    if ctx.store.remote is not None:  # the state it replaces goes up to the store: boto3 set up meanwhile
        ctx.store.remote.warm(background=True)
    with ctx.ref_lock(ref):
        with ctx.catalog.session() as s:
            ck = queries.resolve_ref(s, ref)
            pod = ck.pod
            snap = _check_snapshot(ctx, s, ck)
            with prepared(ctx, s, ck, pod.name) as prep, deferred_interrupts():
                faults.point("restore:images")  # all it needs is here; nothing changed yet
                return ck, _restore_locked(ctx, s, pod, ck, snap, prep, saved_message, report)


def _restore_locked(ctx: Context, s: Session, pod: Pod, ck: Checkpoint, snap: Path, prep: Prepared,
                    saved_message: str | None, report: Report | None) -> Checkpoint | None:  # fmt: skip
    if live_state(pod) == "paused":
        # Its state would be kept as files only: the paused processes cannot be dumped as they are.
        raise UsageError(f"pod {pod.name!r} is paused: `zap unpause {pod.name}` first (the state a restore replaces "
                         f"is kept, processes included)")  # fmt: skip
    if live_state(pod) == "frozen":
        raise ZapError(f"pod {pod.name!r} is frozen (its processes are stopped): `zap recover`, or resume them "
                       f"with kill -CONT, before restoring")  # fmt: skip
    # Outside connections come back only when ck is the --stop checkpoint still holding them
    # (see net/podnet.py); any other restore resets them, the replaced state's included.
    resume = pod.net_locked_by == ck.id and live_state(pod) != "running"
    podnet.ensure(s, ctx.net, pod)
    volume = Path(pod.volume)
    new = volume.with_name(f".{volume.name}.restoring")
    old = volume.with_name(f".{volume.name}.replaced")
    saved_id = ckpt.new_id()
    # relock/lazy: the restored tasks wait stopped (revive.py); if zap dies before it resumes
    # them, recovery undoes the restore rather than finish it. phase "pages": they run while their
    # memory comes in (the keeper kills them if zap dies then); "storing": only the saved state
    # is left to store.
    with ExitStack() as keep, intents.recorded(
        ctx, "restore", pod.name, session=s, ck_id=ck.id, saved_id=saved_id, new=str(new), old=str(old),
        resume=resume, stage=str(prep.images.parent) if prep.images else None, phase="swap", lazy=prep.lazy,
        relock=prep.lazy or (prep.images is not None and bool(locks.posix_locks(prep.images))),
    ) as rec:  # fmt: skip
        return _swap_and_restore(ctx, s, rec, keep, pod, ck, snap, prep, saved_message, resume, saved_id, volume,
                                 new, old, report)  # fmt: skip


def _swap_and_restore(ctx: Context, s: Session, rec: intents.Record, keep: ExitStack, pod: Pod, ck: Checkpoint,
                      snap: Path, prep: Prepared, saved_message: str | None, resume: bool, saved_id: str,
                      volume: Path, new: Path, old: Path, report: Report | None) -> Checkpoint | None:  # fmt: skip
    backend = ctx.pool.backend
    # Keep the state being replaced, so the rollback itself can be undone: its images are
    # stored once the restored pod runs (they wait in staging, held in keep).
    msg = saved_message or f"before restore to {ck.ref}"
    if live_state(pod) == "running":
        try:
            step("saving the current state")
            saved = ckpt.take(ctx, s, pod, msg, stop=True, kind="auto", release_connections=True, ck_id=saved_id,
                              keep=keep)  # fmt: skip
        except ZapError as e:
            raise ZapError(f"cannot save the current state before restoring (nothing changed): {e}; "
                           f"`zap stop {pod.name}` first to restore without keeping its processes") from None
    elif _unchanged_since(ctx, pod, ck):
        saved = None  # its files are ck's, untouched since (`zap resume`): nothing to keep
    else:
        saved = ckpt.snapshot_only(ctx, s, pod, msg, ck_id=saved_id)
    faults.point("restore:saved")
    if not resume:
        podnet.release_locks(ctx.net, pod, queries.criu_run_id(s, pod.net_locked_by))
    pod.net_locked_by = None
    for leftover in (new, old):
        backend.delete_volume(leftover)
    step("putting the files back")
    backend.clone(snap, new)
    backend.rename_volume(volume, old)
    backend.rename_volume(new, volume)
    faults.point("restore:swapped")
    run = None
    try:
        if prep.images is not None:
            run = restore_processes(ctx, prep, pod)
            pod.init_pid, pod.init_starttime = run.pid, run.start
            pod.desired_state = "running"
            if not resume:
                podnet.abort_external(ctx.net, pod)
        else:
            pod.init_pid = pod.init_starttime = None
            pod.desired_state = "stopped"
    except ZapError as e:
        back = _put_back(ctx, s, pod, volume, old, saved)
        _store_saved(ctx, s, pod, saved, rec)
        raise ZapError(f"restore to {ck.ref} failed: {e}.{back}") from None
    faults.point("restore:restored")
    staged = saved is not None and saved.image_format == ckpt.STAGED
    lazy = bool(run and run.pages)
    if lazy or staged:
        s.commit()  # the note is written in a session of its own (SQLite: one writer)
        rec.note(phase="pages" if lazy else "storing")
    pod.head_checkpoint_id = ck.id
    pod.note = None
    pod.restoring = lazy  # `restoring` in `zap ps` while its memory comes in
    s.commit()
    outcome = Outcome(ck.ref, pod.name, prep.images is None, saved.ref if saved else None, lazy=lazy,
                      expected=list(ck.processes or []), init_pid=run.pid if run else None)  # fmt: skip
    handover = _go_background(run, outcome, report, rec, s) if lazy or staged else None
    failure = None
    try:
        if run is not None:
            run.wait()
    except ZapError as e:
        # Reported as restored, but a page could not come: the pod was killed; put it back.
        back = _put_back(ctx, s, pod, volume, old, saved)
        failure = f"restore to {ck.ref} failed while its memory came in: {e}.{back}"
    if run is not None and run.pages is not None and failure is None:
        ck.working_set = run.pages.working_set or ck.working_set
    pod.restoring = False  # its memory is all in (or it was put back): what is left, storing, is not the pod's
    # Reported before its memory was in: what died meanwhile is the pod's note (`zap ps` says it).
    pod.note = failure or (outcome.exited(within=1.0) if handover is not None else None)
    s.commit()
    if staged:
        rec.note(phase="storing")
        faults.point("restore:storing")
        step("storing the state it replaced")
        _store_saved(ctx, s, pod, saved, rec)
    if failure is None:
        backend.delete_volume(old)
    pod.restoring = False
    pod.note = failure
    s.commit()
    if failure is not None:
        if handover is None:
            raise ZapError(failure)
        _log_failure(ctx, pod.name, failure)
    elif report is not None and handover is None:
        report(outcome.final())
    return saved


def _store_saved(ctx: Context, s: Session, pod: Pod, saved: Checkpoint | None, rec: intents.Record) -> None:
    """The replaced state's image set, left in staging by the restore, into the store; if that
    cannot be done, the checkpoint keeps its files only, and the pod's note says so."""
    if saved is None or saved.image_format != ckpt.STAGED:
        return
    try:
        ckpt.store_staged(ctx, s, saved, rec)
    except ZapError as e:
        saved.image_format = saved.image_dir = None
        pod.note = f"{saved.ref} keeps the files of the state it replaced, not its processes: storing them failed ({e})"
        s.commit()


def _put_back(ctx: Context, s: Session, pod: Pod, volume: Path, old: Path, saved: Checkpoint | None) -> str:
    """Undo a restore whose processes failed to come back (or were killed as their pages could
    not come): the replaced volume in place again and, if it had processes, the state they were
    in; returns what the user is told."""
    backend = ctx.pool.backend
    backend.delete_volume(volume)
    backend.rename_volume(old, volume)
    pod.init_pid = pod.init_starttime = None
    pod.desired_state = "stopped"
    back = ""
    if saved is not None and saved.has_images:
        try:
            with _saved_images(ctx, s, saved) as saved_prep:
                # Putting the pod back must not fail for a timeout set for the new state.
                limit = max(criu.timeout(), criu.DEFAULT_TIMEOUT)
                run = restore_processes(ctx, saved_prep, pod, limit)
                pod.init_pid, pod.init_starttime = run.pid, run.start
                pod.desired_state = "running"
            back = " The pod was put back as it was."
        except ZapError as e2:
            back = f" Putting the pod back failed too ({e2}); its state is kept as {saved.ref}."
    elif saved is None:
        back = " The pod stays stopped, its files as they were."
    s.commit()
    return back


def _saved_images(ctx: Context, s: Session, saved: Checkpoint):
    """The replaced state's image set for CRIU: still in staging if it was not stored yet."""
    if saved.image_format == ckpt.STAGED:
        return nullcontext(Prepared(Path(saved.image_dir)))
    return prepared(ctx, s, saved, saved.pod.name, allow_lazy=False)


def _log_failure(ctx: Context, pod: str, why: str) -> None:
    """A failure after the command reported: its pod's note says it, and so does a log."""
    try:
        ctx.log_path(pod, "restore-failed").write_text(why + "\n")
    except OSError:
        pass


def _unchanged_since(ctx: Context, pod: Pod, ck: Checkpoint) -> bool:
    """A stopped pod whose files are still exactly ck's (it was stopped by ck, or restored from
    it, and nothing wrote since: the volume's generation is the snapshot's)."""
    backend = ctx.pool.backend
    if pod.head_checkpoint_id != ck.id or ck.snapshot_generation is None:
        return False
    backend.flush(Path(pod.volume))
    return backend.volume_generation(Path(pod.volume)) == ck.snapshot_generation


def branch(ctx: Context, ref: str, new_name: str, start: bool = True, ports: list[dict] | None = None,
           report: Report | None = None) -> Pod:  # fmt: skip
    """A new pod from ref: a writable snapshot as its volume, the processes restored into fresh
    namespaces where that volume appears at the original pod's path, and a network namespace of
    its own with its own address (`ports` published there). The original is untouched."""
    check_name(new_name)
    pool = ctx.ensure_pool()
    if not pool.backend.capabilities.writable_clones:
        raise UsageError(f"the {pool.backend.name} backend cannot make writable copies of snapshots: no branches")
    if ctx.store.remote is not None:  # boto3's set-up while the catalog is read (if the store is needed)
        ctx.store.remote.warm(background=True)
    with ctx.catalog.session() as s:
        src_name = queries.resolve_ref(s, ref).pod.name
        if queries.find_pod(s, new_name):
            raise AlreadyExists(f"pod {new_name!r} already exists")
    # The source pod's lock too (across the fleet: it may be another host's): rmckpt and prune
    # (which take it) cannot remove the checkpoint while its snapshot and images are being read,
    # nor while its pages are being served.
    with ctx.pod_lock(src_name, own=False), ctx.pod_lock(new_name):
        with ctx.catalog.session() as s:
            ck = queries.resolve_ref(s, ref)
            if queries.find_pod(s, new_name):
                raise AlreadyExists(f"pod {new_name!r} already exists")
            snap = _check_snapshot(ctx, s, ck)
            src = ck.pod
            volume = pool.volume_of(new_name)
            if ports and src.net != "pod":
                raise UsageError(f"--publish needs a pod network; {src.name!r} runs with --net {src.net}")
            pod = Pod(
                name=new_name, volume=str(volume), mount_path=src.mount_path, command=src.command,
                env=src.env, cwd=src.cwd, rootfs=src.rootfs, desired_state="stopped", origin_checkpoint_id=ck.id,
                head_checkpoint_id=ck.id, net=src.net, ports=ports or [], volumes=src.volumes or [], private_tmp=src.private_tmp, init=src.init,
                host_writable=src.host_writable, host_id=ctx.host_id,
                memory_limit=src.memory_limit, cpus=src.cpus, restart=src.restart, restart_max=src.restart_max,
            )  # fmt: skip
            if src.net == "pod":
                check_ports_free(s, new_name, pod.ports, ctx.host_id)
                pod.address = podnet.allocate_address(s, ctx.net)
            # Images first: a damaged set fails here, before the volume exists.
            with prepared(ctx, s, ck, new_name) if start else nullcontext(Prepared(None)) as prep:
                here = src.host_id in (None, ctx.host_id)  # another host's ports are that machine's
                if prep.images is not None and src.net == "host" and here and live_state(src) == "running":
                    if ports_held := listening_ports(prep.images):
                        raise UsageError(
                            f"{ck.ref} listens on {', '.join(ports_held)} in the host's network (--net host), where "
                            f"{src.name!r} still holds them: stop {src.name!r} first, or run it with --net pod")  # fmt: skip
                with intents.recorded(ctx, "branch", new_name, session=s, volume=str(volume), net=src.net,
                                      stage=str(prep.images.parent) if prep.images is not None else None,
                                      phase="make") as rec:  # fmt: skip
                    _make_branch(ctx, s, rec, pool, pod, ck, src, snap, prep, report)
            return pod


def _make_branch(ctx: Context, s: Session, rec: intents.Record, pool, pod: Pod, ck: Checkpoint, src: Pod, snap: Path,
                 prep: Prepared, report: Report | None) -> None:  # fmt: skip
    volume = Path(pod.volume)
    pool.backend.branch_volume(snap, volume)
    run = None
    try:
        podnet.ensure(None, ctx.net, pod)
        podnet.add_origin_alias(ctx.net, pod, src.address)
        if pod.rootfs:
            write_network_files(pod)  # its own name and address in /etc/hosts
        if prep.images is not None:
            with deferred_interrupts():
                faults.point("branch:before-restore")
                run = restore_processes(ctx, prep, pod)
                pod.init_pid, pod.init_starttime = run.pid, run.start
                faults.point("branch:restored")
                podnet.abort_external(ctx.net, pod)
                # its own name, as its own address (the uts namespace came back as the original's)
                proc.run(["nsenter", "-t", str(pod.init_pid), "-u", "--", "hostname", pod.name], check=False)
            pod.desired_state = "running"
        pod.restoring = bool(run and run.pages)
        if pod.restoring:
            rec.note(phase="pages")  # recovery removes a branch whose pages did not all come
        queries.add_pod(s, pod)
        s.commit()
        if pod.ports:
            podnet.sync_nat(s, ctx.net)
    except BaseException:
        s.rollback()
        _remove_branch(ctx, pool, pod, run)
        raise
    outcome = Outcome(ck.ref, pod.name, prep.images is None, lazy=pod.restoring, mount_path=pod.mount_path,
                      expected=list(ck.processes or []), init_pid=run.pid if run else None)  # fmt: skip
    handover = _go_background(run, outcome, report, rec, s) if pod.restoring else None
    if run is None or run.pages is None:
        if report is not None:
            report(outcome.final())
        return
    try:
        run.wait()
    except ZapError as e:
        # Reported as running, but a page could not come: the branch was killed; it goes.
        why = f"branch {pod.name} from {ck.ref} failed while its memory came in: {e}; it was removed"
        s.rollback()
        row = queries.find_pod(s, pod.name)
        if row is not None:
            queries.delete_pod(s, row)
        s.commit()
        if pod.ports:
            podnet.sync_nat(s, ctx.net)
        _remove_branch(ctx, pool, pod, None)
        if handover is None:
            raise ZapError(why) from None
        _log_failure(ctx, pod.name, why)
        return
    pod.restoring = False
    pod.note = outcome.exited(within=1.0) if handover is not None else None
    if ck.working_set is None:
        ck.working_set = run.pages.working_set
    s.commit()
    if report is not None and handover is None:
        report(outcome.final())


def _remove_branch(ctx: Context, pool, pod: Pod, run: Running | None) -> None:
    if run is not None and run.pid:
        procinfo.kill_pod_tree(run.pid)
    elif pod.init_pid:
        procinfo.kill_pod_tree(pod.init_pid)
    podnet.remove(ctx.net, pod)
    pool.backend.delete_volume(Path(pod.volume))


def report_failure_in_background() -> None:
    """For the detached child: an unexpected error is logged, never shown to anyone's terminal."""
    if detach.in_background():
        traceback.print_exc(file=sys.stderr)
