"""`zap deinit`: stop every pod, unmount the pool (its loop device goes with it), and with
--purge delete everything zap stored."""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path

from catalog import hosts, queries
from zapckpt.common.errors import ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.net import podnet
from zapckpt.ops import watch
from zapckpt.pod import console
from zapckpt.pod.lifecycle import stop_processes
from zapckpt.system import cgroups, procinfo
from zapckpt.system.pool import existing_pool, unmount_pool


def _detach_loops_of(image: Path) -> None:
    from zapckpt.common import proc

    out = proc.run(["losetup", "-j", str(image)], check=False).stdout
    for line in out.splitlines():
        dev = line.split(":", 1)[0]
        if dev:
            proc.run(["losetup", "-d", dev], check=False)


def _leave_fleet(ctx: Context) -> None:
    """--purge of a host of a shared catalog: its pods and their checkpoints go from the
    catalog and the store (as `zap rm --force` each), then the host itself. Other hosts' pods,
    and the checkpoints and streams they still need, stay."""
    from zapckpt.ops.remove import rm

    with ctx.catalog.session() as s:
        mine = [p.name for p in queries.list_pods(s, ctx.host_id)]
    for name in mine:
        step(f"removing pod {name} from the fleet's catalog")
        rm(ctx, name, force=True)


def deinit(ctx: Context, purge: bool, stop_timeout: float = 3.0) -> list[str]:
    stopped = []
    # The watch supervisor first (a tick in progress finishes): it would mount the pool again.
    # Its watches stay: the next `zap watch --list` or `zap resume` starts it again.
    watch.stop_supervisor(ctx)
    known = ctx.catalog.exists()
    pool = existing_pool(ctx.state, ctx.catalog, ctx.host_id) if known else None
    if known:
        with ctx.catalog.session() as s:
            names = [p.name for p in queries.list_pods(s, ctx.host_id)]
        with ExitStack() as held:
            # Each pod's lock: an operation on it finishes first (a restore still bringing a
            # pod's memory in, in the background, holds it until the last page).
            for name in names:
                held.enter_context(ctx.pod_lock(name, own=False))
            with ctx.catalog.session() as s:
                for pod in queries.list_pods(s, ctx.host_id):
                    if procinfo.is_alive(pod.init_pid, pod.init_starttime):
                        stop_processes(pod, stop_timeout)
                        pod.desired_state = "stopped"
                        stopped.append(pod.name)
                    console.wait_for_loggers(ctx.state.console_log(pod.name))  # its last lines written
                    cgroups.remove(ctx.state.root, pod.name)  # made again by its next start
                    if purge and pod.net_locked_by:
                        # nothing will ever restore these: a --net host pod's lock lives in the host's namespace
                        podnet.release_locks(ctx.net, pod, queries.criu_run_id(s, pod.net_locked_by))
    if purge and known and not ctx.catalog.url.embedded:
        _leave_fleet(ctx)
    if pool is not None:
        if purge and pool.kind == "dir":
            # Our subvolumes inside a user-provided btrfs directory belong to this state.
            for parent in (pool.snapshots, pool.pods):
                if parent.is_dir():
                    for child in parent.iterdir():
                        pool.backend.delete_volume(child)
                    parent.rmdir()
        unmount_pool(ctx.state, pool, ctx.catalog, ctx.host_id)
    _detach_loops_of(ctx.state.pool_image)
    if known:
        podnet.teardown(ctx.net)  # namespaces, the bridge, zap's nftables table
    shutil.rmtree(ctx.state.staging, ignore_errors=True)
    if purge and known and not ctx.catalog.url.embedded:
        with ctx.catalog.session() as s:
            hosts.forget(s, ctx.host)  # last: its settings said what to unmount
    if purge:
        ctx.close()
        if os.path.ismount(ctx.state.default_pool_mount):
            raise ZapError(f"{ctx.state.default_pool_mount} is still mounted; not deleting {ctx.state.root}")
        step(f"deleting {ctx.state.root}")
        shutil.rmtree(ctx.state.root, ignore_errors=True)
    return stopped
