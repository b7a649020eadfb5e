"""`zap rename OLD NEW` (as `podman rename`): a stopped pod under a new name. Its checkpoints
become NEW@N; its volume, console log and network namespace follow the name. Where its
processes see their files (its path) does not change: the checkpoints' images name that path,
as a branch's do its original's."""

from __future__ import annotations

from pathlib import Path

from catalog import queries
from zapckpt.common.errors import AlreadyExists, UsageError
from zapckpt.context import Context
from zapckpt.names import check_name
from zapckpt.net import podnet
from zapckpt.pod import console
from zapckpt.pod.lifecycle import live_state
from zapckpt.system import cgroups


def rename(ctx: Context, old: str, new: str) -> None:
    check_name(new)
    pool = ctx.ensure_pool()
    with ctx.pod_lock(old), ctx.pod_lock(new), ctx.catalog.session() as s:
        pod = queries.get_pod(s, old)
        if queries.find_pod(s, new):
            raise AlreadyExists(f"pod {new!r} already exists")
        state = live_state(pod)
        if state not in ("stopped", "dead"):
            raise UsageError(f"pod {old!r} is {state}: `zap stop {old}` first (a running pod's "
                             f"namespaces carry its name)")  # fmt: skip
        if pod.net_locked_by:
            raise UsageError(f"pod {old!r} holds its connections for a restore of its suspended state: "
                             f"`zap resume {old}` (or `zap start`) first")  # fmt: skip
        podnet.remove(ctx.net, pod)  # made again under the new name by the next start or restore
        cgroups.remove(ctx.state.root, old)  # likewise
        volume = pool.volume_of(new)
        pool.backend.rename_volume(Path(pod.volume), volume)
        try:
            pod.name, pod.volume = new, str(volume)
            s.flush()
            console.rename_logs(ctx.state.console_log(old), ctx.state.console_log(new))
        except BaseException:
            pool.backend.rename_volume(volume, pool.volume_of(old))
            raise
