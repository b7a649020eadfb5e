"""The catalog queries zap needs, so commands never build SQL themselves."""

from __future__ import annotations

import re
from datetime import datetime

from typing import Iterable

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, selectinload

from zapckpt.common.errors import NotFound, UsageError, unknown_pod

from . import fastread
from .sql import Cursor
from .models import FLEET, Checkpoint, Chunk, Pod, Setting, Tag, Watch


def get_setting(s: Session, host_id: int, key: str) -> str | None:
    """A setting of one host (host_id) or of the fleet (models.FLEET)."""
    row = s.get(Setting, (host_id, key))
    return row.value if row else None


def store_hash(s: Session, new: str) -> str:
    """The hash that names the image store's chunks (the fleet's setting store.hash): `new` for a
    store that holds no chunk yet, sha256 for one made before the setting existed."""
    name = get_setting(s, FLEET, "store.hash")
    if name is None:  # written with the store's first chunks (keep_store_hash), in their transaction
        name = "sha256" if s.scalar(select(Chunk.id).limit(1)) is not None else new
    return name


def keep_store_hash(s: Session, name: str) -> None:
    """Record the hash that names the store's chunks, if not yet (the first ingest does)."""
    if get_setting(s, FLEET, "store.hash") is None:
        set_setting(s, FLEET, "store.hash", name)


def set_setting(s: Session, host_id: int, key: str, value: str) -> None:
    row = s.get(Setting, (host_id, key))
    if row:
        row.value = value
    else:
        s.add(Setting(host_id=host_id, key=key, value=value))


def delete_setting(s: Session, host_id: int, key: str) -> None:
    row = s.get(Setting, (host_id, key))
    if row is not None:
        s.delete(row)


def criu_run_id(s: Session, checkpoint_id: str | None) -> str | None:
    ck = s.get(Checkpoint, checkpoint_id) if checkpoint_id else None
    return ck.criu_run_id if ck else None


def find_pod(s: Session, name: str) -> Pod | None:
    return s.scalars(select(Pod).where(Pod.name == name)).one_or_none()


def get_pod(s: Session, name: str) -> Pod:
    pod = find_pod(s, name)
    if pod is None:
        raise unknown_pod(name)
    return pod


def list_pods(s: Session, host_id: int | None = None) -> list[Pod]:
    """Every pod of the fleet by name, or only those host_id runs."""
    q = select(Pod).order_by(Pod.name)
    if host_id is not None:
        q = q.where(Pod.host_id == host_id)
    return list(s.scalars(q))


def add_pod(s: Session, pod: Pod) -> Pod:
    s.add(pod)
    s.flush()
    return pod


def delete_pod(s: Session, pod: Pod) -> None:
    s.delete(pod)
    s.flush()


def hosts_with_setting(s: Session, key: str, value: str) -> set[int]:
    return set(s.scalars(select(Setting.host_id).where(Setting.key == key, Setting.value == value)))


def pod_addresses(s: Session, host_ids: Iterable[int]) -> set[str]:
    q = select(Pod.address).where(Pod.host_id.in_(list(host_ids)), Pod.address.is_not(None))
    return set(s.scalars(q))


def pod_volumes(s: Session, host_id: int) -> set[str]:
    return set(s.scalars(select(Pod.volume).where(Pod.host_id == host_id)))


def pods_with_restart_policy(s: Session, host_id: int) -> list[str]:
    return list(s.scalars(select(Pod.name).where(Pod.restart != "no", Pod.host_id == host_id).order_by(Pod.name)))


def pods_adopted_from(s: Session, host_name: str) -> list[Pod]:
    """Pods another host adopted from host_name whose copy there is still to be taken down."""
    return list(s.scalars(select(Pod).where(Pod.adopted_from == host_name, Pod.retire_pending).order_by(Pod.name)))


def pods_suspended_by(s: Session, checkpoint_id: str) -> list[str]:
    """The pods `zap resume` would bring back from the checkpoint."""
    return list(s.scalars(select(Pod.name).where(Pod.suspended_by == checkpoint_id).order_by(Pod.name)))


def pods_with_head_in(s: Session, ids: Iterable[str]) -> list[Pod]:
    return list(s.scalars(select(Pod).where(Pod.head_checkpoint_id.in_(list(ids)))))


def branches_from(s: Session, ids: Iterable[str]) -> list[Pod]:
    """Pods whose origin is one of these checkpoints, by name."""
    return list(s.scalars(select(Pod).where(Pod.origin_checkpoint_id.in_(list(ids))).order_by(Pod.name)))


def checkpoint_counts(s: Session) -> dict[int, int]:
    rows = s.execute(select(Checkpoint.pod_id, func.count()).group_by(Checkpoint.pod_id))
    return {pod_id: n for pod_id, n in rows}


def next_seq(s: Session, pod: Pod) -> int:
    """Take the pod's next checkpoint number (never one given out before)."""
    top = s.scalar(select(func.max(Checkpoint.seq)).where(Checkpoint.pod_id == pod.id))
    pod.last_seq = max(pod.last_seq or 0, top or 0) + 1
    return pod.last_seq


