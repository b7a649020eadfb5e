"""The one-time conversion of image sets written by catalog schema 0001 (one zstd file per image,
with checksums, under $ZAP_HOME/images/<checkpoint-id>/ and a manifest.json) into the store.
Run by the first command after an upgrade; after it, the store is the only format, and this is
the only module that knows the old one.

Each set: decompressed into private staging, ingested (a new fsynced pack), then the chunk rows
and image_format = 'cas' commit together; only then is the old directory deleted. A crash in
between leaves the row in the old format (converted again next time) plus, at worst, an
unrecorded pack, which `zap recover` sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import zstandard

from catalog import Checkpoint, queries
from zapckpt.store import STORE_FORMAT, StoreError
from zapckpt.store.chunkstore import ChunkStore
from zapckpt.system import staging

MANIFEST = "manifest.json"
OLD_FORMAT = "dir"


def _decompress(old: Path, target: Path) -> None:
    try:
        files = json.loads((old / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"image set {old} is damaged or missing ({e.__class__.__name__})") from None
    dctx = zstandard.ZstdDecompressor()
    for f in files:
        name = Path(f["name"]).name  # a manifest names files of its own directory only
        out = target / name
        try:
            with open(old / (name + ".zst"), "rb") as fi, open(out, "xb") as fo:
                dctx.copy_stream(fi, fo)
        except (OSError, zstandard.ZstdError) as e:
            raise StoreError(f"image set {old} is damaged: {name}: {e}") from None
        if out.stat().st_size != f["raw"]:
            raise StoreError(f"image set {old} is damaged: {name} has the wrong size")


def pending(s) -> list[Checkpoint]:
    return queries.checkpoints_in_format(s, OLD_FORMAT)


def convert_old_image_sets(ctx) -> tuple[list[str], list[str]]:
    """Convert every schema-0001 image set; returns (converted refs, failures as one line each).
    A set that cannot be read stays as it is (its checkpoint cannot be restored; `zap verify`
    reports it)."""
    store = ChunkStore(ctx.state.root / "store", hash_name=ctx.store.hash_name)
    done, failed = [], []
    with ctx.catalog.session() as s:
        for ck in pending(s):
            old = Path(ck.image_dir or "")
            try:
                with staging.stage(ctx.state, f"convert-{ck.id}") as target:
                    _decompress(old, target)
                    with store.lock():
                        ingest = store.ingest(s, target)
                        try:
                            ingest.commit(s, ck.id)
                            ck.image_format, ck.image_dir = STORE_FORMAT, None
                            ck.stored_bytes = ingest.stored_bytes
                            s.commit()
                        except BaseException:
                            s.rollback()
                            ingest.discard()
                            raise
            except StoreError as e:
                failed.append(f"{ck.ref}: {e}")
                continue
            shutil.rmtree(old, ignore_errors=True)
            done.append(ck.ref)
    return done, failed


def unconverted(ck: Checkpoint) -> StoreError:
    return StoreError(f"its image set is in the schema-0001 format and could not be converted ({ck.image_dir})")


def remove_old_set(ck: Checkpoint) -> None:
    """For a checkpoint removed while its old set could not be converted."""
    if ck.image_format == OLD_FORMAT and ck.image_dir:
        shutil.rmtree(ck.image_dir, ignore_errors=True)
