"""Removing things: checkpoints (`zap rmckpt`, `zap prune`) and pods (`zap rm`), and the
restic-style keep policy. A checkpoint that a branch still comes from is never removed; removing one keeps
the lineage connected (children and pod heads move to its parent) and frees every chunk that
nothing references any more."""

from __future__ import annotations

import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.orm import Session

from catalog import Checkpoint, queries
from catalog import volumes as stream_rows
from zapckpt.common.errors import UsageError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.net import podnet
from zapckpt.ops import intents
from zapckpt.pod import console
from zapckpt.pod.lifecycle import live_state, stop_processes
from zapckpt.store import convert
from zapckpt.store import imagesets as images
from zapckpt.store import volumes
from catalog.chunks import ChunkIndex
from zapckpt.system import cgroups, faults


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def needed_by(s: Session, ck: Checkpoint) -> list[str]:
    """Why ck must stay: the pods (branches) whose origin it is."""
    return queries.branch_names(s, ck.id)


def suspended_by(s: Session, ck: Checkpoint) -> list[str]:
    """The pods `zap resume` would bring back from ck."""
    return queries.pods_suspended_by(s, ck.id)


def remove_checkpoints(ctx, s: Session, cks: list[Checkpoint], min_unused: float = 0.0) -> None:
    """Delete the rows, then (after the commit) the snapshots and freed pack space (packs at
    least min_unused unused: see store/gc.py)."""
    if not cks:
        return
    gone = {c.id for c in cks}
    parent_of = queries.checkpoint_parents(s)

    def survivor(cid: str | None) -> str | None:
        while cid is not None and cid in gone:
            cid = parent_of.get(cid)
        return cid

    store = images.store(ctx)
    # this host's snapshots of them: its own, or its copies of other hosts' (store/volumes.py);
    # another host's own are that host's to sweep
    snapshots = [volumes.local_snapshot(ctx, ck) for ck in cks]
    # The rows go first (one commit); the record lets recovery finish the deleting after a crash.
    with intents.recorded(ctx, "remove", cks[0].pod.name, session=s, snapshots=[str(p) for p in snapshots]):
        with store.lock(exclusive=True):
            for child in queries.children_in(s, gone):
                if child.id not in gone:
                    child.parent_id = survivor(child.parent_id)
            for pod in queries.pods_with_head_in(s, gone):
                pod.head_checkpoint_id = survivor(pod.head_checkpoint_id)
            for ck in cks:
                if images.in_store(ck):
                    store.release(s, ck.id)
                queries.delete_checkpoint(s, ck)
            s.flush()
            old_packs = store.collect_garbage(s, min_unused)
            old_streams = stream_rows.collect(s)
            s.commit()
        faults.point("remove:committed")
        store.unpublish(old_packs)
        if old_streams and store.remote is not None:
            store.remote.delete(old_streams)
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


# restic's calendar buckets: the newest checkpoint of each of the last N hours, days... that
# have one, by this machine's clock, named with their zone.
BUCKETS = (("hourly", "%Y-%m-%d %H"), ("daily", "%Y-%m-%d"), ("weekly", "%G-W%V"), ("monthly", "%Y-%m"),
           ("yearly", "%Y"))  # fmt: skip