def checkpoint_by_id(s: Session, checkpoint_id: str) -> Checkpoint | None:
    return s.get(Checkpoint, checkpoint_id)


def add_checkpoint(s: Session, ck: Checkpoint) -> Checkpoint:
    s.add(ck)
    s.flush()
    return ck


def delete_checkpoint(s: Session, ck: Checkpoint) -> None:
    s.delete(ck)


def all_checkpoints(s: Session) -> list[Checkpoint]:
    return list(s.scalars(select(Checkpoint)))


def checkpoint_parents(s: Session) -> dict[str, str | None]:
    return dict(s.execute(select(Checkpoint.id, Checkpoint.parent_id)).all())


def children_in(s: Session, ids: Iterable[str]) -> list[Checkpoint]:
    """Checkpoints whose parent is one of these."""
    return list(s.scalars(select(Checkpoint).where(Checkpoint.parent_id.in_(list(ids)))))


def snapshot_paths(s: Session, host_id: int) -> set[str]:
    """The snapshots of the checkpoints this host took (paths on it)."""
    return set(s.scalars(select(Checkpoint.snapshot_path).where(Checkpoint.host_id == host_id)))


def checkpoint_ids(s: Session) -> set[str]:
    return set(s.scalars(select(Checkpoint.id)))


def checkpoints_in_format(s: Session, image_format: str) -> list[Checkpoint]:
    return list(s.scalars(select(Checkpoint).where(Checkpoint.image_format == image_format)))


def list_checkpoints(s: Session, pod: Pod | None = None) -> list[Checkpoint]:
    q = select(Checkpoint).options(selectinload(Checkpoint.pod), selectinload(Checkpoint.parent))
    if pod is not None:
        q = q.where(Checkpoint.pod_id == pod.id)
    return list(s.scalars(q.join(Pod, Checkpoint.pod_id == Pod.id).order_by(Pod.name, Checkpoint.seq)))


def checkpoint_rows(s: Session, pod: Pod | None = None) -> list[tuple]:
    """fastread.checkpoint_rows through this session's own connection."""
    return fastread.checkpoint_rows(Cursor.of_session(s), pod.id if pod is not None else None)


def checkpoint_row(s: Session, name: str, seq: int | str | None) -> tuple | None:
    """fastread.checkpoint_row through this session's own connection."""
    return fastread.checkpoint_row(Cursor.of_session(s), name, seq)


# NAME@latest: the newest checkpoint that is not one of zap's own safety copies (kind "auto": the
# state a restore replaced, a failed guard's state), so that after a rollback it is the state the
# pod runs from; a copy counts when the pod runs from it (a rollback undone: `zap restore web@2`),
# and the newest copy when there is nothing else. fastread.checkpoint_row agrees.
def latest_order(head_id: str | None):
    return (and_(Checkpoint.kind == "auto", Checkpoint.id != (head_id or "")), Checkpoint.seq.desc())


REF_FORMS = "NAME@N, NAME@latest, NAME@TAG or a checkpoint id"
_TAG = re.compile(r"[a-z][a-z0-9_.-]{0,62}", re.ASCII)


def bad_ref(ref: str) -> UsageError:
    return UsageError(f"bad checkpoint reference {ref!r}: expected {REF_FORMS}")


def no_checkpoint(ref: str, pod: str | None = None, why: str = "") -> NotFound:
    """The one wording of a reference that names nothing."""
    return NotFound(f"no checkpoint {ref}{f': {why}' if why else ''} (see `zap list{f' {pod}' if pod else ''}`)")


def resolve_ref(s: Session, ref: str) -> Checkpoint:
    """NAME@N, NAME@latest, NAME@TAG, or a catalog id (or a unique prefix of one, at least 4 characters)."""
    if "@" in ref:
        name, _, what = ref.partition("@")
        pod = get_pod(s, name)
        q = select(Checkpoint).where(Checkpoint.pod_id == pod.id)
        if what == "latest":
            ck = s.scalars(q.order_by(*latest_order(pod.head_checkpoint_id)).limit(1)).first()
            if ck is None:
                raise no_checkpoint(ref, name, f"pod {name!r} has none yet")
            return ck
        if not (what.isascii() and what.isdigit() and len(what) <= 9):
            if not _TAG.fullmatch(what):  # what zapckpt.names allows a tag to be
                raise bad_ref(ref)
            ck = s.scalars(q.join(Tag, Tag.checkpoint_id == Checkpoint.id).where(Tag.name == what)).one_or_none()
            if ck is None:
                raise no_checkpoint(ref, name, f"no checkpoint of {name!r} is tagged {what!r}")
            return ck
        ck = s.scalars(q.where(Checkpoint.seq == int(what))).one_or_none()
        if ck is None:
            raise no_checkpoint(ref, name)
        return ck
    ref_l = ref.lower()
    if not 4 <= len(ref_l) <= 32 or not all(c in "0123456789abcdef" for c in ref_l):
        raise bad_ref(ref)
    found = list(s.scalars(select(Checkpoint).where(Checkpoint.id.startswith(ref_l)).limit(2)))
    if not found:
        raise no_checkpoint(ref, why="no checkpoint id starts with it")
    if len(found) > 1:
        raise UsageError(f"checkpoint id prefix {ref!r} is ambiguous; give more characters")
    return found[0]


