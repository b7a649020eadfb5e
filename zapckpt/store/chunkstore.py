"""The image store of one state directory: its pack directory and its lock, and the store's
operations (each implemented in its own module, see zapckpt/store/__init__.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy.orm import Session

from zapckpt.store import gc
from zapckpt.store.index import ChunkIndex
from zapckpt.store.ingest import PendingIngest, ingest
from zapckpt.store.materialize import ImageReader, materialize
from zapckpt.system.locks import locked


class ChunkStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.packs = self.root / "packs"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Ingest, release and garbage collection change shared chunks: one at a time."""
        with locked(self.root / "store.lock", "the image store"):
            yield

    def pack_path(self, name: str) -> Path:
        return self.packs / name

    def ingest(self, s: Session, staging: Path) -> PendingIngest:
        return ingest(self, s, staging)

    def materialize(self, s: Session, checkpoint_id: str, target: Path) -> int:
        return materialize(self, s, checkpoint_id, target)

    def reader(self, s: Session, checkpoint_id: str, name: str) -> ImageReader:
        """Random access to one stored image file, without reassembling the whole set."""
        return ImageReader(self, s, checkpoint_id, name)

    def release(self, s: Session, checkpoint_id: str) -> None:
        ChunkIndex(s).release(checkpoint_id)

    def collect_garbage(self, s: Session, min_unused: float = 0.0) -> list[Path]:
        return gc.collect_garbage(self, s, min_unused)

    def verify_chunks(self, s: Session, ids: set[int]) -> dict[int, str]:
        return gc.verify_chunks(self, s, ids)
