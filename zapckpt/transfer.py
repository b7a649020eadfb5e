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
import tarfile
import uuid
from pathlib import Path

import zstandard

from catalog import Checkpoint, Pod, queries

from . import images as image_sets
from . import proc
from .checkpoint import record
from .context import Context
from .net import podnet
from .errors import AlreadyExists, UsageError, ZapError
from .names import check_name
from .records import checkpoint_record

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


def export(ctx: Context, ref: str, dest: str) -> Path:
    _needs_send_stream(ctx, "export")
    out = Path(dest).absolute()
    partial = out.with_name(out.name + ".partial")
    with ctx.catalog.session() as s:
        ck = queries.resolve_ref(s, ref)
        pod = ck.pod
        meta = {
            "format": FORMAT, "version": VERSION, "checkpoint": checkpoint_record(ck),
            "pod": {"name": pod.name, "mount_path": pod.mount_path, "command": pod.command, "env": pod.env,
                    "cwd": pod.cwd, "rootfs": pod.rootfs, "net": pod.net, "private_tmp": pod.private_tmp},
        }  # fmt: skip
        ctx.pool  # snapshots must be mounted
        if not Path(ck.snapshot_path).is_dir():
            raise TransferError(f"checkpoint {ck.ref} is damaged: its snapshot is missing")
        try:
            fo = open(partial, "wb")
        except OSError as e:
            raise TransferError(f"cannot write {out}: {e.strerror}") from None
        stage = ctx.state.staging / f"export-{uuid.uuid4().hex[:8]}"
        send = ctx.state.root / f".export-{uuid.uuid4().hex[:8]}.btrfs"
        try:
            images = stage / "images"
            if ck.has_images:
                image_sets.materialize(ctx, s, ck, images)
            proc.run(["btrfs", "send", "-q", "-f", str(send), ck.snapshot_path])
            with fo, zstandard.ZstdCompressor(level=3, threads=-1, write_checksum=True).stream_writer(fo) as zw:
                with tarfile.open(fileobj=zw, mode="w|") as tar:
                    data = json.dumps(meta, indent=1).encode()
                    info = tarfile.TarInfo(META)
                    info.size = len(data)
                    tar.addfile(info, fileobj=_BytesReader(data))
                    for img in sorted(images.iterdir()) if images.is_dir() else []:
                        tar.add(img, arcname=f"images/{img.name}", recursive=False)
                    tar.add(send, arcname="snapshot.btrfs", recursive=False)
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.rename(partial, out)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise TransferError(f"cannot write {out}: {e.strerror or e}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            send.unlink(missing_ok=True)
    return out


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def _unpack(path: Path, stage: Path) -> dict:
    """Read the whole file into staging; raise a clear error for anything not ours or cut short."""
    meta = None
    try:
        with open(path, "rb") as fi, zstandard.ZstdDecompressor().stream_reader(fi) as zr:
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
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, UnicodeDecodeError) as e:
        if meta is None:
            raise TransferError(f"{path} is not a zapckpt export (or is damaged): {e}") from None
        raise TransferError(f"{path} is truncated or damaged: {e}") from None
    if meta is None:
        raise TransferError(f"{path} is not a zapckpt export")
    if not (stage / "snapshot.btrfs").is_file():
        raise TransferError(f"{path} is truncated: the filesystem snapshot is missing")
    return meta


def import_(ctx: Context, file: str, name: str | None) -> Checkpoint:
    path = Path(file)
    _needs_send_stream(ctx, "import")
    pool = ctx.pool
    stage = Path(ctx.state.root) / f".import-{uuid.uuid4().hex[:8]}"  # on disk: snapshots can be big
    stage.mkdir()
    # btrfs receive needs a directory on the pool, and a received (read-only) subvolume cannot
    # be moved to another directory afterwards: it stays where it was received.
    recv = pool.snapshots / "imported" / uuid.uuid4().hex[:12]
    done = False
    try:
        meta = _unpack(path, stage)
        src = meta["checkpoint"]
        new_name = check_name(name or meta["pod"]["name"])
        with ctx.pod_lock(new_name), ctx.catalog.session() as s:
            if queries.find_pod(s, new_name):
                raise AlreadyExists(f"pod {new_name!r} already exists; choose another with --name")
            recv.mkdir(parents=True)
            try:
                proc.run(["btrfs", "receive", "-q", "-f", str(stage / "snapshot.btrfs"), str(recv)])
            except proc.CommandError as e:
                raise TransferError(f"{path}: the filesystem snapshot cannot be received: {e.reason()}") from None
            (snap,) = list(recv.iterdir())
            ck_id = uuid.uuid4().hex[:12]
            volume = pool.volume_of(new_name)
            store = image_sets.store(ctx)
            pending = None
            try:
                pool.backend.clone(snap, volume)
                p = meta["pod"]
                # The network is this machine's: a pod network gets an address here (ports are
                # not carried over, a host port is a property of the host).
                net = p.get("net") if p.get("net") in podnet.MODES else "host"
                pod = Pod(name=new_name, volume=str(volume), mount_path=p["mount_path"], command=p["command"],
                          env=p["env"], cwd=p["cwd"], rootfs=p.get("rootfs"), desired_state="stopped", net=net,
                          private_tmp=p.get("private_tmp") is True,
                          address=podnet.allocate_address(s, ctx.net) if net == "pod" else None)  # fmt: skip
                s.add(pod)
                s.flush()
                info = pool.backend.describe(snap)
                msg = src["message"] or ""
                note = f"imported from {src['ref']}"
                with store.lock():
                    has_images = (stage / "images").is_dir()
                    if has_images:
                        pending = store.ingest(s, stage / "images")
                    ck = record(
                        s, pod, ck_id, f"{msg} ({note})" if msg else note, src["kind"], pool.backend.name, info,
                        image_format="cas" if has_images else None,
                        before_commit=(lambda: pending.commit(s, ck_id)) if pending else None,
                        raw_bytes=pending.raw_bytes if pending else 0, stored_bytes=pending.stored_bytes if pending else 0,
                        frozen_ms=src["timings_ms"]["frozen"], dump_ms=src["timings_ms"]["dump"],
                        fs_snapshot_ms=src["timings_ms"]["fs_snapshot"], total_ms=src["timings_ms"]["total"],
                        processes=src["processes"],
                    )  # fmt: skip
                done = True
                return ck
            except OSError as e:
                s.rollback()
                if pending:
                    pending.discard()
                pool.backend.delete_volume(volume)
                raise TransferError(f"import of {path} failed: {e.strerror or e}") from None
            except BaseException:
                s.rollback()
                if pending:
                    pending.discard()
                pool.backend.delete_volume(volume)
                raise
    finally:
        if not done and recv.is_dir():
            for leftover in recv.iterdir():
                pool.backend.delete_volume(leftover)
            recv.rmdir()
        shutil.rmtree(stage, ignore_errors=True)
