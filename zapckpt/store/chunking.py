"""How an image file is cut into chunks. Page data (pages-*.img) is cut into page-sized chunks
along the runs of its pagemap (runs are page-aligned, so a chunk never straddles two runs);
every other image is one chunk. A chunk is identified by a cryptographic hash of its content:
BLAKE3 in a store made since issue 25 (a third less CPU than sha256 on 4 KiB pages here),
sha256 in an older one; the store's setting says which (store.hash, StoreLayout.hash_name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
from typing import Iterable, Iterator

from zapckpt.criu.images import PAGE_SIZE, ImageFormatError, read_pagemap

CHUNK_PAGES = 1
SKIP = {"dump.log", "restore.log"}  # CRIU's logs are not part of the image set

HASHES = {"sha256": hashlib.sha256, "blake3": blake3.blake3}
NEW_STORES = "blake3"


def stored_images(staging: Path) -> list[Path]:
    """The files of an image set that the store keeps, in a stable order."""
    return [p for p in sorted(staging.iterdir()) if p.name not in SKIP and p.is_file()]


def pieces(path: Path, data: memoryview) -> Iterator[memoryview]:
    """The chunks of one image file, in order."""
    if path.name.startswith("pages-") and len(data) % PAGE_SIZE == 0:
        step = CHUNK_PAGES * PAGE_SIZE
        pm = path.with_name(path.name.replace("pages-", "pagemap-", 1))
        runs: Iterable[tuple[int, int]] = [(0, len(data))]
        try:
            pagemap = read_pagemap(pm) if pm.exists() else None
            if pagemap is not None and sum(n for _, n, _ in pagemap.page_runs()) == len(data):
                runs = [(off, n) for off, n, _ in pagemap.page_runs()]
        except (OSError, ImageFormatError):
            pass  # the pagemap belongs to another pages file: cut at plain page boundaries
        for off, n in runs:
            end = off + n
            whole = end - (n % step)
            yield from [data[o : o + step] for o in range(off, whole, step)]
            if whole < end:
                yield data[whole:end]
    elif len(data):
        yield data
