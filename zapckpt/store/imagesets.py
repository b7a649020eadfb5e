"""Where a checkpoint's CRIU image set is, whatever format holds it: the content-addressed
store (chunkstore, the default) or, for checkpoints from schema 0001, one zstd file per image
(imagestore)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from catalog import Checkpoint

from zapckpt.store import legacy as imagestore
from zapckpt.store.chunkstore import ChunkStore, StoreError
from zapckpt.common.errors import ZapError


class DamagedImages(ZapError):
    pass


def store(ctx) -> ChunkStore:
    return ChunkStore(ctx.state.root / "store")


def check_legacy(ck: Checkpoint) -> None:
    """Cheap check of a schema-0001 image set (the store's chunks are checked by verify_chunks)."""
    try:
        imagestore.check(Path(ck.image_dir))
    except imagestore.ImageStoreError as e:
        raise DamagedImages(f"checkpoint {ck.ref} is damaged: {e}") from None


def materialize(ctx, s: Session, ck: Checkpoint, target: Path) -> None:
    try:
        if ck.image_format == "cas":
            with store(ctx).lock():
                store(ctx).materialize(s, ck.id, target)
        elif ck.image_format == "dir":
            imagestore.materialize(Path(ck.image_dir), target)
        else:
            raise DamagedImages(f"checkpoint {ck.ref} holds files only, no processes")
    except (StoreError, imagestore.ImageStoreError) as e:
        raise DamagedImages(f"checkpoint {ck.ref} cannot be restored: {e}") from None


def legacy_file(ck: Checkpoint, name: str) -> bytes:
    """One image of a schema-0001 set, decompressed (the FUSE view reads these whole)."""
    try:
        return imagestore.read_file(Path(ck.image_dir), name)
    except imagestore.ImageStoreError as e:
        raise DamagedImages(f"checkpoint {ck.ref}: {e}") from None
