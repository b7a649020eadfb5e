"""The atomic step: CRIU dumps the pod while its post-dump hook takes the read-only snapshot,
so memory and files are captured at the same frozen instant. Everything else (flushing dirty
data, listing processes, compressing and fsyncing images, the catalog) happens before the
freeze or after the thaw."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import time
import uuid
from contextlib import ExitStack, nullcontext
from pathlib import Path

from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod, queries
from catalog import volumes as stream_rows
from zapckpt import settings
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.criu import incremental, unsupported
from zapckpt.criu import runner as criu
from zapckpt.criu.images import ImageFormatError, dump_run_id, link_remaps, read_dump_stats
from zapckpt.net import netns, podnet
from zapckpt.ops import intents
from zapckpt.pod import console, sockets
from zapckpt.pod.lifecycle import live_state
from zapckpt.pod.mounts import criu_path_in_volume, pod_root, remove_in_volume
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes
from zapckpt.store.chunking import stored_images
from zapckpt.system import faults, priority, procinfo, staging
from zapckpt.system.signals import deferred_interrupts

# checkpoints.image_format of an image set committed before it is stored: still in its staging
# directory (image_dir), stored by store_staged (a restore's saved state, stored after the
# restored pod runs).
STAGED = "staged"

HOOK = """#!/bin/bash
# CRIU action script: runs in the frozen window; only post-dump does anything.
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
{stall}t0=$EPOCHREALTIME
{snapshot} >/dev/null 2>{err} || exit 1
echo "$t0 $EPOCHREALTIME" >{times}
"""


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def _write_hook(path: Path, argv: list[str], err: Path, times: Path) -> None:
    # The hook runs in the pod's mount namespace (where /dev/shm is the pod's): our files are
    # reached through the host's root.
    err_at, times_at = criu.through_host_root(err), criu.through_host_root(times)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
    with open(fd, "w") as f:
        f.write(HOOK.format(snapshot=shlex.join(argv), err=shlex.quote(err_at), times=shlex.quote(times_at),
                            stall=faults.stall()))  # fmt: skip


def _hook_ms(times: Path) -> float | None:
    try:
        t0, t1 = (float(x) for x in times.read_text().split())
    except (OSError, ValueError):
        return None
    return (t1 - t0) * 1000


def record(s: Session, host_id: int, pod: Pod, ck_id: str, message: str, kind: str, backend: str, snap,
           before_commit=None, **fields) -> Checkpoint:  # fmt: skip
    """Write the catalog row (both halves exist by now) and move the pod's head to it."""
    ck = Checkpoint(
        id=ck_id, pod=pod, host_id=host_id, seq=queries.next_seq(s, pod), parent_id=pod.head_checkpoint_id, message=message,
        kind=kind, backend=backend, snapshot_path=snap.path, snapshot_generation=snap.generation, **fields,
    )  # fmt: skip
    queries.add_checkpoint(s, ck)  # the row first: pods.head_checkpoint_id and image_files reference it
    pod.head_checkpoint_id = ck_id
    if before_commit:
        before_commit()
    s.commit()
    return ck


