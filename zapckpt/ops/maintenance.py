"""rmckpt, prune, df and verify over the catalog and the image store."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sqlalchemy import select

from catalog import Checkpoint, queries

from zapckpt.store import imagesets as image_sets
from zapckpt.store import convert
from zapckpt.store.index import ChunkIndex
from zapckpt.context import Context
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.ops.retention import needed_by, plan_prune, remove_checkpoints


def rmckpt(ctx: Context, ref: str) -> str:
    with ctx.ref_lock(ref):
        with ctx.catalog.session() as s:
            ck = queries.resolve_ref(s, ref)
            label = ck.ref
            users = needed_by(s, ck)
            if users:
                raise UsageError(f"{label} is the origin of branch {', '.join(users)}; remove the branch first")
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
            by_policy = [d for d in plan if any(not r.startswith("origin of") for r in d.reasons)]
            if doomed and not by_policy and not force:
                raise UsageError(f"this policy would remove all {len(cks)} checkpoints of {name!r} "
                                 "(but those branches come from); add --force to mean it")
            if not dry_run:
                remove_checkpoints(ctx, s, doomed)
            return out


def df(ctx: Context) -> dict:
    with ctx.catalog.session() as s:
        index = ChunkIndex(s)
        frame_of = index.frames()
        pods = []
        for pod in queries.list_pods(s):
            ids: set[int] = set()
            raw = 0
            for ck in pod.checkpoints:
                raw += ck.raw_bytes
                ids |= index.chunk_ids(ck.id) if image_sets.in_store(ck) else set()
            stored = sum(ln for _p, _o, ln in {frame_of[i] for i in ids if i in frame_of})
            pods.append({"pod": pod.name, "checkpoints": len(pod.checkpoints), "raw_bytes": raw,
                         "stored_bytes": stored, "dedup_ratio": raw / stored if stored else None})  # fmt: skip
        use = index.usage()
        raw_total = sum(p["raw_bytes"] for p in pods)
        total = {"checkpoints": sum(p["checkpoints"] for p in pods), "raw_bytes": raw_total,
                 "stored_bytes": use["chunk_bytes"], "pack_bytes": use["pack_bytes"], "packs": use["packs"],
                 "chunks": use["chunks"],
                 "dedup_ratio": raw_total / use["chunk_bytes"] if use["chunk_bytes"] else None}  # fmt: skip
    return {"pods": pods, "total": total}


def verify(ctx: Context, ref: str | None) -> dict:
    """Re-hash the chunks of one checkpoint (or all), check snapshots and reference counts;
    every damaged chunk is reported with the checkpoints it affects."""
    with ctx.catalog.session() as s:
        store = image_sets.store(ctx)
        index = ChunkIndex(s)
        targets = [queries.resolve_ref(s, ref)] if ref else list(s.scalars(select(Checkpoint)))
        damage = []
        with store.lock():
            per_ck = {}
            for ck in targets:
                if image_sets.in_store(ck):
                    try:
                        per_ck[ck.id] = index.chunk_ids(ck.id)
                    except ZapError as e:
                        damage.append({"what": f"chunk list of {ck.ref} ({e})", "affects": [ck.ref]})
                elif ck.image_format == convert.OLD_FORMAT:
                    damage.append({"what": f"{ck.ref}: {convert.unconverted(ck)}", "affects": [ck.ref]})
                if not Path(ck.snapshot_path).is_dir():
                    damage.append({"what": f"snapshot {ck.snapshot_path} is missing", "affects": [ck.ref]})
            wanted = set().union(*per_ck.values()) if per_ck else set()
            bad = store.verify_chunks(s, wanted)
            if bad:
                # Damage can hit checkpoints beyond the ones asked about: name them all.
                users: dict[int, list[str]] = defaultdict(list)
                all_cks = {c.id: c for c in s.scalars(select(Checkpoint))}
                for cid, ck in all_cks.items():
                    if image_sets.in_store(ck):
                        try:
                            hit = index.chunk_ids(ck.id) & bad.keys()
                        except ZapError:
                            continue  # its damaged chunk list is reported on its own
                        for i in hit:
                            users[i].append(ck.ref)
                for i, what in sorted(bad.items()):
                    damage.append({"what": f"chunk {i}: {what}", "affects": sorted(users.get(i, []))})
            lists_ok = not any(d["what"].startswith("chunk list") for d in damage)
            if ref is None and lists_ok:  # counting needs every chunk list readable
                for cid, stored, actual in index.recount():
                    damage.append({"what": f"chunk {cid}: reference count {stored}, but {actual} references",
                                   "affects": []})  # fmt: skip
    return {"ok": not damage, "checkpoints_checked": len(targets), "chunks_checked": len(wanted), "damage": damage}
