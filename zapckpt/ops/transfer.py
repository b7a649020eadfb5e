"""`zap export` / `zap import`: one checkpoint as a single file, for another machine.

The file is a zstd stream holding a tar archive: first `zapckpt-export.json` (format, version,
the checkpoint record and what is needed to run the pod again), then the CRIU image set under
`images/`, then `snapshot.btrfs` (`btrfs send` of the read-only snapshot). Import reads the whole
stream into staging before it changes anything, so a truncated or foreign file changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
from contextlib import ExitStack, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import zstandard

from catalog import Checkpoint, Pod, queries
from fsbackend import BackendError
from zapckpt.common.errors import AlreadyExists, UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.names import check_name
from zapckpt.net import podnet
from zapckpt.ops import intents
from zapckpt.ops.checkpoint import commit_pair
from zapckpt.records import checkpoint_record
from zapckpt.store import imagesets as image_sets
from zapckpt.store import volumes
from zapckpt.system import faults, staging

FORMAT = "zapckpt-export"
VERSION = 1
META = "zapckpt-export.json"


class TransferError(ZapError):
    pass


def _needs_send_stream(ctx: Context, what: str) -> None:
    backend = ctx.pool.backend
    if not backend.capabilities.send_stream:
        raise UsageError(f"{what} needs a btrfs pool (it moves snapshots with btrfs send/receive); "
                         f"this pool is {backend.name}")  # fmt: skip


def export(ctx: Context, ref: str, dest: str, stream=None) -> tuple[Path | None, int]:
    """Write ref's export to the file dest (made whole under a temporary name, then renamed), or
    with dest "-" to the binary stream (a pipe: `zap export web@3 - | ssh host zap import -`);
    returns the file (None for the stream) and the bytes written."""
    _needs_send_stream(ctx, "export")
    to_stream = dest == "-"
    out = Path(dest).absolute()
    try:
        if not to_stream and not stat.S_ISREG(os.lstat(out).st_mode):
            raise TransferError(f"refusing to write the export over {out}: it exists and is not a regular file")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise TransferError(f"cannot write {out}: {e.strerror}") from None
    if to_stream:
        out = Path("standard output")
    with intents.operations_lock(ctx), ctx.catalog.session() as s, ExitStack() as stack:
        ck = queries.resolve_ref(s, ref)
        pod = ck.pod
        meta = {
            "format": FORMAT, "version": VERSION, "checkpoint": checkpoint_record(ck),
            "pod": {"name": pod.name, "mount_path": pod.mount_path, "command": pod.command, "env": pod.env,
                    "cwd": pod.cwd, "rootfs": pod.rootfs, "net": pod.net, "private_tmp": pod.private_tmp,
                    "init": pod.init, "host_writable": pod.host_writable},
        }  # fmt: skip
        ctx.ensure_pool()  # snapshots must be mounted
        snap = volumes.ensure_local(ctx, s, ck)
        if not snap.is_dir():
            raise TransferError(f"checkpoint {ck.ref} is damaged: its snapshot is missing")
        # A new file of our own (0600: it holds the pod's memory), renamed over `out` when whole.
        if to_stream:
            partial, fo = None, _Counting(stream, close=False)
        else:
            try:
                fd, partial_name = tempfile.mkstemp(prefix=".zap-export-", suffix=".partial", dir=out.parent)
            except OSError as e:
                raise TransferError(f"cannot write {out}: {e.strerror}") from None
            partial = Path(partial_name)
            fo = _Counting(os.fdopen(fd, "wb"), close=True)
        send = ctx.state.root / f".export-{uuid.uuid4().hex[:8]}.btrfs"
        try:
            stage = stack.enter_context(staging.stage(ctx.state, "export"))
            images = stage / "images"
            if ck.has_images:
                step("assembling the images")
                image_sets.materialize(ctx, s, ck, images)
            step("reading the snapshot (btrfs send)")
            ctx.pool.backend.send(snap, send)
            step("compressing and writing")
            with fo, zstandard.ZstdCompressor(level=3, threads=-1, write_checksum=True).stream_writer(fo) as zw:
                with tarfile.open(fileobj=zw, mode="w|") as tar:
                    data = json.dumps(meta, indent=1).encode()
                    info = tarfile.TarInfo(META)
                    info.size = len(data)
                    tar.addfile(info, fileobj=_BytesReader(data))
                    for img in sorted(images.iterdir()) if images.is_dir() else []:
                        tar.add(img, arcname=f"images/{img.name}", recursive=False)
                    tar.add(send, arcname="snapshot.btrfs", recursive=False)
            if partial is not None:
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(partial, out)
        except OSError as e:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise TransferError(f"cannot write {out}: {e.strerror or e}") from None
        except BaseException:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise
        finally:
            fo.close()
            send.unlink(missing_ok=True)
    return (None if to_stream else out), fo.written


class _Counting:
    """A binary file that counts what goes through it; closes the file only if it is ours."""

    def __init__(self, f, close: bool):
        self.f, self.own, self.written = f, close, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.written += len(data)
        return n

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if self.own:
            self.f.close()
        else:
            self.f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


KINDS = {"manual", "auto", "pre", "post", "failed", "guard", "watch", "imported"}


def _valid_meta(meta: dict, path: Path) -> dict:
    """The fields an import uses, checked against what an export writes; anything else in the
    file is ignored. Paths are not taken from it (see import_)."""

    def bad(what: str):
        return TransferError(f"{path}: bad metadata ({what}); not importing it")

    def text(v, what: str, most: int = 4096) -> str:
        if not isinstance(v, str) or len(v) > most or "\0" in v:
            raise bad(what)
        return v

    def number(v, what: str) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1e12):
            raise bad(what)
        return float(v)

    pod, ck = meta.get("pod"), meta.get("checkpoint")
    if not isinstance(pod, dict) or not isinstance(ck, dict):
        raise bad("no pod or checkpoint record")
    command = pod.get("command")
    if not isinstance(command, list) or len(command) > 4096:
        raise bad("command")
    env = pod.get("env")
    if not isinstance(env, dict) or len(env) > 4096:
        raise bad("env")
    rootfs = pod.get("rootfs")
    timings = ck.get("timings_ms")
    processes = ck.get("processes") or []
    if not isinstance(timings, dict) or not isinstance(processes, list):
        raise bad("checkpoint record")
    for p in processes:
        if not isinstance(p, dict) or not isinstance(p.get("pid"), int) or not isinstance(p.get("cmdline", []), list):
            raise bad("processes")
    kind = text(ck.get("kind"), "kind", 16)
    return {
        "name": text(pod.get("name"), "pod name", 255),
        "mount_path": text(pod.get("mount_path"), "mount path", 1024),
        "command": [text(a, "command") for a in command],
        "env": {text(k, "env", 255): text(v, "env") for k, v in env.items()},
        "cwd": text(pod.get("cwd"), "cwd"),
        "rootfs": None if rootfs is None else text(rootfs, "rootfs"),
        "net": pod.get("net") if pod.get("net") in podnet.MODES else "host",
        "private_tmp": pod.get("private_tmp") is True,
        "init": pod.get("init") is True,  # archives from before the init: the command is pid 1
        "host_writable": pod.get("host_writable") is not False,  # archives from before: writable
        "ref": text(ck.get("ref"), "ref", 600),
        "message": text(ck.get("message") or "", "message"),
        "kind": kind if kind in KINDS else "manual",
        "timings": {k: number(timings.get(k), "timings") for k in ("frozen", "dump", "fs_snapshot", "total")},
        "processes": processes,
        "created_at": _taken_at(ck.get("created_at")),
    }


def _taken_at(value) -> datetime | None:
    """When the exported checkpoint was taken (UTC), which the import keeps; None if the file
    does not say it in ISO 8601 (the import's time then)."""
    if not isinstance(value, str) or len(value) > 64 or not value.isascii():
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


# Directories under which an imported pod's path is never made (it would create directories
# there on the host): a file naming one gets this state directory's path instead.
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys",
           "/usr")  # fmt: skip


