"""`zap log`: a pod's checkpoints as a tree by parent, with the branches made from each
checkpoint hanging under it (recursively)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod, queries
from catalog.fastread import iso
from catalog.queries import list_checkpoints
from zapckpt.pod.lifecycle import live_state


def _label(ck: Checkpoint, head_id: str | None) -> str:
    parts = [ck.ref, iso(ck.created_at)[:19].replace("T", " ") + " UTC"]
    if ck.message:
        parts.append(repr(ck.message))
    if not ck.has_images:
        parts.append("[files only]")
    if ck.id == head_id:
        parts.append("<- current state descends from here")
    return "  ".join(parts)


def render_lineage(s: Session, pod: Pod) -> str:
    lines = [f"{pod.name} ({live_state(pod)})" + (f", branched from {pod.origin.ref}" if pod.origin else "")]
    _render_pod(s, pod, lines, prefix="", roots_parent=pod.origin_checkpoint_id)
    return "\n".join(lines)


def _render_pod(s: Session, pod: Pod, lines: list[str], prefix: str, roots_parent: str | None) -> None:
    cks = list_checkpoints(s, pod)
    ids = {c.id for c in cks}
    children: dict[str | None, list[Checkpoint]] = {}
    for c in cks:
        key = c.parent_id if c.parent_id in ids else None
        children.setdefault(key, []).append(c)
    branches: dict[str, list[Pod]] = {}
    for b in queries.branches_from(s, ids):
        branches.setdefault(b.origin_checkpoint_id, []).append(b)

    def walk(parent: str | None, pre: str) -> None:
        items: list[tuple[str, object]] = [("ck", c) for c in children.get(parent, [])]
        if parent is not None:
            items += [("branch", b) for b in branches.get(parent, [])]
        for i, (kind, obj) in enumerate(items):
            last = i == len(items) - 1
            lines.append(pre + ("└── " if last else "├── ") + (
                _label(obj, pod.head_checkpoint_id) if kind == "ck"
                else f"branch {obj.name} ({live_state(obj)})"))  # fmt: skip
            sub = pre + ("    " if last else "│   ")
            if kind == "ck":
                walk(obj.id, sub)
            else:
                _render_pod(s, obj, lines, sub, obj.origin_checkpoint_id)

    walk(None, prefix)
