"""Checkpoints' volumes in a fleet's store, so that any host can rebuild a checkpoint's files.

Each checkpoint's read-only snapshot goes up as a btrfs send stream, zstd-compressed
(`volumes/<id>`), incremental on its parent checkpoint's snapshot when that one's stream is in
the store and its snapshot is still here, full otherwise. The catalog keeps each stream's
sha256 (volume_streams): a host checks what it fetched against it before btrfs reads a byte.

A host without a checkpoint's snapshot (taken elsewhere) receives the chain of streams it lacks,
oldest first, into its pool's snapshots/<id>: a copy it keeps, and that later streams of the
chain are received onto. Receiving is confined (btrfs receive -C, one snapshot of the expected
name, incremental only on the expected parent), under a lock per snapshot, and a copy left
half-received by a zap that died is recognised (not read-only) and received again.

NILFS2 pools keep their checkpoints on the host (no send streams): another host refuses them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from catalog import queries
from catalog import volumes as stream_rows
from zapckpt.common import proc
from zapckpt.common.errors import ZapError
from zapckpt.common.progress import step
from zapckpt.store import StoreError
from zapckpt.store.objects import VOLUMES
from zapckpt.system.locks import locked

ZSTD_SEND = ["zstd", "-q", "-3", "-T2", "-c"]
ZSTD_RECEIVE = ["zstd", "-q", "-d", "-c"]


class _Hashing:
    """A read-only stream that counts and hashes what passes through it (boto3 reads it)."""

    def __init__(self, raw):
        self.raw, self.sha, self.n = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data

    def readable(self) -> bool:
        return True


def wanted(ctx) -> bool:
    """Whether this host's checkpoints put their volumes into the store."""
    return ctx.store.remote is not None and ctx.pool.backend.capabilities.send_stream


def local_snapshot(ctx, ck) -> Path:
    """Where the checkpoint's snapshot is on this host: its own (taken here), or the copy
    received from the store."""
    if ck.host_id is None or ck.host_id == ctx.host_id:
        return Path(ck.snapshot_path)
    return ctx.pool.snapshots / ck.id


def _copy_of(ctx, s, stream_id: str) -> Path:
    ck = queries.checkpoint_by_id(s, stream_id)
    return local_snapshot(ctx, ck) if ck is not None else ctx.pool.snapshots / stream_id


def send(ctx, s, ck_id: str, snap: Path, parent_id: str | None, note: Callable | None = None) -> dict | None:
    """Put the snapshot's stream into the store; returns the volume_streams row's fields (the
    caller adds the row in the checkpoint's transaction), or None if volumes are not kept there.
    Runs after the thaw."""
    if not wanted(ctx) or snap.name != ck_id:
        return None  # (an imported snapshot keeps its exported name: it stays on this host)
    backend = ctx.pool.backend
    parent = None
    if parent_id is not None and stream_rows.get(s, parent_id) is not None:
        p = _copy_of(ctx, s, parent_id)
        if p.is_dir():
            parent = p
    name = VOLUMES + ck_id
    if note is not None:
        note(stream=name)
    step("uploading the volume" + (" (changes since its parent)" if parent else ""))
    try:
        with proc.pipe_from(backend.send_argv(snap, parent), ZSTD_SEND) as out:
            body = _Hashing(out)
            ctx.store.remote.put_stream(name, body)
    except proc.CommandError as e:
        raise StoreError(f"cannot send the volume's snapshot: {e.reason()}") from None
    return {"id": ck_id, "object": name, "parent_id": parent_id if parent is not None else None, "bytes": body.n,
            "digest": body.sha.hexdigest()}  # fmt: skip


def ensure_local(ctx, s, ck) -> Path:
    """The checkpoint's snapshot on this host, received from the store (with the part of its
    chain this host lacks) where it is not here yet."""
    here = local_snapshot(ctx, ck)
    if ck.host_id is None or ck.host_id == ctx.host_id:
        return here  # its own (a NILFS2 snapshot is mounted on demand: the caller makes it browsable)
    if here.is_dir() and _complete(ctx, here):
        return here
    if ck.stream_id is None:
        where = ck.host.name if ck.host else "another host"
        raise ZapError(f"checkpoint {ck.ref} was taken on host {where!r} and its files are not in the fleet's store "
                       f"(a NILFS2 pool, or a store without volumes): restore or branch it there")  # fmt: skip
    chain = []
    sid = ck.stream_id
    while sid is not None:
        row = stream_rows.get(s, sid)
        if row is None:
            raise ZapError(f"checkpoint {ck.ref} cannot be rebuilt here: the stream of {sid} it follows is gone")
        copy = _copy_of(ctx, s, row.id)
        if row.id != ck.stream_id and copy.is_dir() and _complete(ctx, copy):
            break
        chain.append(row)
        sid = row.parent_id
    for row in reversed(chain):
        _receive(ctx, s, row)
    return here


def _complete(ctx, path: Path) -> bool:
    _uuid, _received, readonly = ctx.pool.backend.identity(path)
    return readonly


def _receive(ctx, s, row) -> None:
    backend = ctx.pool.backend
    target = ctx.pool.snapshots / row.id
    with locked(ctx.state.locks / f"receive-{row.id}.lock", f"the snapshot of {row.id}"):
        if target.is_dir():
            if _complete(ctx, target):
                return  # another command received it meanwhile
            backend.delete_volume(target)  # half-received by a zap that died
        parent_uuid = None
        if row.parent_id is not None:
            parent = _copy_of(ctx, s, row.parent_id)
            uuid, received, _ro = backend.identity(parent)
            parent_uuid = received or uuid
        step(f"fetching the files of {row.id} from the store")
        staging = ctx.pool.path / f".fetch-{row.id}-{os.getpid()}"
        staging.mkdir(mode=0o700)
        try:
            blob = staging / "stream.zst"
            ctx.store.remote.get_file(row.object, blob, row.digest)  # checked as it arrives
            try:
                with proc.pipe_from(ZSTD_RECEIVE + [str(blob)], ["btrfs", "receive", "--dump"]) as out:
                    dump = out.read().decode(errors="replace")
                backend.check_stream_dump(dump, row.id, parent_uuid)
                with proc.pipe_into(ZSTD_RECEIVE, backend.receive_argv(ctx.pool.snapshots)) as into, open(blob, "rb") as f:
                    shutil.copyfileobj(f, into, 1 << 20)
            except proc.CommandError as e:
                if target.is_dir():
                    backend.delete_volume(target)
                raise StoreError(f"cannot receive the volume of {row.id}: {e.reason()}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir() or not _complete(ctx, target):
            raise StoreError(f"the volume of {row.id} was not received whole")