def plan_prune(s: Session, cks: list[Checkpoint], keep_last: int = 0, keep_hourly: int = 0, keep_daily: int = 0,
               keep_weekly: int = 0, keep_monthly: int = 0, keep_yearly: int = 0,
               keep_within: float | None = None, keep_tags: tuple[str, ...] = (),
               keep_tagged: bool = False) -> list[Decision]:  # fmt: skip
    """restic forget: keep the newest N; the newest of each of the last N hours / days / weeks /
    months / years that have checkpoints; all taken within a duration of the newest; those
    carrying one of keep_tags (or any tag: keep_tagged); anything a branch comes from; and a
    guard's pre and post checkpoints together."""
    newest_first = sorted(cks, key=lambda c: (_aware(c.created_at), c.seq), reverse=True)
    reasons: dict[str, list[str]] = {c.id: [] for c in cks}
    for c in newest_first[:keep_last]:
        reasons[c.id].append("last")
    counts = dict(zip((label for label, _f in BUCKETS), (keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)))
    for label, fmt in BUCKETS:
        buckets: list[str] = []
        for c in newest_first:
            b = _aware(c.created_at).astimezone().strftime(fmt + " %Z")
            if b not in buckets:
                if len(buckets) == counts[label]:
                    break
                buckets.append(b)
                reasons[c.id].append(f"{label} {b}")
    if keep_within is not None and newest_first:
        newest = _aware(newest_first[0].created_at)
        for c in newest_first:
            if (newest - _aware(c.created_at)).total_seconds() <= keep_within:
                reasons[c.id].append(f"within {keep_within:g}s of the newest")
    for c in cks:
        tagged = [t for t in c.tag_names if keep_tagged or t in keep_tags]
        if tagged:
            reasons[c.id].append("tagged " + ", ".join(tagged))
    # A guard's pair goes or stays whole: `zap diff PRE POST` must keep working.
    by_seq = {c.seq: c for c in cks}
    for c in cks:
        post = by_seq.get(c.seq + 1)
        if c.kind == "pre" and post is not None and post.kind == "post":
            if reasons[c.id] and not reasons[post.id]:
                reasons[post.id].append(f"guard pair of {c.ref}")
            elif reasons[post.id] and not reasons[c.id]:
                reasons[c.id].append(f"guard pair of {post.ref}")
    for c in cks:
        users = needed_by(s, c)
        if users:
            reasons[c.id].append("origin of branch " + ", ".join(users))
        if suspended_by(s, c):
            reasons[c.id].append("suspended state (zap resume)")
    return [Decision(c, bool(reasons[c.id]), reasons[c.id]) for c in sorted(cks, key=lambda c: c.seq)]


def rm(ctx: Context, name: str, force: bool) -> list[str]:
    """`zap rm [--force]`: the pod, its volume and (with force) its checkpoints and processes;
    returns the names of its branches, which go on (their volumes are their own) without an
    origin."""
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
            if live_state(pod) in ("running", "paused", "frozen") and not force:
                raise UsageError(f"pod {name!r} is running; stop it first or use --force")
            stop_processes(pod, 0 if force else 10)
            podnet.release_locks(ctx.net, pod, queries.criu_run_id(s, pod.net_locked_by))
            pool = ctx.ensure_pool()
            for b in branches:
                b.origin_checkpoint_id = None
            step(f"removing its {len(pod.checkpoints)} checkpoint(s)")
            remove_checkpoints(ctx, s, list(pod.checkpoints))
            pool.backend.delete_volume(Path(pod.volume))
            podnet.remove(ctx.net, pod)
            cgroups.remove(ctx.state.root, name)
            queries.delete_pod(s, pod)
            console.wait_for_loggers(ctx.state.console_log(name))
            console.remove_logs(ctx.state.console_log(name))  # a new pod of that name starts a new log
            if pod.ports:
                podnet.sync_nat(s, ctx.net)
            # The mount point may still be where a branch's volume appears: keep it while used.
            if not queries.pods_using_mount_path(s, pod.mount_path):
                try:
                    os.rmdir(pod.mount_path)
                except OSError:
                    pass
            return [b.name for b in branches]


_RANGE = re.compile(r"(?P<name>[^@]+)@(?P<a>[0-9]{1,9})-(?P<b>[0-9]{1,9})", re.ASCII)


