"""`zap diff REF_A REF_B`: what changed in the files between two checkpoints."""

from __future__ import annotations

from pathlib import Path

from catalog import queries
from zapckpt.common.errors import ZapError
from zapckpt.context import Context


def diff(ctx: Context, ref_a: str, ref_b: str) -> tuple[str, str, object]:
    backend = ctx.pool.backend
    if not backend.capabilities.diff:
        raise ZapError(f"the {backend.name} backend cannot compare checkpoints")
    with ctx.catalog.session() as s:
        a, b = queries.resolve_ref(s, ref_a), queries.resolve_ref(s, ref_b)
        names = a.ref, b.ref
        paths = Path(a.snapshot_path), Path(b.snapshot_path)
    for name, p in zip(names, paths):
        if not p.is_dir():
            raise ZapError(f"checkpoint {name} is damaged: its snapshot {p} is missing")
    return names[0], names[1], backend.diff(*paths)
