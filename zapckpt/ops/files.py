"""`zap dump REF PATH` and `zap find NAME PATTERN`: single files of past states, read straight from
the checkpoints' read-only snapshots (as restic's dump and find). A path is walked one component
at a time without following symlinks: a pod's symlink never leads out of its snapshot."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path
from typing import Iterator

from catalog import queries
from zapckpt.common.errors import NotFound, UsageError, ZapError
from zapckpt.context import Context


def _components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"bad path {path!r}: '..' is not allowed (give the path as the pod sees it)")
    if not parts:
        raise UsageError("give a file's path inside the pod's volume (as the pod sees it under its path)")
    return parts


def _relative(pod, path: str) -> str:
    """The path inside the volume: absolute paths under the pod's path are taken relative to it."""
    if path.startswith(pod.mount_path.rstrip("/") + "/"):
        return path[len(pod.mount_path.rstrip("/")) + 1 :]
    return path


def open_in_snapshot(root: Path, path: str) -> int:
    """A read-only fd of the regular file at path under root, no symlink followed on the way."""
    parts = _components(path)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            flags = (os.O_RDONLY if last else os.O_PATH | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                nxt = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"no {'/'.join(parts[: i + 1])} in this checkpoint") from None
            except OSError as e:
                st = os.lstat(name, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=fd)
                    raise ZapError(f"{'/'.join(parts[: i + 1])} is a symlink to {target!r} (not followed)") from None
                raise ZapError(f"cannot open {'/'.join(parts[: i + 1])}: {e.strerror}") from None
            os.close(fd)
            fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ZapError(f"{path} is not a regular file")
        return fd
    except BaseException:
        os.close(fd)
        raise


def dump(ctx: Context, ref: str, path: str, out) -> int:
    """Write the file at path, as it was at ref, to out (a binary stream); returns its size."""
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        snap, rel = Path(ck.snapshot_path), _relative(ck.pod, path)
    ctx.pool.backend.ensure_browsable(snap)
    fd = open_in_snapshot(snap, rel)
    total = 0
    with open(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
            total += len(chunk)
    out.flush()
    return total


def find(ctx: Context, name: str, pattern: str) -> Iterator[dict]:
    """Every file whose name (or path inside the volume) matches pattern, in every checkpoint of
    the pod, oldest first."""
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        cks = [(c.ref, Path(c.snapshot_path)) for c in sorted(pod.checkpoints, key=lambda c: c.seq)]
    backend = ctx.pool.backend
    for ref, snap in cks:
        backend.ensure_browsable(snap)
        for top, dirs, files in os.walk(snap):  # os.walk does not follow symlinks to directories
            for entry in sorted(dirs + files):
                full = os.path.join(top, entry)
                rel = os.path.relpath(full, snap)
                if fnmatch.fnmatchcase(entry, pattern) or fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                    st = os.lstat(full)
                    yield {"ref": ref, "path": rel, "size": st.st_size, "mtime": st.st_mtime,
                           "type": "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode)
                           else "file"}  # fmt: skip
