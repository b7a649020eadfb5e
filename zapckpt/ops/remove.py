"""Removing things: checkpoints (`zap rmckpt`, `zap prune`) and pods (`zap rm`), and the
restic-style keep policy. A checkpoint that a branch still comes from is never removed; removing one keeps
the lineage connected (children and pod heads move to its parent) and frees every chunk that
nothing references any more."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod, queries
from zapckpt.common.errors import UsageError
from zapckpt.context import Context
from zapckpt.net import podnet
from zapckpt.ops import intents
from zapckpt.pod.lifecycle import live_state, stop_processes
from zapckpt.store import convert
from zapckpt.store import imagesets as images
from zapckpt.system import faults


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def needed_by(s: Session, ck: Checkpoint) -> list[str]:
    """Why ck must stay: the pods (branches) whose origin it is."""
    return [p.name for p in s.scalars(select(Pod).where(Pod.origin_checkpoint_id == ck.id))]


def suspended_by(s: Session, ck: Checkpoint) -> list[str]:
    """The pods `zap resume` would bring back from ck."""
    return [p.name for p in s.scalars(select(Pod).where(Pod.suspended_by == ck.id))]


def remove_checkpoints(ctx, s: Session, cks: list[Checkpoint], min_unused: float = 0.0) -> None:
    """Delete the rows, then (after the commit) the snapshots and freed pack space (packs at
    least min_unused unused: see store/gc.py)."""
    if not cks:
        return
    gone = {c.id for c in cks}
    parent_of = {c.id: c.parent_id for c in s.scalars(select(Checkpoint))}

    def survivor(cid: str | None) -> str | None:
        while cid is not None and cid in gone:
            cid = parent_of.get(cid)
        return cid

    store = images.store(ctx)
    snapshots = [Path(ck.snapshot_path) for ck in cks]
    # The rows go first (one commit); the record lets recovery finish the deleting after a crash.
    with intents.recorded(ctx, "remove", cks[0].pod.name, session=s, snapshots=[str(p) for p in snapshots]):
        with store.lock():
            for child in s.scalars(select(Checkpoint).where(Checkpoint.parent_id.in_(gone))):
                if child.id not in gone:
                    child.parent_id = survivor(child.parent_id)
            for pod in s.scalars(select(Pod).where(Pod.head_checkpoint_id.in_(gone))):
                pod.head_checkpoint_id = survivor(pod.head_checkpoint_id)
            for ck in cks:
                if images.in_store(ck):
                    store.release(s, ck.id)
                s.delete(ck)
            s.flush()
            old_packs = store.collect_garbage(s, min_unused)
            s.commit()
        faults.point("remove:committed")
        for p in old_packs:
            p.unlink(missing_ok=True)
        backend = ctx.pool.backend
        for snap in snapshots:
            backend.delete_volume(snap)
            if snap.parent.parent.name == "imported":  # imports keep their own directory
                try:
                    snap.parent.rmdir()
                except OSError:
                    pass
        for ck in cks:
            convert.remove_old_set(ck)


@dataclass
class Decision:
    ck: Checkpoint
    keep: bool
    reasons: list[str]


def plan_prune(s: Session, cks: list[Checkpoint], keep_last: int, keep_hourly: int, keep_daily: int) -> list[Decision]:
    """restic forget: keep the newest N; the newest of each of the last N hours / days that
    have checkpoints; and anything a branch comes from."""
    newest_first = sorted(cks, key=lambda c: (_aware(c.created_at), c.seq), reverse=True)
    reasons: dict[str, list[str]] = {c.id: [] for c in cks}
    for c in newest_first[:keep_last]:
        reasons[c.id].append("last")
    for label, n, fmt in (("hourly", keep_hourly, "%Y-%m-%d %H"), ("daily", keep_daily, "%Y-%m-%d")):
        buckets: list[str] = []
        for c in newest_first:
            b = _aware(c.created_at).astimezone().strftime(fmt)
            if b not in buckets:
                if len(buckets) == n:
                    break
                buckets.append(b)
                reasons[c.id].append(f"{label} {b}")
    for c in cks:
        users = needed_by(s, c)
        if users:
            reasons[c.id].append("origin of branch " + ", ".join(users))
        if suspended_by(s, c):
            reasons[c.id].append("suspended state (zap resume)")
    return [Decision(c, bool(reasons[c.id]), reasons[c.id]) for c in sorted(cks, key=lambda c: c.seq)]


def rm(ctx: Context, name: str, force: bool) -> None:
    """`zap rm [--force]`: the pod, its volume and (with force) its checkpoints and processes."""
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            branches = queries.branches_of(s, pod)
            if not force and (pod.checkpoints or branches):
                what = []
                if pod.checkpoints:
                    what.append(f"{len(pod.checkpoints)} checkpoint(s)")
                if branches:
                    what.append("branches " + ", ".join(b.name for b in branches))
                raise UsageError(f"pod {name!r} has {' and '.join(what)}; use --force to remove it with them")
            if live_state(pod) in ("running", "frozen") and not force:
                raise UsageError(f"pod {name!r} is running; stop it first or use --force")
            stop_processes(pod, 0 if force else 10)
            podnet.release_locks(ctx.net, pod, queries.criu_run_id(s, pod.net_locked_by))
            pool = ctx.ensure_pool()
            for b in branches:
                b.origin_checkpoint_id = None
            remove_checkpoints(ctx, s, list(pod.checkpoints))
            pool.backend.delete_volume(Path(pod.volume))
            podnet.remove(ctx.net, pod)
            s.delete(pod)
            s.flush()
            if pod.ports:
                podnet.sync_nat(s, ctx.net)
            # The mount point may still be where a branch's volume appears: keep it while used.
            if not queries.pods_using_mount_path(s, pod.mount_path):
                try:
                    os.rmdir(pod.mount_path)
                except OSError:
                    pass


def rmckpt(ctx: Context, ref: str) -> str:
    with ctx.ref_lock(ref):
        with ctx.catalog.session() as s:
            ck = queries.resolve_ref(s, ref)
            label = ck.ref
            users = needed_by(s, ck)
            if users:
                raise UsageError(f"{label} is the origin of branch {', '.join(users)}; remove the branch first")
            if suspended_by(s, ck):
                raise UsageError(f"{label} holds the suspended pod {ck.pod.name!r}: `zap resume {ck.pod.name}` first")
            remove_checkpoints(ctx, s, [ck])
            return label


def prune(ctx: Context, name: str, keep_last: int | None, keep_hourly: int | None, keep_daily: int | None, *,
          dry_run: bool, force: bool) -> list[dict]:  # fmt: skip
    given = [k for k in (keep_last, keep_hourly, keep_daily) if k is not None]
    if not given:
        raise UsageError("give a policy: --keep-last N, --keep-hourly N and/or --keep-daily N")
    if min(given) < 0:
        raise UsageError("keep counts must be >= 0")
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            cks = list(pod.checkpoints)
            plan = plan_prune(s, cks, keep_last or 0, keep_hourly or 0, keep_daily or 0)
            out = [{"ref": d.ck.ref, "action": "keep" if d.keep else ("would remove" if dry_run else "remove"),
                    "why": "; ".join(d.reasons) or "outside the policy"} for d in plan]  # fmt: skip
            doomed = [d.ck for d in plan if not d.keep]
            by_policy = [d for d in plan if any(not r.startswith(("origin of", "suspended state")) for r in d.reasons)]
            if doomed and not by_policy and not force:
                raise UsageError(f"this policy would remove all {len(cks)} checkpoints of {name!r} "
                                 "(but those branches come from); add --force to mean it")
            if not dry_run:
                remove_checkpoints(ctx, s, doomed)
            return out
