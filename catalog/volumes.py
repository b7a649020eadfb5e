"""The volume_streams rows (zapckpt/store/volumes.py puts the streams in the store): one per
checkpoint whose volume went up, kept while a checkpoint names it or a later stream is
incremental on it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Checkpoint, VolumeStream


def get(s: Session, stream_id: str) -> VolumeStream | None:
    return s.get(VolumeStream, stream_id)


def add(s: Session, fields: dict) -> VolumeStream:
    row = VolumeStream(**fields)
    s.add(row)
    return row


def collect(s: Session) -> list[str]:
    """Forget the streams nothing needs any more (no checkpoint names one, no stream follows it),
    repeatedly down each chain; returns their objects, to delete once the caller has committed."""
    gone: list[str] = []
    while True:
        named = select(Checkpoint.stream_id).where(Checkpoint.stream_id.is_not(None))
        followed = select(VolumeStream.parent_id).where(VolumeStream.parent_id.is_not(None))
        rows = list(s.scalars(select(VolumeStream).where(VolumeStream.id.not_in(named), VolumeStream.id.not_in(followed))))
        if not rows:
            return gone
        for r in rows:
            gone.append(r.object)
            s.delete(r)
        s.flush()


def objects(s: Session) -> dict[str, VolumeStream]:
    """Every stream by its object's name."""
    return {r.object: r for r in s.scalars(select(VolumeStream))}
