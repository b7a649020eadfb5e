"""Where one state directory's image store keeps its files, and its lock: what the store's
operations (ingest.py, materialize.py, gc.py) need of it. chunkstore.py puts them together."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zapckpt.system.locks import locked


class StoreLayout:
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
