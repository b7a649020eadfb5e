"""`zap diff REF_A REF_B`: what changed in the files between two checkpoints; `zap diff REF`:
between a checkpoint and the pod's files now (through a read-only snapshot of the live volume,
made for the comparison and deleted after it; an interrupted diff's is deleted by the next
command, see recovery.py)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from catalog import Pod, queries
from zapckpt.common import proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.context import Context
from zapckpt.ops import intents
from zapckpt.ops.files import open_in_snapshot
from zapckpt.store import volumes
from zapckpt.system import faults


def _lineage(pod: Pod) -> set[int]:
    """The pod and every pod it was branched from, through their origins."""
    out = set()
    while pod is not None and pod.id not in out:
        out.add(pod.id)
        pod = pod.origin.pod if pod.origin is not None else None
    return out


def diff(ctx: Context, ref_a: str, ref_b: str | None, with_trees=None) -> tuple[str, str, object]:
    """The changes from REF_A to REF_B (or to the pod's files now). with_trees(root_a, root_b,
    changes), if given, is called while both trees exist (the live one is deleted after)."""
    backend = ctx.pool.backend
    if not backend.capabilities.diff:
        raise ZapError(f"the {backend.name} backend cannot compare checkpoints")
    if ref_b is None:
        return _diff_live(ctx, ref_a, with_trees)
    with ctx.catalog.session() as s:
        a, b = queries.resolve_ref(s, ref_a), queries.resolve_ref(s, ref_b)
        names = a.ref, b.ref
        # The snapshots of unrelated pods share no history: the file system would compare them by
        # inode numbers that mean nothing to each other. A branch shares its origin's.
        if a.pod_id != b.pod_id and not _lineage(a.pod) & _lineage(b.pod):
            raise UsageError(f"cannot compare {a.ref} with {b.ref}: checkpoints of unrelated pods (a branch can be "
                             f"compared with the pod it came from)")  # fmt: skip
        paths = volumes.ensure_local(ctx, s, a), volumes.ensure_local(ctx, s, b)
    for name, p in zip(names, paths):
        if not p.is_dir():
            raise ZapError(f"checkpoint {name} is damaged: its snapshot {p} is missing")
    changes = backend.diff(*paths)
    if with_trees is not None:
        with_trees(*paths, changes)
    return names[0], names[1], changes


def _diff_live(ctx: Context, ref: str, with_trees=None) -> tuple[str, str, object]:
    """REF against the files of its pod as they are now."""
    backend = ctx.ensure_pool().backend
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        name, volume, snap_a = ck.pod.name, Path(ck.pod.volume), volumes.ensure_local(ctx, s, ck)
    if not snap_a.is_dir():
        raise ZapError(f"checkpoint {ck.ref} is damaged: its snapshot {snap_a} is missing")
    now = ctx.pool.snapshots / f"diff-{uuid.uuid4().hex[:12]}"
    # The pod's lock: a restore must not swap the volume while it is being snapshotted.
    with ctx.pod_lock(name), intents.recorded(ctx, "diff", name, snapshot=str(now)):
        backend.flush(volume)
        backend.snapshot(volume, now)
        faults.point("diff:snapshotted")
        try:
            changes = backend.diff(snap_a, now)
            if with_trees is not None:
                with_trees(snap_a, now, changes)
            return ck.ref, f"{name} (now)", changes
        finally:
            backend.delete_volume(now)


def changed_files(changes, only: list[str]) -> list[tuple[str, str]]:
    """(old path, new path) of each change whose contents may differ, in path order; a renamed
    file's two names. With `only`, the paths equal to or under one of them."""
    if only:
        changes = changes.only(only)
    pairs = [(p, p) for k in ("modified", "added", "deleted", "type_changed") for p in getattr(changes, k)]
    pairs += list(changes.renamed)
    return sorted(pairs, key=lambda ab: ab[1])


def _regular(root: Path, path: str) -> int | None:
    """A read-only fd of the regular file, or None if there is none (missing, a directory, a
    link: nothing to compare line by line). Never follows the pod's symlinks."""
    try:
        return open_in_snapshot(root, path)
    except ZapError:
        return None


def patch(root_a: Path, root_b: Path, pairs: list[tuple[str, str]], names: tuple[str, str]) -> int:
    """GNU `diff -u` of each pair of files, to standard output (binary files are named, not
    printed). Returns how many pairs differed."""
    differed = 0
    for old, new in pairs:
        fa, fb = _regular(root_a, old), _regular(root_b, new)
        try:
            if fa is None and fb is None:
                continue
            args = [f"/dev/fd/{fa}" if fa is not None else "/dev/null", f"/dev/fd/{fb}" if fb is not None else "/dev/null"]
            # a side without the file is /dev/null (as git labels it), not a checkpoint that lacks it
            labels = [f"{names[0]}:{old}" if fa is not None else "/dev/null", f"{names[1]}:{new}" if fb is not None else "/dev/null"]
            sys.stdout.flush()
            rc = proc.interactive(["diff", "-u", "--label", labels[0], "--label", labels[1], *args],
                                  pass_fds=[f for f in (fa, fb) if f is not None])  # fmt: skip
            if rc > 1:
                raise ZapError(f"diff of {new} failed (exit {rc})")
            differed += rc
        finally:
            for f in (fa, fb):
                if f is not None:
                    os.close(f)
    return differed
