"""The image store of one host: where its files are, its lock and its remote store if any
(layout.py), and the store's operations (each implemented in its own module, see
zapckpt/store/__init__.py)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from catalog.chunks import ChunkIndex
from zapckpt.store import gc
from zapckpt.store.ingest import PendingIngest, ingest
from zapckpt.store.layout import StoreLayout
from zapckpt.store.materialize import ImageReader, materialize


class ChunkStore(StoreLayout):
    def ingest(self, s: Session, staging: Path) -> PendingIngest:
        return ingest(self, s, staging)

    def materialize(self, s: Session, checkpoint_id: str, target: Path) -> int:
        return materialize(self, s, checkpoint_id, target)

    def pack_digests(self, s: Session, checkpoint_id: str) -> dict[str, str | None]:
        """The packs holding a checkpoint's chunks, with the sha256 of each."""
        index = ChunkIndex(s)
        return index.pack_digests(index.packs_of(index.chunk_ids(checkpoint_id)))

    def reader(self, s: Session, checkpoint_id: str, name: str) -> ImageReader:
        """Random access to one stored image file, without reassembling the whole set."""
        return ImageReader(self, s, checkpoint_id, name)

    def release(self, s: Session, checkpoint_id: str) -> None:
        ChunkIndex(s).release(checkpoint_id)

    def collect_garbage(self, s: Session, min_unused: float = 0.0) -> list[str]:
        return gc.collect_garbage(self, s, min_unused)

    def verify_chunks(self, s: Session, ids: set[int]) -> dict[int, tuple[str | None, str]]:
        return gc.verify_chunks(self, s, ids)
