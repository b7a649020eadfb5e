"""`zap verify`: re-read and re-hash what the checkpoints need (chunks, snapshots, reference counts)."""

from __future__ import annotations

from collections import defaultdict

from catalog import queries
from catalog import volumes as stream_rows
from zapckpt.common.errors import ZapError
from zapckpt.context import Context
from zapckpt.store import convert
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes
from zapckpt.store.objects import pack_key
from catalog.chunks import ChunkIndex


def verify(ctx: Context, ref: str | None) -> dict:
    """Re-hash the chunks of one checkpoint (or all), check snapshots and reference counts;
    every damaged chunk is reported with the checkpoints it affects."""
    with ctx.catalog.session() as s:
        store = image_sets.store(ctx)
        index = ChunkIndex(s)
        targets = [queries.resolve_ref(s, ref)] if ref else queries.all_checkpoints(s)
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
                snap = volumes.local_snapshot(ctx, ck)
                if ck.host_id in (None, ctx.host_id) and not snap.is_dir():
                    damage.append({"what": f"snapshot {snap} is missing", "affects": [ck.ref]})
            wanted = set().union(*per_ck.values()) if per_ck else set()
            bad = store.verify_chunks(s, wanted)
            if store.remote is not None:
                damage += _remote_damage(ctx, s, store, index, targets, wanted, bad)
            if bad:
                # Damage can hit checkpoints beyond the ones asked about: name them all.
                users: dict[int, list[str]] = defaultdict(list)
                all_cks = {c.id: c for c in queries.all_checkpoints(s)}
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


def _remote_damage(ctx: Context, s, store, index, targets, wanted: set[int], bad: dict) -> list[dict]:
    """What the fleet's store lacks (an object deleted behind zap's back, even where this host
    still has a copy): the packs' chunks count as damaged (reported with the rest, per pack),
    a missing or shortened volume stream damages every checkpoint whose files need it."""
    objects = {name: size for name, size, _t in store.remote.list("")}
    sizes = index.pack_sizes()
    for pack, cids in index.chunks_by_pack(wanted).items():
        size = objects.get(pack_key(pack))
        if size is None or size != sizes.get(pack):
            why = "missing from the image store" if size is None else "shortened in the image store"
            for cid in cids:
                bad.setdefault(cid, (pack, why))
    streams = stream_rows.objects(s)
    broken = {r.id for name, r in streams.items() if objects.get(name) != r.bytes}
    hit: dict[str, list[str]] = defaultdict(list)  # the first broken stream of each checkpoint's chain
    for ck in sorted(targets, key=lambda c: (c.pod.name, c.seq)):
        sid = ck.stream_id
        while sid is not None and (row := stream_rows.get(s, sid)) is not None:
            if row.id in broken:
                hit[row.object].append(ck.ref)
                break
            sid = row.parent_id
    return [{"what": f"volume stream {name} is {'missing from' if name not in objects else 'shortened in'} the "
                     f"image store", "affects": refs} for name, refs in sorted(hit.items())]  # fmt: skip