def commit_pair(ctx: Context, s: Session, pod: Pod, ck_id: str, images: Path | None, message: str, kind: str,
                info, t_start: float | None = None, rec: intents.Record | None = None, staged: bool = False,
                **fields) -> Checkpoint:  # fmt: skip
    """The one commit of a checkpoint (`checkpoint` and `import` both end here): the image set
    into the store (a remote store has the new pack before anything refers to it), the catalog
    row and the chunk index in one transaction, under the store's lock; if any part fails, none
    of it stays (the new pack is discarded, here and in the store). rec: the operation's intent
    record, told the pack and stream before they go up, so that recovery removes them if this
    zap dies, or if it cannot itself (the store out of reach): the record then stays.
    staged: the image set stays where it is, named by the row (image_format STAGED), for
    store_staged to store later (a restore's saved state, stored once the restored pod runs)."""
    note = rec.note if rec is not None else None
    store = image_sets.store(ctx)
    if staged:
        fields.update(image_dir=str(images), raw_bytes=sum(p.stat().st_size for p in stored_images(images)))
    with store.lock(), store.fetched({}):  # fetched: the new pack is kept from this host's cache eviction
        pending = store.ingest(s, images) if images is not None and not staged else None
        faults.point("checkpoint:ingested")
        stream = None
        t_up = time.perf_counter()
        try:
            if pending is not None and store.remote is not None and pending.new_chunks:
                if note is not None:
                    note(pack=pending.pack_name)
                step("uploading the images")
                pending.publish()
                faults.point("checkpoint:uploaded")
            stream = volumes.send(ctx, s, ck_id, Path(info.path), pod.head_checkpoint_id, note)
            faults.point("checkpoint:volume-sent")
            if store.remote is not None:
                fields["upload_ms"] = (time.perf_counter() - t_up) * 1000
            if t_start is not None:
                fields["total_ms"] = (time.perf_counter() - t_start) * 1000

            def rows() -> None:
                if pending:
                    pending.commit(s, ck_id)
                if stream:
                    stream_rows.add(s, stream)

            if pending is not None:
                fields.update(raw_bytes=pending.raw_bytes, stored_bytes=pending.stored_bytes)
            return record(
                s, ctx.host_id, pod, ck_id, message, kind, ctx.pool.backend.name, info,
                image_format=STAGED if staged else image_sets.STORE_FORMAT if pending else None, before_commit=rows,
                stream_id=stream["id"] if stream else None, **fields,
            )  # fmt: skip
        except BaseException:
            cleaned = pending.discard() if pending else True
            cleaned = _drop_stream(store, stream) and cleaned
            if not cleaned and rec is not None:
                rec.keep()  # the store is out of reach: recovery removes them once it answers
            raise


def store_staged(ctx: Context, s: Session, ck: Checkpoint, rec: intents.Record | None = None) -> None:
    """A checkpoint committed with its image set left in staging (commit_pair's staged) into the
    store now; its row says so in the same transaction."""
    images = Path(ck.image_dir)
    store = image_sets.store(ctx)
    with store.lock(), store.fetched({}):
        pending = store.ingest(s, images)
        try:
            if store.remote is not None and pending.new_chunks:
                if rec is not None:
                    rec.note(pack=pending.pack_name)
                pending.publish()
            pending.commit(s, ck.id)
            ck.image_format, ck.image_dir = image_sets.STORE_FORMAT, None
            ck.raw_bytes, ck.stored_bytes = pending.raw_bytes, pending.stored_bytes
            s.commit()
        except BaseException:
            _rollback(s)
            if not pending.discard() and rec is not None:
                rec.keep()
            raise


def _drop_stream(store, stream: dict | None) -> bool:
    """Remove an uncommitted checkpoint's volume stream from the store; False if it cannot now."""
    if stream is not None and store.remote is not None:
        try:
            store.remote.delete([stream["object"]])
        except ZapError:
            return False
    return True


