"""Image sets in the format of catalog schema 0001 (read-only now): each image file
zstd-compressed (with frame checksums) under $ZAP_HOME/images/<checkpoint-id>/, plus a
manifest. New checkpoints go to the content-addressed store (chunkstore)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import zstandard

from zapckpt.common.errors import ZapError

MANIFEST = "manifest.json"


class ImageStoreError(ZapError):
    pass


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


def read_file(dest: Path, name: str) -> bytes:
    for f in manifest(dest):
        if f["name"] == name:
            try:
                with open(dest / (name + ".zst"), "rb") as fi:
                    data = zstandard.ZstdDecompressor().stream_reader(fi).read()
            except (OSError, zstandard.ZstdError) as e:
                raise ImageStoreError(f"{name}: {e}") from None
            if len(data) != f["raw"]:
                raise ImageStoreError(f"{name} has the wrong size")
            return data
    raise ImageStoreError(f"{name} is not in the image set")


def delete(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(dest.with_name(dest.name + ".partial"), ignore_errors=True)
