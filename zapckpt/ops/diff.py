"""`zap diff REF_A REF_B`: what changed in the files between two checkpoints."""

from __future__ import annotations

from pathlib import Path

from catalog import Pod, queries
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.context import Context


def _lineage(pod: Pod) -> set[int]:
    """The pod and every pod it was branched from, through their origins."""
    out = set()
    while pod is not None and pod.id not in out:
        out.add(pod.id)
        pod = pod.origin.pod if pod.origin is not None else None
    return out


def diff(ctx: Context, ref_a: str, ref_b: str) -> tuple[str, str, object]:
    backend = ctx.pool.backend
    if not backend.capabilities.diff:
        raise ZapError(f"the {backend.name} backend cannot compare checkpoints")
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
