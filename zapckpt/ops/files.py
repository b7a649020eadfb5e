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
from zapckpt.pod.mounts import lstat_under
from zapckpt.store import volumes


def components(path: str) -> list[str]:
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


def open_in_snapshot(root: Path, path: str, directory: bool = False) -> int:
    """A read-only fd of the regular file at path under root (or, with directory, of the
    directory there too), no symlink followed on the way."""
    parts = components(path)
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
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or (directory and stat.S_ISDIR(mode))):
            raise ZapError(f"{path} is not a regular file" + ("" if not directory else " or a directory"))
        return fd
    except BaseException:
        os.close(fd)
        raise


def exists_in_snapshot(root: Path, path: str) -> bool:
    """Whether anything (of any type) is at path under root; no symlink followed on the way."""
    return lstat_under(root, "/".join(components(path))) is not None


def dump(ctx: Context, ref: str, path: str, out) -> int:
    """Write the file at path, as it was at ref, to out (a binary stream); a directory as a tar
    archive of what is in it (as restic's dump does); returns the bytes written."""
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        snap, rel = volumes.ensure_local(ctx, s, ck), _relative(ck.pod, path)
    ctx.pool.backend.ensure_browsable(snap)
    fd = open_in_snapshot(snap, rel, directory=True)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        try:
            return _tar(fd, os.path.basename(rel.rstrip("/")), out)
        finally:
            os.close(fd)
    total = 0
    with open(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
            total += len(chunk)
    out.flush()
    return total


class _Counted:
    def __init__(self, out):
        self.out, self.n = out, 0

    def write(self, b) -> int:
        self.out.write(b)
        self.n += len(b)
        return len(b)


def _tar(dir_fd: int, name: str, out) -> int:
    """A tar stream of the directory at dir_fd as NAME/...: every file type, symlinks as links,
    never followed (tarfile lstat()s as it walks; the snapshot is read-only, so the real path of
    the directory the checked walk reached cannot change under us)."""
    import tarfile

    if getattr(out, "isatty", lambda: False)():
        raise UsageError(f"{name or 'that path'} is a directory: its tar archive is not written to a terminal "
                         f"(redirect it: zap dump REF PATH > files.tar)")  # fmt: skip
    counted = _Counted(out)
    with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(os.readlink(f"/proc/self/fd/{dir_fd}"), arcname=name or ".", recursive=True)
    out.flush()
    return counted.n


def find(ctx: Context, name: str, pattern: str) -> Iterator[dict]:
    """Every file whose name (or path inside the volume) matches pattern, in every checkpoint of
    the pod, oldest first."""
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        cks = [(c.ref, volumes.ensure_local(ctx, s, c)) for c in sorted(pod.checkpoints, key=lambda c: c.seq)]
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


def _open_dir(root: int, parts: list[str], create: bool) -> int:
    """An O_PATH descriptor of the directory root/parts..., no symlink followed (made if create)."""
    fd = os.dup(root)
    for i, name in enumerate(parts):
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
        try:
            nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return -1
        except OSError:
            os.close(fd)
            raise ZapError(f"{'/'.join(parts[: i + 1])} is not a directory (a symlink is not followed)") from None
        os.close(fd)
        fd = nxt
    return fd


def restore_files(ctx: Context, ref: str, paths: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """`zap restore REF --file PATH...` (snapper's undochange): put single files of the pod's live
    volume back as they were at ref, the rest as it is and the pod running. A file that did not
    exist then is deleted; one that did is written anew (contents, mode, owner, times), as is a
    symlink. First, the files as they are now are kept in a files-only checkpoint (returned, with
    what was done to each path). Neither side's symlinks are followed on the way to a file."""
    from zapckpt.ops import intents
    from zapckpt.ops.checkpoint import new_id, snapshot_only

    with ctx.catalog.session() as s:
        name = queries.resolve_ref(s, ref).pod.name
    with ctx.pod_lock(name), ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        pod = ck.pod
        snap, volume = volumes.ensure_local(ctx, s, ck), Path(pod.volume)
        rels = [_relative(pod, p) for p in paths]
        ctx.ensure_pool().backend.ensure_browsable(snap)
        for rel in rels:  # bad paths and symlinked directories refused before anything changes
            for top in (snap, volume):
                root = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    d = _open_dir(root, components(rel)[:-1], create=False)
                finally:
                    os.close(root)
                if d >= 0:
                    os.close(d)
        saved_id = new_id()
        with intents.recorded(ctx, "checkpoint", name, session=s, ck_id=saved_id,
                              snapshot=str(ctx.pool.snapshots / saved_id)):  # fmt: skip
            saved = snapshot_only(ctx, s, pod, f"before restoring {len(rels)} file(s) from {ck.ref}", ck_id=saved_id)
            s.commit()
        saved_ref, done = saved.ref, []
        top_snap = os.open(snap, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        top_live = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for rel in rels:
                done.append((rel, _restore_one(top_snap, top_live, components(rel))))
        finally:
            os.close(top_snap)
            os.close(top_live)
    return saved_ref, done


def _restore_one(top_snap: int, top_live: int, parts: list[str]) -> str:
    where = "/".join(parts)
    src_dir = _open_dir(top_snap, parts[:-1], create=False)
    st = None
    if src_dir >= 0:
        try:
            st = os.lstat(parts[-1], dir_fd=src_dir)
        except FileNotFoundError:
            pass
    dst_dir = _open_dir(top_live, parts[:-1], create=st is not None)
    try:
        if st is None:  # it did not exist then: it goes
            if dst_dir < 0:
                return "absent then and now"
            try:
                if stat.S_ISDIR(os.lstat(parts[-1], dir_fd=dst_dir).st_mode):
                    raise ZapError(f"{where} is a directory now and did not exist then: not deleted (give its files)")
                os.unlink(parts[-1], dir_fd=dst_dir)
            except FileNotFoundError:
                return "absent then and now"
            return "deleted (it did not exist then)"
        if stat.S_ISDIR(st.st_mode):
            raise ZapError(f"{where} is a directory in the checkpoint: give the files in it")
        tmp = f".zap-restore-{os.getpid()}-{parts[-1]}"[:255]
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(parts[-1], dir_fd=src_dir), tmp, dir_fd=dst_dir)
        elif stat.S_ISREG(st.st_mode):
            fd_in = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
            fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dst_dir)  # fmt: skip
            try:
                while os.sendfile(fd_out, fd_in, None, 1 << 24):
                    pass
                os.fchown(fd_out, st.st_uid, st.st_gid)
                os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
                os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(fd_out)
            finally:
                os.close(fd_in)
                os.close(fd_out)
        else:
            raise ZapError(f"{where} is neither a file nor a symlink in the checkpoint")
        try:
            if stat.S_ISDIR(os.lstat(parts[-1], dir_fd=dst_dir).st_mode):
                os.unlink(tmp, dir_fd=dst_dir)
                raise ZapError(f"{where} is a directory now: not replaced by the checkpoint's file")
        except FileNotFoundError:
            pass
        os.rename(tmp, parts[-1], src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        return "restored"
    finally:
        for fd in (src_dir, dst_dir):
            if fd >= 0:
                os.close(fd)
