"""`zap update NAME [--memory SIZE] [--cpus N] [--restart POLICY]` (as `podman update`): change
a pod's resource limits and restart policy. A running pod's new limits take effect at once: its
control groups are written (made, and its processes moved into them, if it had none). A memory
limit below what the pod uses makes the kernel reclaim memory, and if it cannot, refuse the
value (then nothing changes) or end one of the pod's processes (OOM)."""

from __future__ import annotations

from catalog import Pod, queries
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.context import Context
from zapckpt.pod.status import live_state
from zapckpt.system import cgroups, procinfo


def update(ctx: Context, name: str, memory: int | None, cpus: float | None,
           restart: tuple[str, int | None] | None) -> Pod:  # fmt: skip
    if memory is None and cpus is None and restart is None:
        raise UsageError("nothing to change: give --memory, --cpus and/or --restart")
    with ctx.pod_lock(name), ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        new = cgroups.Limits(memory if memory is not None else pod.memory_limit,
                             cpus if cpus is not None else pod.cpus)  # fmt: skip
        if (memory is not None or cpus is not None) and live_state(pod) in ("running", "paused", "frozen"):
            procs = cgroups.prepare(ctx.state.root, name, new)
            for _ in range(5):  # until no process of the pod is left outside (one may fork meanwhile)
                pids = procinfo.pids_in_pidns(pod.init_pid)
                if all(set(pids) <= cgroups.members(p) for p in procs):
                    break
                cgroups.move(pids, procs)
            else:
                raise ZapError(f"the processes of pod {name!r} kept forking: not all of them are in its control "
                               "groups yet; run the update again")  # fmt: skip
        pod.memory_limit, pod.cpus = new.memory, new.cpus
        if restart is not None:
            pod.restart, pod.restart_max = restart
            pod.restart_count = 0
        return pod