def take(
    ctx: Context, s: Session, pod: Pod, message: str, *, stop: bool = False, kind: str = "manual",
    ghost_limit: int | None = None, release_connections: bool = False, strict: bool = False,
    ck_id: str | None = None, background: bool = False, keep: ExitStack | None = None,
) -> Checkpoint:
    """Checkpoint a running pod and commit it. The caller holds the pod's lock.

    With stop, the pod ends after the dump and its connections to the outside stay held by
    CRIU's network lock, for a restore of exactly this checkpoint to bring back; with
    release_connections too (a rollback to another state), they are reset instead, so that
    clients reconnect at once. With background (the watch supervisor), the work after the thaw
    (ingest, compression) runs at idle priority, so the pod keeps its cores. With keep, the image
    set is committed staged (commit_pair) and its staging directory held in keep, for
    store_staged after the caller's work (a restore's saved state)."""
    t_start = time.perf_counter()
    if live_state(pod) != "running":
        raise UsageError(f"pod {pod.name!r} is not running ({live_state(pod)}): nothing to checkpoint")
    pool = ctx.pool
    backend = pool.backend
    ck_id = ck_id or new_id()
    volume = Path(pod.volume)
    snap = pool.snapshots / ck_id
    backend.check_snapshot(volume, snap)

    # Before the freeze: what runs, and dirty data written back so the snapshot has little to do.
    pids = procinfo.pids_in_pidns(pod.init_pid)
    processes = [d for p in pids if (d := procinfo.describe(p))]
    inside = [pod.mount_path, *(v["pod"] for v in pod.volumes or []), *(["/tmp"] if pod.private_tmp else [])]
    fds = procinfo.open_fds(pids)
    # What CRIU cannot dump is refused here, in words that say what to do, before anything is frozen.
    unsupported.check(processes, fds, pod.init_pid)
    outside = procinfo.outside_files(fds, inside, None if pod.rootfs else pod_root(pod.mount_path))
    if outside and strict:
        raise ZapError(f"pod {pod.name!r} holds files open outside its volume, which the checkpoint would not "
                       f"contain: {_name_files(outside)} (--strict; declare them with --volume or drop --strict)")
    # The network lock costs ~10 ms inside the frozen window: taken only when there are TCP
    # connections to hold (checked here, before the freeze; one opened in between is still
    # dumped, at worst a packet is retransmitted), always when the pod stops (its closing
    # sockets must send nothing), and always in the host's namespace (not ours to judge).
    network_lock = stop or pod.net == "host" or procinfo.has_tcp_connections(pod.init_pid)
    if ctx.store.remote is not None:
        ctx.store.remote.warm()  # boto3 set up before the freeze, not after the thaw
    stage_cm = staging.stage(ctx.state, f"dump-{ck_id}")
    with nullcontext(keep.enter_context(stage_cm)) if keep is not None else stage_cm as stage, intents.recorded(
        ctx, "checkpoint", pod.name, session=s, ck_id=ck_id, snapshot=str(snap), stage=str(stage), stop=stop,
        release=release_connections,
    ) as rec:  # fmt: skip
        notes: list[str] = []
        ck = _dump_and_commit(ctx, s, rec, pod, ck_id, snap, stage, message, kind, stop, ghost_limit, network_lock,
                              processes, t_start, background, notes, staged=keep is not None)  # fmt: skip
        faults.point("checkpoint:committed")
        if stop:
            if release_connections:
                # Reset the outside connections while their sockets still exist (tasks stopped).
                podnet.release_locks(ctx.net, pod, ck.criu_run_id)
                podnet.abort_external(ctx.net, pod)
            procinfo.kill_pod_tree(pod.init_pid)
            _drop_link_remaps(pod, stage / "images")
            console.wait_for_loggers(ctx.state.console_log(pod.name))
            pod.desired_state = "stopped"
            pod.net_locked_by = None if release_connections else ck.id
            s.commit()
    # Reported, never hidden: what the checkpoint cannot vouch for.
    ck.outside_files = outside
    ck.warnings = notes
    if outside:
        ck.warnings.append(f"files open outside the pod's volume are not in the checkpoint and will not be "
                           f"rolled back: {_name_files(outside)}")
    if pod.volumes:
        shared = ", ".join(f"{v['host']} (at {v['pod']})" for v in pod.volumes)
        ck.warnings.append(f"not rolled back: the declared volumes {shared} are the host's, not in the checkpoint")
    if not stop and (gone := procinfo.missing_processes(processes, pod.init_pid)):
        ck.warnings.append(f"exited right after the checkpoint: {procinfo.name_processes(gone)}")
    return ck


