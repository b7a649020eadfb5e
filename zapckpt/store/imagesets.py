"""A checkpoint's CRIU image set as the operations see it: where it is stored (the state
directory's ChunkStore) and how it comes back for CRIU. Old-format sets are converted into the
store on first use after an upgrade (convert.py)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from catalog import Checkpoint
from zapckpt.common.errors import ZapError
from zapckpt.store import STORE_FORMAT, StoreError, convert
from zapckpt.store.chunkstore import ChunkStore


class DamagedImages(ZapError):
    pass


def in_store(ck: Checkpoint) -> bool:
    return ck.image_format == STORE_FORMAT


def store(ctx) -> ChunkStore:
    return ctx.store


def pack_digests(ctx, s: Session, ck: Checkpoint) -> dict[str, str | None]:
    """The packs ck's images need (none where the store is this host's alone: nothing to fetch)."""
    if not in_store(ck) or store(ctx).remote is None:
        return {}
    try:
        return store(ctx).pack_digests(s, ck.id)
    except StoreError:
        return {}  # damage is reported by materialize


def materialize(ctx, s: Session, ck: Checkpoint, target: Path) -> None:
    try:
        if in_store(ck):
            with store(ctx).lock():
                store(ctx).materialize(s, ck.id, target)
        elif ck.image_format == convert.OLD_FORMAT:
            raise convert.unconverted(ck)
        else:
            raise DamagedImages(f"checkpoint {ck.ref} holds files only, no processes")
    except StoreError as e:
        raise DamagedImages(f"checkpoint {ck.ref} cannot be restored: {e}") from None


def page_images(ctx, s: Session, ck: Checkpoint):
    """ck's image set for a lazy restore (store/pages.py): its frames found and checked, its
    packs here (fetched from a remote store) and mapped, nothing reassembled yet."""
    from zapckpt.store.pages import PageImages

    if not in_store(ck):
        return None
    try:
        with store(ctx).lock(), store(ctx).fetched(pack_digests(ctx, s, ck)):
            return PageImages(store(ctx), s, ck.id)
    except StoreError as e:
        raise DamagedImages(f"checkpoint {ck.ref} cannot be restored: {e}") from None
