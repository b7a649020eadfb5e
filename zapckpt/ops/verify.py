"""`zap verify`: re-read and re-hash what the checkpoints need (chunks, snapshots, reference counts)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sqlalchemy import select

from catalog import Checkpoint, queries
from zapckpt.common.errors import ZapError
from zapckpt.context import Context
from zapckpt.store import convert
from zapckpt.store import imagesets as image_sets
from zapckpt.store.index import ChunkIndex


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
                # One line per damaged pack (and reason), not per chunk: 4 flipped bytes are one problem.
                groups: dict[tuple, list[int]] = defaultdict(list)
                for i, key in sorted(bad.items()):
                    groups[key].append(i)
                for (pack, why), ids in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
                    where = f"pack {pack}" if pack else "the chunk index"
                    what = f"{where}: {len(ids)} chunk(s) damaged ({why})"
                    affects = sorted({r for i in ids for r in users.get(i, [])})
                    damage.append({"what": what, "affects": affects, "chunks": ids})
            lists_ok = not any(d["what"].startswith("chunk list") for d in damage)
            if ref is None and lists_ok:  # counting needs every chunk list readable
                for cid, stored, actual in index.recount():
                    damage.append({"what": f"chunk {cid}: reference count {stored}, but {actual} references",
                                   "affects": []})  # fmt: skip
        hits: dict[str, int] = defaultdict(int)
        for d in damage:
            for r in d["affects"]:
                hits[r] += 1
        per = [{"ref": ck.ref, "ok": not hits[ck.ref], "problems": hits[ck.ref]}
               for ck in sorted(targets, key=lambda c: (c.pod.name, c.seq))]  # fmt: skip
    return {"ok": not damage, "checkpoints_checked": len(targets), "chunks_checked": len(wanted), "damage": damage,
            "checkpoints": per}  # fmt: skip