def resolve_refs(s: Session, refs: list[str]) -> list[Checkpoint]:
    """Checkpoints named by refs, each a reference (queries.resolve_ref) or a range NAME@A-B
    (the checkpoints of NAME numbered A to B that exist, as snapper's `delete A-B`)."""
    out: dict[str, Checkpoint] = {}
    for ref in refs:
        m = _RANGE.fullmatch(ref)
        if m is None:
            ck = queries.resolve_ref(s, ref)
            out[ck.id] = ck
            continue
        a, b = int(m["a"]), int(m["b"])
        if a > b:
            raise UsageError(f"bad range {ref!r}: {a} is after {b}")
        pod = queries.get_pod(s, m["name"])
        found = [c for c in pod.checkpoints if a <= c.seq <= b]
        if not found:
            raise queries.no_checkpoint(f"{pod.name}@{a}-{b}", pod.name, f"none of {pod.name!r} is numbered {a} to {b}")
        out.update((c.id, c) for c in found)
    return sorted(out.values(), key=lambda c: (c.pod.name, c.seq))


def rmckpt(ctx: Context, refs: list[str], confirm=None) -> list[str]:
    """`zap rmckpt REF...`: all of them or, if one must stay (a branch comes from it, a
    suspended pod rests on it), none. confirm(refs) may still say no (raises)."""
    with ctx.catalog.session() as s:
        names = sorted({c.pod.name for c in resolve_refs(s, refs)})
    with ExitStack() as held:
        for name in names:
            held.enter_context(ctx.pod_lock(name))
        with ctx.catalog.session() as s:
            cks = resolve_refs(s, refs)
            for ck in cks:
                users = needed_by(s, ck)
                if users:
                    raise UsageError(f"{ck.ref} is the origin of branch {', '.join(users)}; remove the branch first "
                                     f"(nothing was removed)")  # fmt: skip
                if suspended_by(s, ck):
                    raise UsageError(f"{ck.ref} holds the suspended pod {ck.pod.name!r}: `zap resume {ck.pod.name}` "
                                     f"first (nothing was removed)")  # fmt: skip
            labels = [ck.ref for ck in cks]
            if confirm is not None and len(cks) > 1:
                confirm(labels)
            for name in names:
                remove_checkpoints(ctx, s, [ck for ck in cks if ck.pod.name == name])
            return labels


def prune(ctx: Context, name: str, policy: dict, *, dry_run: bool, force: bool) -> tuple[list[dict], int]:
    """`zap prune`: policy holds the keep_* counts (None: not given), keep_within (seconds) and
    keep_tags (None or tag names).
    Returns the decisions and the bytes the image store freed."""
    if all(v is None for v in policy.values()):
        raise UsageError("give a policy: --keep-last N, --keep-hourly/daily/weekly/monthly/yearly N, "
                         "--keep-within DURATION and/or --keep-tag TAG")  # fmt: skip
    counts = {k: v or 0 for k, v in policy.items() if k not in ("keep_within", "keep_tags")}
    if min(counts.values()) < 0:
        raise UsageError("keep counts must be >= 0")
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            cks = list(pod.checkpoints)
            plan = plan_prune(s, cks, **counts, keep_within=policy.get("keep_within"),
                              keep_tags=tuple(policy.get("keep_tags") or ()))  # fmt: skip
            out = [{"ref": d.ck.ref, "action": "keep" if d.keep else ("would remove" if dry_run else "remove"),
                    "why": "; ".join(d.reasons) or "outside the policy"} for d in plan]  # fmt: skip
            doomed = [d.ck for d in plan if not d.keep]
            by_policy = [d for d in plan if any(not r.startswith(("origin of", "suspended state")) for r in d.reasons)]
            if doomed and not by_policy and not force:
                raise UsageError(f"this policy would remove all {len(cks)} checkpoints of {name!r} "
                                 "(but those branches come from); add --force to mean it")
            freed = 0
            if not dry_run and doomed:
                before = ChunkIndex(s).usage()["pack_bytes"]
                remove_checkpoints(ctx, s, doomed)
                freed = max(0, before - ChunkIndex(s).usage()["pack_bytes"])
            return out, freed
