"""`zap tag REF TAG...` / `zap untag REF [TAG...]`: a person's names for checkpoints, as git's
tags: NAME@TAG refers to the checkpoint, `zap prune --keep-tag TAG` keeps it, and the watch's own
pruning never removes a tagged checkpoint. A tag names one checkpoint of its pod; `--force`
moves it from another one. Tags are catalog rows only: nothing of the checkpoint changes."""

from __future__ import annotations

from catalog import queries
from zapckpt.common.errors import AlreadyExists, NotFound
from zapckpt.context import Context
from zapckpt.names import check_tag


def tag(ctx: Context, ref: str, names: list[str], force: bool = False) -> tuple[str, list[str]]:
    """Tag the checkpoint; returns its reference and the tags moved from other checkpoints."""
    for name in names:
        check_tag(name)
    moved = []
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        for name in dict.fromkeys(names):
            have = queries.tag_of_pod(s, ck.pod_id, name)
            if have is not None and have.checkpoint_id == ck.id:
                continue
            if have is not None:
                other = queries.checkpoint_by_id(s, have.checkpoint_id)
                if not force:
                    raise AlreadyExists(f"{ck.pod.name}@{name} is {other.ref} already: `zap untag {other.ref} {name}`, "
                                        f"or --force to move it")  # fmt: skip
                have.checkpoint_id = ck.id
                moved.append(f"{name} (from {other.ref})")
            else:
                queries.add_tag(s, ck.pod_id, ck.id, name)
        return ck.ref, moved


def untag(ctx: Context, ref: str, names: list[str]) -> tuple[str, list[str]]:
    """Remove the tags (all of the checkpoint's without names); returns the reference and the
    tags removed. A name the checkpoint does not carry is an error, and nothing is removed."""
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        have = queries.tags_of_checkpoint(s, ck.id)
        missing = [n for n in names if n not in have]
        if missing:
            raise NotFound(f"{ck.ref} is not tagged {', '.join(map(repr, missing))} (its tags: "
                           f"{', '.join(sorted(have)) or 'none'})")  # fmt: skip
        gone = sorted(set(names) if names else set(have))
        for n in gone:
            queries.delete_tag(s, have[n])
        return ck.ref, gone