def _mount_path(ctx: Context, wanted: str, orig_name: str) -> str:
    """Where the imported pod's processes see its volume: the original's path (CRIU finds its
    open files there) if it has the shape of one, `<state dir>/mnt/<name>`, outside system
    directories; else this state directory's path for that name (a restore of its processes
    may then fail, its files are all there)."""
    norm = os.path.normpath(wanted) if os.path.isabs(wanted) else ""
    parent = os.path.dirname(norm)
    if (norm == wanted and os.path.basename(norm) == orig_name and os.path.basename(parent) == "mnt"
            and os.path.dirname(parent) != "/" and not any((norm + "/").startswith(d + "/") for d in _SYSTEM)):
        return norm
    return str(ctx.state.mount_path(orig_name))


def _unpack(path: Path, stage: Path, stream=None) -> dict:
    """Read the whole file (or stream, named path in messages) into staging; raise a clear error
    for anything not ours or cut short."""
    meta = None
    try:
        with (open(path, "rb") if stream is None else nullcontext(stream)) as fi, \
                zstandard.ZstdDecompressor().stream_reader(fi, closefd=False) as zr:  # fmt: skip
            with tarfile.open(fileobj=zr, mode="r|") as tar:
                for i, m in enumerate(tar):
                    if i == 0:
                        if m.name != META or not m.isfile():
                            raise TransferError(f"{path} is not a zapckpt export")
                        meta = json.loads(tar.extractfile(m).read())
                        if meta.get("format") != FORMAT:
                            raise TransferError(f"{path} is not a zapckpt export")
                        if meta.get("version") != VERSION:
                            raise TransferError(f"{path} is export version {meta.get('version')}; this zap reads {VERSION}")
                        continue
                    name = Path(m.name)
                    if not m.isfile() or name.is_absolute() or ".." in name.parts:
                        raise TransferError(f"{path} holds an unexpected entry {m.name!r}")
                    if name.parts[0] == "images" and len(name.parts) == 2:
                        target = stage / "images" / name.name
                    elif m.name == "snapshot.btrfs":
                        target = stage / "snapshot.btrfs"
                    else:
                        raise TransferError(f"{path} holds an unexpected entry {m.name!r}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    if target.stat().st_size != m.size:
                        raise TransferError(f"{path} is truncated")
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an export file") from None
    except OSError as e:
        raise TransferError(f"import of {path} failed: {e.strerror or e}") from None
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, UnicodeDecodeError) as e:
        if meta is None:
            raise TransferError(f"{path} is not a zapckpt export (or is damaged): {e}") from None
        raise TransferError(f"{path} is truncated or damaged: {e}") from None
    if meta is None:
        raise TransferError(f"{path} is not a zapckpt export")
    if not (stage / "snapshot.btrfs").is_file():
        raise TransferError(f"{path} is truncated: the filesystem snapshot is missing")
    return meta


