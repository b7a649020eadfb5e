"""The JSON shape of pods and checkpoints (stable field names, documented in the README)."""

from __future__ import annotations

from datetime import datetime, timezone

from catalog import Checkpoint, Pod

from .pods import live_state


def _ref(ck: Checkpoint | None) -> str | None:
    return ck.ref if ck is not None else None


def iso(t: datetime) -> str:
    """SQLite drops the zone; everything is stored in UTC."""
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


def checkpoint_record(ck: Checkpoint) -> dict:
    return {
        "id": ck.id,
        "ref": ck.ref,
        "pod": ck.pod.name,
        "seq": ck.seq,
        "parent": _ref(ck.parent),
        "parent_id": ck.parent_id,
        "created_at": iso(ck.created_at),
        "message": ck.message,
        "kind": ck.kind,
        "has_processes": ck.has_images,
        "snapshot": {"backend": ck.backend, "path": ck.snapshot_path, "generation": ck.snapshot_generation},
        "image_format": ck.image_format,
        "raw_bytes": ck.raw_bytes,
        "stored_bytes": ck.stored_bytes,
        "timings_ms": {
            "frozen": ck.frozen_ms,
            "dump": ck.dump_ms,
            "fs_snapshot": ck.fs_snapshot_ms,
            "total": ck.total_ms,
        },
        "processes": ck.processes,
    }


def pod_record(pod: Pod, n_checkpoints: int) -> dict:
    state = live_state(pod)
    return {
        "name": pod.name,
        "state": state,
        "pid": pod.init_pid if state == "running" else None,
        "path": pod.mount_path,
        "volume": pod.volume,
        "command": pod.command,
        "env": pod.env,
        "cwd": pod.cwd,
        "rootfs": pod.rootfs,
        "origin": _ref(pod.origin),
        "head": _ref(pod.head),
        "checkpoints": n_checkpoints,
        "created_at": iso(pod.created_at),
    }
