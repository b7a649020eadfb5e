"""Intent rows (zapckpt/ops/intents.py writes them, ops/recovery.py settles them): each host
sees and settles only its own, since the processes, pool and staging they name are there."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from .models import Intent


def _mine(host_id: int):
    # NULL: a row written before hosts existed, by the one host of an embedded catalog
    return or_(Intent.host_id == host_id, Intent.host_id.is_(None))


def add(s: Session, intent_id: str, op: str, pod: str, host_id: int, owner_pid: int, owner_start: int,
        data: dict[str, Any]) -> None:  # fmt: skip
    s.add(Intent(id=intent_id, op=op, pod=pod, host_id=host_id, owner_pid=owner_pid, owner_start=owner_start,
                 data=data))  # fmt: skip


def get(s: Session, intent_id: str) -> Intent | None:
    return s.get(Intent, intent_id)


def set_data(s: Session, intent_id: str, data: dict[str, Any]) -> None:
    row = s.get(Intent, intent_id)
    if row is not None:
        row.data = dict(data)


def set_owner(s: Session, intent_id: str, owner_pid: int, owner_start: int) -> None:
    row = s.get(Intent, intent_id)
    if row is not None:
        row.owner_pid, row.owner_start = owner_pid, owner_start


def remove(s: Session, intent_id: str) -> None:
    row = s.get(Intent, intent_id)
    if row is not None:
        s.delete(row)


def of_host(s: Session, host_id: int) -> list[Intent]:
    """This host's records, newest first."""
    return list(s.scalars(select(Intent).where(_mine(host_id)).order_by(Intent.created_at.desc())))


def pending(s: Session, host_id: int) -> bool:
    return s.scalar(select(Intent.id).where(_mine(host_id)).limit(1)) is not None


def all_data(s: Session) -> list[tuple[str, dict]]:
    """(op, data) of every record of the fleet: what operations in flight anywhere have made."""
    return [(op, data or {}) for op, data in s.execute(select(Intent.op, Intent.data))]
