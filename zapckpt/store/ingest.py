"""Ingest: an image set in a staging directory becomes a new pack plus index rows. The pack is
written and fsynced first (and, for a remote store, uploaded: publish()); the rows go into the
caller's catalog transaction (commit()), so a checkpoint row and its chunks become durable
together, or not at all (discard() removes the pack, here and in the store)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from zapckpt.store import StoreError
from zapckpt.store.chunking import HASHES, pieces, stored_images
from catalog import queries
from catalog.chunks import ChunkIndex, NewChunk
from zapckpt.store.packs import PackWriter, fsync_dir, new_pack_name

if TYPE_CHECKING:
    from zapckpt.store.layout import StoreLayout


@dataclass
class PendingIngest:
    """An image set written to a new pack but not yet in the catalog."""

    store: StoreLayout
    pack_name: str
    pack_size: int
    new_chunks: list[NewChunk]
    files: list[tuple[str, int, list]] = field(default_factory=list)  # name, raw bytes, [id or new hash]
    raw_bytes: int = 0
    stored_bytes: int = 0  # the new frames: what this image set added to the store
    digest: str | None = None  # sha256 of the new pack
    published: bool = False

    def publish(self) -> None:
        """The new pack into a remote store (nothing for a local one): before the commit."""
        if self.new_chunks:
            self.store.publish(self.pack_name)
            self.published = True

    def commit(self, s: Session, checkpoint_id: str) -> None:
        """Index the new chunks and the checkpoint's files; the caller's transaction commits."""
        index = ChunkIndex(s)
        if self.new_chunks:
            queries.keep_store_hash(s, self.store.hash_name)
        new_ids = index.add_pack(self.pack_name, self.pack_size, self.new_chunks, self.digest)
        index.add_files(checkpoint_id, [(name, raw, [r if isinstance(r, int) else new_ids[r] for r in refs])
                                        for name, raw, refs in self.files])  # fmt: skip

    def discard(self) -> bool:
        """Remove the new pack, here and in the store; False if the store cannot be reached now."""
        self.store.pack_path(self.pack_name).unlink(missing_ok=True)
        if self.published:
            try:
                self.store.unpublish([self.pack_name])
            except StoreError:
                return False
        return True


def ingest(store: StoreLayout, s: Session, staging: Path) -> PendingIngest:
    """Chunk, deduplicate and compress the image set in staging into a new, fsynced pack. Call
    with the store lock held, and commit the result in the same lock."""
    store.packs.mkdir(parents=True, exist_ok=True)
    index = ChunkIndex(s)
    name = new_pack_name()
    path = store.pack_path(name)
    pending = PendingIngest(store, name, 0, [])
    seen: set[bytes] = set()
    chunk_hash = HASHES[store.hash_name]
    try:
        with PackWriter(path, digest=store.remote is not None) as pack:
            for img in stored_images(staging):
                size = img.stat().st_size
                with open(img, "rb") as f:
                    # MAP_POPULATE: mapped in one call, not page by page as the hashing touches it
                    # (a third of the hashing's CPU on 64 MiB of pages here)
                    data = memoryview(mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                                prot=mmap.PROT_READ)) if size else memoryview(b"")  # fmt: skip
                # data maps the tmpfs file; it is unmapped with the last view of it. Whole-list
                # steps, not one loop over every page: per-page Python work was a third of the
                # CPU an ingest cost (bench/overhead.py), and most pages are known.
                views = list(pieces(img, data))
                hashes = [chunk_hash(v).digest() for v in views]
                # Only these hashes are looked up: the cost does not grow with the store.
                ids = list(map(index.lookup(hashes).get, hashes))
                refs = [h if cid is None else cid for h, cid in zip(hashes, ids)]
                for i, cid in enumerate(ids):
                    if cid is None and hashes[i] not in seen:
                        seen.add(hashes[i])
                        pack.add(hashes[i], views[i])
                pending.files.append((img.name, size, refs))
                pending.raw_bytes += size
            pending.new_chunks = pack.finish()
            pending.pack_size = pending.stored_bytes = pack.size
            pending.digest = pack.digest
        if not pending.new_chunks:
            path.unlink()
        fsync_dir(store.packs)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise StoreError(f"cannot store the image set in {store.packs}: {e.strerror or e}") from None
    return pending