def _dump_and_commit(ctx: Context, s: Session, rec: intents.Record, pod: Pod, ck_id: str, snap: Path, stage: Path, message: str,
                     kind: str, stop: bool, ghost_limit: int | None, network_lock: bool, processes: list[dict],
                     t_start: float, background: bool = False, notes: list[str] | None = None,
                     staged: bool = False) -> Checkpoint:  # fmt: skip
    """The dump with the snapshot in its frozen window, then the commit; on failure nothing of
    it is left and the pod runs on."""
    backend = ctx.pool.backend
    volume = Path(pod.volume)
    images = stage / "images"
    backend.flush(volume)
    hook, hook_err, hook_times = stage / "hook.sh", stage / "hook.err", stage / "hook.times"
    # The hook runs in the pod's mount namespace, where the state directory is hidden: every
    # path it names is reached through our (the host's) root.
    _write_hook(hook, backend.snapshot_argv(volume, snap, host_pid=criu.host_root_pid()), hook_err, hook_times)

    # Last before the freeze, where the kernel tracks dirty pages: the pod's memory is copied
    # while it runs (CRIU stops it only to collect the pages), so the frozen window writes only
    # the pages written since, the fewer the closer it comes before the dump. A pre-dump that
    # fails costs the optimisation, not the checkpoint.
    pre, predump_ms = stage / "pre", None
    if incremental.wanted(criu.criu_binary(), ctx.state.root / "cache"):
        step("copying its memory while it runs (pre-dump)")
        try:
            wall = criu.pre_dump(pod.init_pid, pre, ctx.log_path(pod.name, "pre-dump"))
            frozen = read_dump_stats(pre).frozen_ms
            predump_ms = frozen if frozen is not None else wall
        except criu.CriuError as e:
            shutil.rmtree(pre, ignore_errors=True)
            if notes is not None:
                notes.append(f"a full dump, not an incremental one: {e}")

    faults.point("checkpoint:before-dump")
    step("dumping (the pod is frozen)")
    stopped = False
    info = None
    try:
        try:
            dump_ms = criu.dump(pod.init_pid, images, hook, ctx.log_path(pod.name, "dump"), leave_stopped=stop,
                                ghost_limit=ghost_limit if ghost_limit is not None else settings.ghost_limit(ctx),
                                network_lock=network_lock, parent="../pre" if predump_ms is not None else None,
                                view_root=pod.mount_path if pod.rootfs else pod_root(pod.mount_path))  # fmt: skip
        except criu.CriuError as e:
            podnet.release_locks(ctx.net, pod)  # a dump that died half-way may have left its lock
            hook_msg = hook_err.read_text().strip() if hook_err.exists() else ""
            if hook_msg:
                raise ZapError(f"filesystem snapshot failed inside the frozen window: {hook_msg.splitlines()[-1]}"
                               f" (pod resumed; full log: {e.log})") from None
            raise
        stopped = stop
        faults.point("checkpoint:dumped")
        # After the thaw.
        stats = read_dump_stats(images)
        run_id = dump_run_id(images)
        console.mark(images, pod.console_pipe)  # for a restore to join the processes to a new one
        if pod.net != "host":
            netns.save(images, podnet.netns_path(ctx.net, pod))  # its namespace's settings (net/netns.py)
        fs_ms = _hook_ms(hook_times)
        info = backend.describe(snap)
        if info.path != str(snap):
            rec.note(snapshot=info.path)  # NILFS2: the snapshot is mkcp's, known only now
        # A unix socket renamed since it was bound comes back where it is now, not at its old name.
        sockets.follow_renamed(pod, images, lambda: _browsable(backend, info.path), podnet.netns_path(ctx.net, pod))
        step("storing the images")
        with priority.idle() if background else nullcontext():
            if (images / incremental.PARENT_LINK).is_symlink():
                _make_whole(images, pre)
            else:
                predump_ms = None  # the dump fell back to every page (a retry)
            shutil.rmtree(pre, ignore_errors=True)
            ck = commit_pair(ctx, s, pod, ck_id, images, message, kind, info, t_start=t_start, rec=rec,
                             frozen_ms=stats.frozen_ms, dump_ms=dump_ms, fs_snapshot_ms=fs_ms, processes=processes,
                             stopped=stop, criu_run_id=run_id, predump_ms=predump_ms, staged=staged)  # fmt: skip
    except BaseException:
        _rollback(s)
        # Undone by what was really made (on NILFS2 a checkpoint of mkcp's, not `snap`).
        if info is not None:
            backend.delete_volume(Path(info.path))
        elif snap.exists():
            backend.delete_volume(snap)
        if stopped:
            # The dump left the tasks stopped for us to end; the checkpoint failed, so resume them.
            procinfo.signal_all(procinfo.pids_in_pidns(pod.init_pid), signal.SIGCONT)
        raise
    return ck


