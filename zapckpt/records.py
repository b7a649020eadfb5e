"""The JSON shape of pods and checkpoints (stable field names, documented in the README)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from catalog.fastread import PodRow, iso
from zapckpt.pod.status import live_state

if TYPE_CHECKING:
    from catalog import Checkpoint, Pod


def _ref(ck: Checkpoint | None) -> str | None:
    return ck.ref if ck is not None else None


def checkpoint_record(ck: Checkpoint) -> dict:
    parent = ck.parent
    return _checkpoint_dict(
        ck.id, ck.pod.name, ck.seq, parent.pod.name if parent else None, parent.seq if parent else None,
        ck.parent_id, iso(ck.created_at), ck.message, ck.kind, ck.image_format, ck.backend, ck.snapshot_path,
        ck.snapshot_generation, ck.raw_bytes, ck.stored_bytes, ck.frozen_ms, ck.dump_ms, ck.fs_snapshot_ms,
        ck.total_ms, ck.predump_ms, ck.processes, ck.tag_names, ck.host.name if ck.host else None, ck.stream_id,
        ck.upload_ms,
    )  # fmt: skip


def checkpoint_row_records(rows: list[tuple]) -> list[dict]:
    """The same records from rows of queries.checkpoint_rows (the fast path of `zap list`); the
    processes of all rows are parsed in one json.loads, not one call per row."""
    procs = json.loads("[" + ",".join(r[20] or "[]" for r in rows) + "]")
    tags = json.loads("[" + ",".join(r[21] or "[]" for r in rows) + "]")
    return [_checkpoint_dict(*r[:20], p, t, *r[22:25]) for r, p, t in zip(rows, procs, tags)]


def _checkpoint_dict(id, pod, seq, parent_pod, parent_seq, parent_id, created_at, message, kind, image_format,
                     backend, snapshot_path, snapshot_generation, raw_bytes, stored_bytes, frozen_ms, dump_ms,
                     fs_snapshot_ms, total_ms, predump_ms, processes, tags, host, stream, upload_ms) -> dict:  # fmt: skip
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
        "timings_ms": {"frozen": frozen_ms, "dump": dump_ms, "fs_snapshot": fs_snapshot_ms, "total": total_ms,
                       "predump": predump_ms, "upload": upload_ms},
        "incremental": predump_ms is not None,
        "processes": processes,
        "tags": tags,
        "host": host,  # the host that took it: its snapshot is there
        "volume_in_store": stream is not None,  # its volume is a send stream in the store: any host can use it
    }


def pod_record(pod: Pod, n_checkpoints: int, here: bool = True) -> dict:
    return pod_row_record(PodRow.of(pod, n_checkpoints, pod.host.name if pod.host else None, here))


def pod_row_record(row: PodRow) -> dict:
    # Another host's processes cannot be looked at from here: its state is what the catalog says.
    state = live_state(row) if row.here else row.desired_state
    if row.restoring and state in ("running", "dead", "stopped"):
        # its memory still comes in (or, a page having failed to, it is being put back as it was)
        state = "restoring"
    return {
        "name": row.name,
        "state": state,
        "pid": row.init_pid if row.here and state in ("running", "restoring", "paused", "frozen") else None,
        "path": row.mount_path,
        "volume": row.volume,
        "command": row.command,
        "env": row.env,
        "cwd": row.cwd,
        "rootfs": row.rootfs,
        "net": row.net,
        "address": row.address,
        "ports": row.ports,
        "volumes": row.volumes,
        "private_tmp": row.private_tmp,
        "host_writable": row.host_writable if not row.rootfs else None,
        "init": row.init,
        "origin": row.origin,
        "head": row.head,
        "checkpoints": row.checkpoints,
        "created_at": row.created_at,
        "suspended": row.suspended,
        "watch": row.watch,
        "limits": {"memory": row.memory_limit, "cpus": row.cpus},
        "restart": {"policy": row.restart, "max": row.restart_max, "count": row.restart_count},
        "exit_code": row.exit_code if state in ("dead", "stopped") else None,
        "exited_at": row.exited_at if state in ("dead", "stopped") else None,
        "host": row.host,
        "note": row.note,
    }
