"""Rollback in place (`zap restore`) and fork (`zap branch`) from a checkpoint."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod, queries
from zapckpt import settings
from zapckpt.common import proc
from zapckpt.common.errors import AlreadyExists, UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.criu import locks
from zapckpt.criu import runner as criu
from zapckpt.criu.images import bound_unix_sockets, listening_ports
from zapckpt.names import check_name
from zapckpt.net import netns, podnet
from zapckpt.ops import checkpoint as ckpt
from zapckpt.ops import intents
from zapckpt.pod import console
from zapckpt.pod.lifecycle import check_ports_free, live_state, write_network_files
from zapckpt.pod.mounts import pod_root, restore_argv
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes
from zapckpt.system import cgroups, faults, procinfo, staging
from zapckpt.system.signals import deferred_interrupts


def _check_snapshot(ctx: Context, s: Session, ck: Checkpoint) -> Path:
    """The checkpoint's snapshot on this host (received from the fleet's store if it was taken
    elsewhere); refuse before touching anything if the files cannot be brought back (the images
    are checked by reassembling them, which restore and branch do before changing anything)."""
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


@contextmanager
def materialized(ctx: Context, s: Session, ck: Checkpoint) -> Iterator[Path | None]:
    """ck's image set reassembled in tmpfs for CRIU (None for a files-only checkpoint); damaged
    images fail here, before anything has been changed."""
    if not ck.has_images:
        yield None
        return
    with staging.stage(ctx.state, f"restore-{ck.id}") as stage:
        images = stage / "images"
        step(f"assembling the images of {ck.ref}")
        image_sets.materialize(ctx, s, ck, images)
        yield images


def restore_processes(ctx: Context, images: Path, pod: Pod, limit: float | None = None) -> tuple[int, int]:
    """Let CRIU bring the tree back in the pod's own network namespace, with the pod's mounts
    (its volume at the pod's path, private /dev/shm and /dev/pts, declared volumes), and the
    console pipe its processes held replaced by a new one to the pod's console log."""
    os.makedirs(pod.mount_path, exist_ok=True)
    mounts = {"volume": pod.volume, "mount_path": pod.mount_path, "system": bool(pod.rootfs),
              "volumes": pod.volumes or [], "private_tmp": pod.private_tmp, "state_root": str(ctx.state.root),
              "host_readonly": not pod.rootfs and not pod.host_writable,
              "socket_dirs": [],
              "proc": os.path.join(pod.mount_path if pod.rootfs else pod_root(pod.mount_path), "proc")}  # fmt: skip
    if pod.rootfs:
        # CRIU binds a system pod's unix sockets at the names the daemons gave, from the host's
        # root: their directories are redirected into the pod's root for the restore.
        inside = pod.mount_path.rstrip("/") + "/"
        mounts["socket_dirs"] = sorted({os.path.dirname(n) for n in bound_unix_sockets(images)
                                        if not n.startswith(inside)})  # fmt: skip
    step("restoring the processes")
    if pod.net != "host":  # a branch's namespace is new, a restored one may be (after a reboot)
        netns.apply_settings(podnet.netns_path(ctx.net, pod), netns.load(images))
    held = console.held_pipe(images)
    inherit, pipe = {}, None
    if held is not None:
        w, pipe = console.start_logger(ctx.state.console_log(pod.name), settings.log_max(ctx))
        inherit = {w: held}
    # CRIU drops the POSIX locks of files the processes map (criu/locks.py): such a tree stays
    # stopped until they are taken again.
    relock = bool(locks.posix_locks(images))
    try:
        join = cgroups.prepare(ctx.state.root, pod.name, cgroups.of_pod(pod))
        pid = criu.restore(images, images.parent / "pid", restore_argv(mounts), mounts["proc"],
                           podnet.netns_path(ctx.net, pod), ctx.log_path(pod.name, "restore"), limit, inherit=inherit,
                           join_cgroups=join, leave_stopped=relock)  # fmt: skip
    finally:
        for w in inherit:
            os.close(w)  # the restored processes hold it now (or CRIU failed: the logger ends)
    if relock:
        faults.point("restore:stopped")  # recovery undoes a restore whose tasks are still stopped
        try:
            locks.give_back(images, pid)
        except BaseException:
            procinfo.kill_pod_tree(pid)
            raise
        locks.resume(images, pid)
    pod.console_pipe = pipe
    pod.exit_code = pod.exited_at = None  # of the run it replaces
    return pid, procinfo.starttime(pid) or 0


def exited_warning(ck: Checkpoint, init_pid: int) -> list[str]:
    gone = procinfo.missing_processes(ck.processes or [], init_pid)
    return [f"exited right after the restore: {procinfo.name_processes(gone)}"] if gone else []


def restore(ctx: Context, ref: str, saved_message: str | None = None) -> tuple[Checkpoint, Checkpoint | None]:
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
            with materialized(ctx, s, ck) as images, deferred_interrupts():
                faults.point("restore:images")  # all it needs is here; nothing changed yet
                return ck, _restore_locked(ctx, s, pod, ck, snap, images, saved_message)


def _restore_locked(ctx: Context, s: Session, pod: Pod, ck: Checkpoint, snap: Path, images: Path | None,
                    saved_message: str | None) -> Checkpoint | None:  # fmt: skip
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
    # relock: the restored tasks wait stopped for their POSIX locks (restore_processes); if zap
    # dies before it resumes them, recovery undoes the restore rather than finish it.
    relock = images is not None and bool(locks.posix_locks(images))
    with intents.recorded(ctx, "restore", pod.name, session=s, ck_id=ck.id, saved_id=saved_id, new=str(new),
                          old=str(old), resume=resume, stage=str(images.parent) if images else None,
                          relock=relock):  # fmt: skip
        return _swap_and_restore(ctx, s, pod, ck, snap, images, saved_message, resume, saved_id, volume, new, old)


def _swap_and_restore(ctx: Context, s: Session, pod: Pod, ck: Checkpoint, snap: Path, images: Path | None,
                      saved_message: str | None, resume: bool, saved_id: str, volume: Path, new: Path,
                      old: Path) -> Checkpoint | None:  # fmt: skip
    backend = ctx.pool.backend
    # Keep the state being replaced, so the rollback itself can be undone.
    msg = saved_message or f"before restore to {ck.ref}"
    if live_state(pod) == "running":
        try:
            step("saving the current state")
            saved = ckpt.take(ctx, s, pod, msg, stop=True, kind="auto", release_connections=True, ck_id=saved_id)
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
    try:
        if images is not None:
            pod.init_pid, pod.init_starttime = restore_processes(ctx, images, pod)
            pod.desired_state = "running"
            if not resume:
                podnet.abort_external(ctx.net, pod)
            ck.restore_warnings = exited_warning(ck, pod.init_pid)
        else:
            pod.init_pid = pod.init_starttime = None
            pod.desired_state = "stopped"
    except ZapError as e:
        # Put the replaced state back, files and (if it had any) processes.
        backend.delete_volume(volume)
        backend.rename_volume(old, volume)
        back = ""
        if saved is not None and saved.has_images:
            try:
                with materialized(ctx, s, saved) as saved_images:
                    # Putting the pod back must not fail for a timeout set for the new state.
                    limit = max(criu.timeout(), criu.DEFAULT_TIMEOUT)
                    pod.init_pid, pod.init_starttime = restore_processes(ctx, saved_images, pod, limit)
                    pod.desired_state = "running"
                back = " The pod was put back as it was."
            except ZapError as e2:
                back = f" Putting the pod back failed too ({e2}); its state is kept as {saved.ref}."
        elif saved is None:
            back = " The pod stays stopped, its files as they were."
        s.commit()
        raise ZapError(f"restore to {ck.ref} failed: {e}.{back}") from None
    faults.point("restore:restored")
    backend.delete_volume(old)
    pod.head_checkpoint_id = ck.id
    s.commit()
    return saved


def _unchanged_since(ctx: Context, pod: Pod, ck: Checkpoint) -> bool:
    """A stopped pod whose files are still exactly ck's (it was stopped by ck, or restored from
    it, and nothing wrote since: the volume's generation is the snapshot's)."""
    backend = ctx.pool.backend
    if pod.head_checkpoint_id != ck.id or ck.snapshot_generation is None:
        return False
    backend.flush(Path(pod.volume))
    return backend.volume_generation(Path(pod.volume)) == ck.snapshot_generation


def branch(ctx: Context, ref: str, new_name: str, start: bool = True, ports: list[dict] | None = None) -> Pod:
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
    # (which take it) cannot remove the checkpoint while its snapshot and images are being read.
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
            with materialized(ctx, s, ck) if start else nullcontext(None) as images:
                here = src.host_id in (None, ctx.host_id)  # another host's ports are that machine's
                if images is not None and src.net == "host" and here and live_state(src) == "running":
                    if ports_held := listening_ports(images):
                        raise UsageError(
                            f"{ck.ref} listens on {', '.join(ports_held)} in the host's network (--net host), where "
                            f"{src.name!r} still holds them: stop {src.name!r} first, or run it with --net pod")  # fmt: skip
                with intents.recorded(ctx, "branch", new_name, session=s, volume=str(volume), net=src.net,
                                      stage=str(images.parent) if images is not None else None):  # fmt: skip
                    pool.backend.branch_volume(snap, volume)
                    try:
                        podnet.ensure(None, ctx.net, pod)
                        podnet.add_origin_alias(ctx.net, pod, src.address)
                        if pod.rootfs:
                            write_network_files(pod)  # its own name and address in /etc/hosts
                        if images is not None:
                            with deferred_interrupts():
                                faults.point("branch:before-restore")
                                pod.init_pid, pod.init_starttime = restore_processes(ctx, images, pod)
                                faults.point("branch:restored")
                                podnet.abort_external(ctx.net, pod)
                                # its own name, as its own address (the uts namespace came back as the original's)
                                proc.run(["nsenter", "-t", str(pod.init_pid), "-u", "--", "hostname", new_name], check=False)
                            pod.desired_state = "running"
                            pod.restore_warnings = exited_warning(ck, pod.init_pid)
                        queries.add_pod(s, pod)
                        s.commit()
                        if pod.ports:
                            podnet.sync_nat(s, ctx.net)
                    except BaseException:
                        s.rollback()
                        if pod.init_pid:
                            procinfo.kill_pod_tree(pod.init_pid)
                        podnet.remove(ctx.net, pod)
                        pool.backend.delete_volume(volume)
                        raise
            return pod
