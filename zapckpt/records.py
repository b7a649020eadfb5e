"""The JSON shape of pods and checkpoints (stable field names, documented in the README)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from catalog import Checkpoint, Pod

from zapckpt.pod.lifecycle import live_state


def _ref(ck: Checkpoint | None) -> str | None:
    return ck.ref if ck is not None else None


def iso(t: datetime) -> str:
    """SQLite drops the zone; everything is stored in UTC."""
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


def checkpoint_record(ck: Checkpoint) -> dict:
    parent = ck.parent
    return _checkpoint_dict(
        ck.id, ck.pod.name, ck.seq, parent.pod.name if parent else None, parent.seq if parent else None,
        ck.parent_id, iso(ck.created_at), ck.message, ck.kind, ck.image_format, ck.backend, ck.snapshot_path,
        ck.snapshot_generation, ck.raw_bytes, ck.stored_bytes, ck.frozen_ms, ck.dump_ms, ck.fs_snapshot_ms,
        ck.total_ms, ck.processes,
    )  # fmt: skip


def checkpoint_row_records(rows: list[tuple]) -> list[dict]:
    """The same records from rows of queries.checkpoint_rows (the fast path of `zap list`); the
    processes of all rows are parsed in one json.loads, not one call per row."""
    procs = json.loads("[" + ",".join(r[19] or "[]" for r in rows) + "]")
    return [_checkpoint_dict(*r[:6], _iso_text(r[6]), *r[7:19], p) for r, p in zip(rows, procs)]


def _iso_text(stored: str) -> str:
    """iso() of a time as SQLite stores it ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), without parsing."""
    if stored.endswith(".000000"):
        stored = stored[:-7]
    return f"{stored[:10]}T{stored[11:]}+00:00"


def _checkpoint_dict(id, pod, seq, parent_pod, parent_seq, parent_id, created_at, message, kind, image_format,
                     backend, snapshot_path, snapshot_generation, raw_bytes, stored_bytes, frozen_ms, dump_ms,
                     fs_snapshot_ms, total_ms, processes) -> dict:  # fmt: skip
    return {
        "id": id,
        "ref": f"{pod}@{seq}",
        "pod": pod,
        "seq": seq,
        "parent": f"{parent_pod}@{parent_seq}" if parent_pod is not None else None,
        "parent_id": parent_id,
        "created_at": created_at,
        "message": message,
        "kind": kind,
        "has_processes": image_format is not None,
        "snapshot": {"backend": backend, "path": snapshot_path, "generation": snapshot_generation},
        "image_format": image_format,
        "raw_bytes": raw_bytes,
        "stored_bytes": stored_bytes,
        "timings_ms": {"frozen": frozen_ms, "dump": dump_ms, "fs_snapshot": fs_snapshot_ms, "total": total_ms},
        "processes": processes,
    }


def pod_record(pod: Pod, n_checkpoints: int) -> dict:
    state = live_state(pod)
    return {
        "name": pod.name,
        "state": state,
        "pid": pod.init_pid if state in ("running", "frozen") else None,
        "path": pod.mount_path,
        "volume": pod.volume,
        "command": pod.command,
        "env": pod.env,
        "cwd": pod.cwd,
        "rootfs": pod.rootfs,
        "net": pod.net,
        "address": pod.address,
        "ports": [dict(p) for p in pod.ports or []],
        "volumes": [dict(v) for v in pod.volumes or []],
        "private_tmp": pod.private_tmp,
        "origin": _ref(pod.origin),
        "head": _ref(pod.head),
        "checkpoints": n_checkpoints,
        "created_at": iso(pod.created_at),
    }
