"""`zap df`: what the checkpoints of each pod take in the image store, after deduplication, and
what the pool (volumes and snapshots: files) takes on its file system."""

from __future__ import annotations

import os

from catalog import queries
from zapckpt.context import Context
from zapckpt.store import imagesets as image_sets
from catalog.chunks import ChunkIndex


def df(ctx: Context) -> dict:
    with ctx.catalog.session() as s:
        index = ChunkIndex(s)
        frame_of = index.frames()
        pods = []
        for pod in queries.list_pods(s):
            ids: set[int] = set()
            raw = 0
            for ck in pod.checkpoints:
                raw += ck.raw_bytes
                ids |= index.chunk_ids(ck.id) if image_sets.in_store(ck) else set()
            stored = sum(ln for _p, _o, ln in {frame_of[i] for i in ids if i in frame_of})
            pods.append({"pod": pod.name, "checkpoints": len(pod.checkpoints), "raw_bytes": raw,
                         "stored_bytes": stored, "dedup_ratio": raw / stored if stored else None})  # fmt: skip
        use = index.usage()
        raw_total = sum(p["raw_bytes"] for p in pods)
        total = {"checkpoints": sum(p["checkpoints"] for p in pods), "raw_bytes": raw_total,
                 "stored_bytes": use["chunk_bytes"], "pack_bytes": use["pack_bytes"], "packs": use["packs"],
                 "chunks": use["chunks"],
                 "dedup_ratio": raw_total / use["chunk_bytes"] if use["chunk_bytes"] else None}  # fmt: skip
    return {"pods": pods, "total": total, "pool": pool_usage(ctx)}


def pool_usage(ctx: Context) -> dict:
    """The pool's file system as statvfs sees it: the files of every volume and snapshot (data
    shared between a volume and its snapshots counted once), and what is left."""
    pool = ctx.ensure_pool()
    st = os.statvfs(pool.path)
    return {"path": str(pool.path), "backend": pool.backend.name, "size_bytes": st.f_blocks * st.f_frsize,
            "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}  # fmt: skip
