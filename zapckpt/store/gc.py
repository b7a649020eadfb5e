"""Giving space back and checking what is kept. Removing a checkpoint only lowers reference
counts (index.release); collect_garbage then forgets unreferenced chunks and rewrites each pack
that held one, copying the frames that still hold a live chunk. verify_chunks re-reads and
re-hashes chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from catalog.chunks import ChunkIndex
from zapckpt.store import StoreError
from zapckpt.store.chunking import HASHES
from zapckpt.store.packs import FrameReader, copy_frames, fsync_dir, new_pack_name

if TYPE_CHECKING:
    from zapckpt.store.layout import StoreLayout


def collect_garbage(store: StoreLayout, s: Session, min_unused: float = 0.0) -> list[str]:
    """Forget unreferenced chunks and rewrite the packs that held them (a rewritten pack goes to
    a remote store before the caller commits). Returns the old packs' names, for the caller to
    delete (store.unpublish) once its transaction has committed.

    With min_unused (restic's --max-unused, the other way round), a pack is rewritten only once
    at least that fraction of it is unused; a pack still mostly in use is left as it is, its
    unreferenced chunks kept (a later ingest of the same page uses them again). Rewriting the
    oldest pack of a continuously recorded pod after every pruned checkpoint would otherwise
    copy most of the store each time."""
    index = ChunkIndex(s)
    old: list[str] = []
    for pack_id, pname, psize in index.packs_with_garbage():
        live = index.live_chunks(pack_id)
        live_bytes = sum(ln for _off, ln in {(off, ln) for _c, off, ln in live})
        if live and psize and psize - live_bytes < min_unused * psize:
            continue
        index.forget_garbage(pack_id)
        if live:
            new_name = new_pack_name()
            new_path = store.pack_path(new_name)
            try:
                with store.fetched(index.pack_digests([pname])):
                    where, digest = copy_frames(store.pack_path(pname), new_path, [(off, ln) for _cid, off, ln in live])
                fsync_dir(store.packs)
                store.publish(new_name)
            except (OSError, StoreError) as e:
                new_path.unlink(missing_ok=True)
                raise StoreError(f"cannot rewrite pack {pname}: {getattr(e, 'strerror', None) or e}") from None
            index.pack_rewritten(pack_id, new_name, live_bytes, [(where[off], cid) for cid, off, _ln in live], digest)
        else:
            index.forget_pack(pack_id)
        old.append(pname)
    return old


def verify_chunks(store: StoreLayout, s: Session, ids: set[int]) -> dict[int, tuple[str | None, str]]:
    """Re-read and re-hash chunks; returns {chunk id: (its pack, or None, what is wrong)} for
    the damaged ones (the reason names no chunk, so that a report can group them by pack)."""
    index = ChunkIndex(s)
    loc = index.locations(ids)
    hashes = index.hashes(ids)
    bad: dict[int, tuple[str | None, str]] = {}
    by_pack: dict[str, list[int]] = {}
    for cid in ids:
        if cid not in loc:
            bad[cid] = (None, "missing from the index")
        else:
            by_pack.setdefault(loc[cid].pack, []).append(cid)
    digests = index.pack_digests(by_pack)
    for pack, cids in by_pack.items():
        reader = FrameReader(store.pack_path)
        try:
            with store.fetched({pack: digests.get(pack)}):  # a remote store's pack: fetched and checked
                if store.pack_path(pack).is_file():
                    reader.open(pack)  # mapped: an eviction later does not pull it away
        except StoreError as e:
            why = "missing from the image store" if "missing from the image store" in str(e) else str(e)
            for cid in cids:
                bad[cid] = (pack, why)
            continue
        if pack not in reader.maps:
            for cid in cids:
                bad[cid] = (pack, "the pack is missing")
            continue
        cached: tuple = (None, None)
        try:
            for cid in sorted(cids, key=lambda c: loc[c].offset):
                c = loc[cid]
                try:
                    frame = cached[1] if cached[0] == c.offset else reader.get(pack, c.offset, c.length, "a frame")
                    cached = (c.offset, frame)
                except StoreError as e:
                    bad[cid] = (pack, str(e).replace(f" in pack {pack}", "").replace(f" of pack {pack}", ""))
                    continue
                chunk = frame[c.start : c.start + c.raw_length]
                if c.start + c.raw_length > len(frame) or HASHES[store.hash_name](chunk).digest() != hashes[cid]:
                    bad[cid] = (pack, "content does not match its hash")
        finally:
            cached = (None, None)
            reader.close()
    return bad