def import_(ctx: Context, file: str, name: str | None, stream=None) -> Checkpoint:
    """Import the export file, or with file "-" the binary stream (read whole before anything
    is made, as a file is)."""
    path = Path(file) if file != "-" else Path("standard input")
    stream = stream if file == "-" else None
    _needs_send_stream(ctx, "import")
    pool = ctx.pool
    # Shared with other operations, never with a sweep (which would take the stage for garbage).
    ops = ExitStack()
    ops.enter_context(intents.operations_lock(ctx))
    stage = Path(ctx.state.root) / f".import-{uuid.uuid4().hex[:8]}"  # on disk: snapshots can be big
    stage.mkdir(mode=0o700)
    # btrfs receive needs a directory on the pool, and a received (read-only) subvolume cannot
    # be moved to another directory afterwards: it stays where it was received.
    recv = pool.snapshots / "imported" / uuid.uuid4().hex[:12]
    done = False
    try:
        meta = _valid_meta(_unpack(path, stage, stream), path)
        try:
            orig_name = check_name(meta["name"])
        except UsageError:
            raise TransferError(f"{path}: bad metadata (pod name); not importing it") from None
        new_name = check_name(name or orig_name)
        try:
            pool.backend.check_stream(stage / "snapshot.btrfs")
        except BackendError as e:
            raise TransferError(f"{path}: {e}; not importing it") from None
        with ctx.pod_lock(new_name), ctx.catalog.session() as s:
            if queries.find_pod(s, new_name):
                raise AlreadyExists(f"pod {new_name!r} already exists; choose another with --name")
            ops.enter_context(intents.recorded(ctx, "import", new_name, session=s, volume=str(pool.volume_of(new_name)),
                                               recv=str(recv), stage=str(stage)))  # fmt: skip
            recv.mkdir(parents=True)
            try:
                snap = pool.backend.receive(stage / "snapshot.btrfs", recv)
            except BackendError as e:
                raise TransferError(f"{path}: {e}") from None
            faults.point("import:received")
            ck_id = uuid.uuid4().hex[:12]
            volume = pool.volume_of(new_name)
            try:
                pool.backend.clone(snap, volume)
                # The network is this machine's: a pod network gets an address here (ports are
                # not carried over, a host port is a property of the host). Paths are this
                # state directory's: the processes see the volume where a pod of the original's
                # name would (its restore needs that path, like a branch's).
                net = meta["net"]
                mount_path = _mount_path(ctx, meta["mount_path"], orig_name)
                cwd = os.path.normpath(meta["cwd"]) if os.path.isabs(meta["cwd"]) else "/"
                if not meta["rootfs"] and not (cwd + "/").startswith(mount_path + "/"):
                    cwd = mount_path
                pod = Pod(name=new_name, volume=str(volume), mount_path=mount_path, command=meta["command"],
                          env=meta["env"], cwd=cwd, rootfs=meta["rootfs"], desired_state="stopped", net=net,
                          private_tmp=meta["private_tmp"], init=meta["init"], host_writable=meta["host_writable"],
                          address=podnet.allocate_address(s, ctx.net) if net == "pod" else None,
                          host_id=ctx.host_id)  # fmt: skip
                queries.add_pod(s, pod)
                info = pool.backend.describe(snap)
                msg = meta["message"]
                note = f"imported from {meta['ref']}"
                images = stage / "images"
                ck = commit_pair(
                    ctx, s, pod, ck_id, images if images.is_dir() else None, f"{msg} ({note})" if msg else note,
                    meta["kind"], info, frozen_ms=meta["timings"]["frozen"], dump_ms=meta["timings"]["dump"],
                    fs_snapshot_ms=meta["timings"]["fs_snapshot"], total_ms=meta["timings"]["total"],
                    processes=meta["processes"], **({"created_at": meta["created_at"]} if meta["created_at"] else {}),
                )  # fmt: skip
                done = True
                return ck
            except OSError as e:
                s.rollback()
                pool.backend.delete_volume(volume)
                raise TransferError(f"import of {path} failed: {e.strerror or e}") from None
            except BaseException:
                s.rollback()
                pool.backend.delete_volume(volume)
                raise
    finally:
        if not done and recv.is_dir():
            for leftover in recv.iterdir():
                pool.backend.delete_volume(leftover)
            recv.rmdir()
        shutil.rmtree(stage, ignore_errors=True)
        ops.close()
