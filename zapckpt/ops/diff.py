"""`zap diff REF_A REF_B`: what changed in the files between two checkpoints; `zap diff REF`:
between a checkpoint and the pod's files now (through a read-only snapshot of the live volume,
made for the comparison and deleted after it; an interrupted diff's is deleted by the next
command, see recovery.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from catalog import Pod, queries
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.context import Context
from zapckpt.ops import intents
from zapckpt.system import faults


def _lineage(pod: Pod) -> set[int]:
    """The pod and every pod it was branched from, through their origins."""
    out = set()
    while pod is not None and pod.id not in out:
        out.add(pod.id)
        pod = pod.origin.pod if pod.origin is not None else None
    return out


def diff(ctx: Context, ref_a: str, ref_b: str | None) -> tuple[str, str, object]:
    backend = ctx.pool.backend
    if not backend.capabilities.diff:
        raise ZapError(f"the {backend.name} backend cannot compare checkpoints")
    if ref_b is None:
        return _diff_live(ctx, ref_a)
    with ctx.catalog.session() as s:
        a, b = queries.resolve_ref(s, ref_a), queries.resolve_ref(s, ref_b)
        names = a.ref, b.ref
        # The snapshots of unrelated pods share no history: the file system would compare them by
        # inode numbers that mean nothing to each other. A branch shares its origin's.
        if a.pod_id != b.pod_id and not _lineage(a.pod) & _lineage(b.pod):
            raise UsageError(f"cannot compare {a.ref} with {b.ref}: checkpoints of unrelated pods (a branch can be "
                             f"compared with the pod it came from)")  # fmt: skip
        paths = Path(a.snapshot_path), Path(b.snapshot_path)
    for name, p in zip(names, paths):
        if not p.is_dir():
            raise ZapError(f"checkpoint {name} is damaged: its snapshot {p} is missing")
    return names[0], names[1], backend.diff(*paths)


def _diff_live(ctx: Context, ref: str) -> tuple[str, str, object]:
    """REF against the files of its pod as they are now."""
    backend = ctx.ensure_pool().backend
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        name, volume, snap_a = ck.pod.name, Path(ck.pod.volume), Path(ck.snapshot_path)
    if not snap_a.is_dir():
        raise ZapError(f"checkpoint {ck.ref} is damaged: its snapshot {snap_a} is missing")
    now = ctx.pool.snapshots / f"diff-{uuid.uuid4().hex[:12]}"
    # The pod's lock: a restore must not swap the volume while it is being snapshotted.
    with ctx.pod_lock(name), intents.recorded(ctx, "diff", name, snapshot=str(now)):
        backend.flush(volume)
        backend.snapshot(volume, now)
        faults.point("diff:snapshotted")
        try:
            return ck.ref, f"{name} (now)", backend.diff(snap_a, now)
        finally:
            backend.delete_volume(now)
