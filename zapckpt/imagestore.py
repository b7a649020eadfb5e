"""Stored CRIU image sets: each image file zstd-compressed (with frame checksums) under
$ZAP_HOME/images/<checkpoint-id>/, plus a manifest. Written into a temporary directory,
fsynced, then renamed into place, so a half-written set is never referenced."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .errors import ZapError

MANIFEST = "manifest.json"
SKIP = {"dump.log", "restore.log"}


class ImageStoreError(ZapError):
    pass


@dataclass(frozen=True)
class Stored:
    path: Path
    raw_bytes: int
    stored_bytes: int


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ingest(staging: Path, dest: Path, level: int = 3) -> Stored:
    """Compress every image of staging into dest; returns once it is durable."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    files, raw, stored = [], 0, 0
    try:
        for src in sorted(staging.iterdir()):
            if src.name in SKIP or not src.is_file():
                continue
            out = tmp / (src.name + ".zst")
            with open(src, "rb") as fi, open(out, "wb") as fo:
                cctx.copy_stream(fi, fo)
                fo.flush()
                os.fsync(fo.fileno())
            size = src.stat().st_size
            ssize = out.stat().st_size
            files.append({"name": src.name, "raw": size, "stored": ssize})
            raw += size
            stored += ssize
        (tmp / MANIFEST).write_text(json.dumps({"version": 1, "files": files}))
        _fsync_path(tmp / MANIFEST)
        _fsync_path(tmp, directory=True)
        os.rename(tmp, dest)
        _fsync_path(dest.parent, directory=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageStoreError(f"cannot store the image set in {dest.parent}: {e.strerror or e}") from None
    return Stored(dest, raw, stored)


def manifest(dest: Path) -> list[dict]:
    try:
        return json.loads((dest / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise ImageStoreError(f"image set {dest} is damaged or missing ({e.__class__.__name__})") from None


def check(dest: Path) -> None:
    """Cheap pre-flight before a restore: manifest readable, every file there with its size."""
    for f in manifest(dest):
        p = dest / (f["name"] + ".zst")
        if not p.is_file() or p.stat().st_size != f["stored"]:
            raise ImageStoreError(f"image set {dest} is damaged: {f['name']} is missing or truncated")


def materialize(dest: Path, target: Path) -> None:
    """Decompress the set into target (tmpfs); the zstd checksums catch damaged data."""
    target.mkdir(parents=True, exist_ok=True)
    dctx = zstandard.ZstdDecompressor()
    for f in manifest(dest):
        try:
            with open(dest / (f["name"] + ".zst"), "rb") as fi, open(target / f["name"], "wb") as fo:
                dctx.copy_stream(fi, fo)
        except (OSError, zstandard.ZstdError) as e:
            raise ImageStoreError(f"image set {dest} is damaged: {f['name']}: {e}") from None
        if (target / f["name"]).stat().st_size != f["raw"]:
            raise ImageStoreError(f"image set {dest} is damaged: {f['name']} has the wrong size")


def delete(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(dest.with_name(dest.name + ".partial"), ignore_errors=True)