def branches_of(s: Session, pod: Pod) -> list[Pod]:
    """Pods whose origin is one of pod's checkpoints."""
    q = (
        select(Pod)
        .join(Checkpoint, Pod.origin_checkpoint_id == Checkpoint.id)
        .where(Checkpoint.pod_id == pod.id)
        .order_by(Pod.name)
    )
    return list(s.scalars(q))


def children_of_checkpoint(s: Session, ck: Checkpoint) -> list[Checkpoint]:
    return list(s.scalars(select(Checkpoint).where(Checkpoint.parent_id == ck.id)))


def pods_using_mount_path(s: Session, mount_path: str) -> list[Pod]:
    return list(s.scalars(select(Pod).where(Pod.mount_path == mount_path)))


# --- what the history view lists (plain rows: a listing may hold 10,000 checkpoints) ---------
def pod_names(s: Session) -> list[str]:
    return list(s.scalars(select(Pod.name).order_by(Pod.name)))


def pod_checkpoint_rows(s: Session, pod_name: str) -> list[tuple[int, str, datetime]]:
    """(seq, id, created_at) of a pod's checkpoints, oldest first."""
    q = (select(Checkpoint.seq, Checkpoint.id, Checkpoint.created_at).join(Pod, Checkpoint.pod_id == Pod.id)
         .where(Pod.name == pod_name).order_by(Checkpoint.seq))  # fmt: skip
    return [tuple(r) for r in s.execute(q)]


def pod_tag_rows(s: Session, pod_name: str) -> list[tuple[str, int, datetime]]:
    """(tag, seq, created_at) of a pod's tags, by tag."""
    q = (select(Tag.name, Checkpoint.seq, Checkpoint.created_at).join(Checkpoint, Tag.checkpoint_id == Checkpoint.id)
         .join(Pod, Checkpoint.pod_id == Pod.id).where(Pod.name == pod_name).order_by(Tag.name))  # fmt: skip
    return [tuple(r) for r in s.execute(q)]


def checkpoint_at(s: Session, pod_name: str, seq: int) -> Checkpoint | None:
    q = select(Checkpoint).join(Pod, Checkpoint.pod_id == Pod.id).where(Pod.name == pod_name, Checkpoint.seq == seq)
    return s.scalars(q).one_or_none()


def latest_seq(s: Session, pod_name: str) -> int | None:
    """N of NAME@latest (see latest_order)."""
    pod = find_pod(s, pod_name)
    if pod is None:
        return None
    q = select(Checkpoint.seq).where(Checkpoint.pod_id == pod.id)
    return s.scalar(q.order_by(*latest_order(pod.head_checkpoint_id)).limit(1))


def branch_names(s: Session, checkpoint_id: str, name: str | None = None) -> list[str]:
    """Pods branched from the checkpoint (only `name`, if given)."""
    q = select(Pod.name).where(Pod.origin_checkpoint_id == checkpoint_id)
    if name is not None:
        q = q.where(Pod.name == name)
    return list(s.scalars(q.order_by(Pod.name)))


def watches(s: Session, host_id: int | None = None) -> list[tuple[str, Watch]]:
    """(pod name, watch) of every watched pod (of host_id's pods only, if given)."""
    q = select(Pod.name, Watch).join(Watch, Watch.pod_id == Pod.id).order_by(Pod.name)
    if host_id is not None:
        q = q.where(Pod.host_id == host_id)
    return [tuple(r) for r in s.execute(q)]


def get_watch(s: Session, pod: Pod) -> Watch | None:
    return s.get(Watch, pod.id)


def add_watch(s: Session, watch: Watch) -> Watch:
    s.add(watch)
    s.flush()
    return watch


def delete_watch(s: Session, watch: Watch) -> None:
    s.delete(watch)


# --- tags -------------------------------------------------------------------------------------
def tag_of_pod(s: Session, pod_id: int, name: str) -> Tag | None:
    return s.scalars(select(Tag).where(Tag.pod_id == pod_id, Tag.name == name)).one_or_none()


def tags_of_checkpoint(s: Session, checkpoint_id: str) -> dict[str, Tag]:
    return {t.name: t for t in s.scalars(select(Tag).where(Tag.checkpoint_id == checkpoint_id))}


def add_tag(s: Session, pod_id: int, checkpoint_id: str, name: str) -> None:
    s.add(Tag(pod_id=pod_id, checkpoint_id=checkpoint_id, name=name))


def delete_tag(s: Session, tag: Tag) -> None:
    s.delete(tag)
