"""A lost host's pods taken over by another (`zap host adopt LOST [POD...]`), and the lost host
fenced out if it comes back.

Adopting uses only what the fleet shares: the catalog and the store (the lost host's disk may be
gone). Each pod comes back on this host from its newest checkpoint (NAME@latest): its files
received from the store, its processes restored, a network namespace of its own here. Its address
stays where this host's pods share the lost host's subnet (hosts given the same ZAP_SUBNET, each
on a network of its own or one network stretched between them) and the address is free here;
otherwise it gets one of this host's and the result says so (connections to the old address are
gone either way: clients reconnect).

The catalog then names this host as the pod's, which fences the lost one: every command there
that would act on the pod refuses (pod_lock checks the owner), its supervisor no longer sees it,
and the first zap command there takes down what is left of its copy (retire): the processes, if
the host was only cut off and they ran on, its volume and network namespace. It never runs the
pod again.
"""

from __future__ import annotations

from datetime import datetime, timezone

from catalog import hosts, queries
from zapckpt.common.errors import NotFound, UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.net import podnet
from zapckpt.ops import intents
from zapckpt.ops.restore import exited_warning
from zapckpt.ops.revive import prepared, restore_processes
from zapckpt.pod import console
from zapckpt.store import volumes
from zapckpt.system import cgroups, faults, procinfo
from zapckpt.system.signals import deferred_interrupts


def adopt(ctx: Context, lost: str, names: list[str]) -> list[dict]:
    """Take over the lost host's pods (all, or those named); one result per pod."""
    me = ctx.host
    if lost == me.name:
        raise UsageError(f"{lost!r} is this host: adopt another host's pods")
    with ctx.catalog.session() as s:
        gone = hosts.get(s, lost)
        theirs = [p.name for p in queries.list_pods(s, gone.id)]
        for n in names:
            if n not in theirs:
                pod = queries.find_pod(s, n)
                if pod is None:
                    raise NotFound(f"no pod named {n!r} (see `zap ps --all-hosts`)")
                raise UsageError(f"pod {n!r} is not {lost!r}'s (it runs on {hosts.name_of(s, pod.host_id) or '?'})")
        net_same = queries.get_setting(s, gone.id, "net.subnet") == str(ctx.net.subnet)
    out = []
    for name in names or theirs:
        try:
            out.append(_adopt_one(ctx, gone.id, lost, name, net_same))
        except ZapError as e:
            out.append({"pod": name, "adopted": False, "why": str(e)})
    return out


def _adopt_one(ctx: Context, gone_id: int, lost: str, name: str, net_same: bool) -> dict:
    pool = ctx.ensure_pool()
    with ctx.pod_lock(name, own=False), ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        if pod.host_id != gone_id:
            return {"pod": name, "adopted": False, "why": f"no longer {lost!r}'s (adopted meanwhile?)"}
        ck = queries.resolve_ref(s, f"{name}@latest") if pod.checkpoints else None
        if ck is None:
            raise ZapError(f"pod {name!r} has no checkpoint: its files were only on {lost!r}")
        step(f"{name}: the files of {ck.ref}")
        snap = volumes.ensure_local(ctx, s, ck)
        volume = pool.volume_of(name)
        if volume.exists():
            raise ZapError(f"{volume} exists already on this host (`zap verify --repair` removes a leftover)")
        old = {"address": pod.address, "pid": pod.init_pid, "start": pod.init_starttime, "running": pod.desired_state}
        # the address: kept where this host shares the lost host's subnet and no pod of it has it
        keep = pod.net == "pod" and pod.address and net_same and pod.address not in podnet.addresses_in_use(s, ctx.net) - {pod.address}
        if pod.net == "pod" and not keep:
            pod.address = podnet.allocate_address(s, ctx.net)
        pod.host_id, pod.volume = ctx.host_id, str(volume)
        pod.init_pid = pod.init_starttime = pod.console_pipe = None
        pod.net_locked_by = pod.suspended_by = None
        pod.head_checkpoint_id = ck.id
        pod.restart_count = 0
        with prepared(ctx, s, ck, name) as prep, deferred_interrupts():
            images = prep.images
            with intents.recorded(ctx, "adopt", name, session=s, volume=str(volume), net=pod.net,
                                  stage=str(images.parent) if images is not None else None):  # fmt: skip
                pool.backend.branch_volume(snap, volume)
                try:
                    podnet.ensure(None, ctx.net, pod)
                    if images is not None and old["running"] != "stopped":
                        faults.point("adopt:before-restore")
                        run = restore_processes(ctx, prep, pod)
                        pod.init_pid, pod.init_starttime = run.pid, run.start
                        run.wait()  # every page in before the adoption is committed
                        podnet.abort_external(ctx.net, pod)
                        pod.desired_state = "running"
                    else:
                        pod.desired_state = "stopped"
                    pod.adopted_from, pod.adopted_at = lost, datetime.now(timezone.utc)
                    pod.retire_pending = True
                    pod.adopted_pid, pod.adopted_start = old["pid"], old["start"]
                    s.commit()
                except BaseException:
                    s.rollback()
                    if pod.init_pid:
                        procinfo.kill_pod_tree(pod.init_pid)
                    podnet.remove(ctx.net, pod)
                    pool.backend.delete_volume(volume)
                    raise
        if pod.ports:
            podnet.sync_nat(s, ctx.net)
        note = []
        if pod.net == "pod":
            note.append(f"address {pod.address} kept" if keep else f"new address {pod.address} (was {old['address']}: "
                        f"{'another subnet here' if not net_same else 'taken here'})")  # fmt: skip
        return {"pod": name, "adopted": True, "from": ck.ref, "state": pod.desired_state, "address": pod.address,
                "address_kept": bool(keep), "notes": note + exited_warning(ck, pod.init_pid or 0) if pod.init_pid else note}  # fmt: skip


def retire(ctx: Context) -> list[str]:
    """On a host that comes back after its pods were adopted: take down what is left of each
    copy here (processes, volume, network namespace, console log), once; returns one line each."""
    me = ctx.host
    done = []
    with ctx.catalog.session() as s:
        names = [p.name for p in queries.pods_adopted_from(s, me.name)]
    for name in names:
        with ctx.pod_lock(name, own=False), ctx.catalog.session() as s:
            pod = queries.find_pod(s, name)
            if pod is None or not pod.retire_pending or pod.adopted_from != me.name:
                continue
            what = []
            if pod.adopted_pid and procinfo.is_alive(pod.adopted_pid, pod.adopted_start):
                procinfo.kill_pod_tree(pod.adopted_pid)
                what.append("its processes stopped")
            ghost = type(pod)(name=name, net=pod.net)  # this host's namespace of it, by name
            podnet.remove(ctx.net, ghost)
            cgroups.remove(ctx.state.root, name)
            try:
                pool = ctx.ensure_pool()
                mine = pool.volume_of(name)
                if mine.exists() and str(mine) != pod.volume:
                    pool.backend.delete_volume(mine)
                    what.append("its volume here deleted")
            except ZapError:
                pass  # the pool itself is gone (a lost disk): nothing of it to delete
            console.wait_for_loggers(ctx.state.console_log(name))
            console.remove_logs(ctx.state.console_log(name))
            pod.retire_pending = False
            pod.adopted_pid = pod.adopted_start = None
            s.commit()
            owner = hosts.name_of(s, pod.host_id) or "?"
            done.append(f"pod {name} was adopted by host {owner} while this host was away: "
                        + ("; ".join(what) or "nothing of it was left here") + "; it will not run here again")
    return done