def _rollback(s: Session) -> None:
    """Roll the session back, even where the catalog itself is what failed (its connection
    lost): what the operation made is undone all the same."""
    try:
        s.rollback()
    except Exception:  # noqa: BLE001 - the transaction is gone with its connection
        pass


def _drop_link_remaps(pod: Pod, images: Path) -> None:
    """The links CRIU's --link-remap made in the live volume (a --stop dump leaves them for a
    restore; the snapshot has its own copies, and a restore replaces this volume anyway): gone,
    so that a `zap start` in this volume finds none of CRIU's files."""
    for path in link_remaps(images):
        rel = criu_path_in_volume(path, pod.mount_path, bool(pod.rootfs), pod.private_tmp, pod.volumes or [])
        if rel and os.path.basename(rel).startswith("link_remap."):
            remove_in_volume(pod.volume, rel)


def _browsable(backend, path: str) -> Path:
    backend.ensure_browsable(Path(path))
    return Path(path)


def _make_whole(images: Path, pre: Path) -> None:
    """The store keeps whole image sets only: the pages the dump left in its parent (the
    pre-dump) are copied in (criu/incremental.py)."""
    try:
        incremental.flatten(images, pre)
    except (OSError, ImageFormatError) as e:
        raise ZapError(f"cannot complete the incremental image set from its pre-dump: {e}") from None


def _name_files(files: list[dict], most: int = 3) -> str:
    names = sorted({f["path"] for f in files})
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def snapshot_only(ctx: Context, s: Session, pod: Pod, message: str, kind: str = "auto",
                  ck_id: str | None = None) -> Checkpoint:  # fmt: skip
    """A files-only checkpoint of a pod that is not running (nothing to dump)."""
    pool = ctx.pool
    ck_id = ck_id or new_id()
    snap = pool.snapshots / ck_id
    t0 = time.perf_counter()
    info = pool.backend.snapshot(Path(pod.volume), snap)
    fs_ms = (time.perf_counter() - t0) * 1000
    stream = None
    try:
        # the store's lock until the row is in: a sweep of the store must not take the new stream for garbage
        with ctx.store.lock() if volumes.wanted(ctx) else nullcontext():
            stream = volumes.send(ctx, s, ck_id, Path(info.path), pod.head_checkpoint_id)
            ck = record(s, ctx.host_id, pod, ck_id, message, kind, pool.backend.name, info, image_format=None,
                        fs_snapshot_ms=fs_ms, total_ms=(time.perf_counter() - t0) * 1000, processes=[],
                        stream_id=stream["id"] if stream else None,
                        before_commit=(lambda: stream_rows.add(s, stream)) if stream else None)  # fmt: skip
    except BaseException:
        _rollback(s)
        _drop_stream(ctx.store, stream)
        pool.backend.delete_volume(snap)
        raise
    return ck


def checkpoint(ctx: Context, name: str, message: str = "", stop: bool = False, kind: str = "manual",
               ghost_limit: int | None = None, strict: bool = False) -> Checkpoint:  # fmt: skip
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            with deferred_interrupts():
                return take(ctx, s, pod, message, stop=stop, kind=kind, ghost_limit=ghost_limit, strict=strict)
