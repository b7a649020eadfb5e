"""Recovery of interrupted operations (`zap recover`, and before every command that touches pods
or the store).

Each intent record (intents.py) whose owner is gone is finished or undone, newest first (a
restore's own checkpoint of the state it replaces is settled before the restore itself):

- checkpoint: committed (its row exists) -> finished (a --stop dump's processes are ended as
  the checkpoint said); not committed -> its snapshot is deleted and the pod's tasks, if CRIU
  left them stopped, are resumed.
- restore: the target's processes already run (CRIU finished) -> the restore is finished;
  otherwise it is undone: the replaced volume is put back and, if the replaced state was saved
  with its processes, they are restored from that checkpoint. Never two copies.
- branch: committed -> nothing to do; otherwise its processes (if CRIU got that far) are
  killed and its volume and network removed, so a retry with the same name works.
- import: committed -> nothing; otherwise its volume, received snapshot and staging go.

CRIU and the zap that started it: CRIU runs in a session of its own and is NOT stopped when zap
dies (killing it while its parasite code runs inside the pod's tasks could leave them broken);
recovery first waits for any CRIU run of the operation to end (bounded by ZAP_CRIU_TIMEOUT,
then it is killed), then looks at what is really there.

`sweep` finds what no catalog row names (snapshots, volumes, packs, staging, partial imports
and exports) and removes it with repair=True (`zap verify --repair`, `zap recover`).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from catalog import Pod, queries
from catalog import intents as intent_rows
from catalog.chunks import ChunkIndex
from zapckpt.common.errors import ZapError
from zapckpt.criu import runner as criu
from zapckpt.net import podnet
from zapckpt.ops.intents import operations_lock, owner_alive
from zapckpt.store import imagesets as image_sets
from zapckpt.system import procinfo, staging


def _tools_of(marker: str) -> list[int]:
    """Processes (CRIU, its hooks, nsenter around it) whose command line names marker."""
    return procinfo.pids_naming(marker.encode())


def _wait_tools(marker: str | None) -> None:
    if not marker:
        return
    deadline = time.monotonic() + criu.timeout()
    while _tools_of(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _tools_of(marker):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _resume(pod: Pod | None) -> bool:
    """SIGCONT the pod's tasks that a dump left stopped (state T); True if there were any."""
    if pod is None or not procinfo.is_alive(pod.init_pid, pod.init_starttime):
        return False
    stopped = [p for p in procinfo.pids_in_pidns(pod.init_pid) if (st := procinfo.read_stat(p)) and st.state in "Tt"]
    procinfo.signal_all(stopped, signal.SIGCONT)
    return bool(stopped)


def _restored_init(stage: str | None) -> tuple[int, int] | None:
    """The init CRIU restored for this operation, if it finished and the init still runs."""
    if not stage:
        return None
    try:
        pid = int((Path(stage) / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    start = procinfo.starttime(pid)
    return (pid, start) if start and procinfo.is_alive(pid, start) else None


def _remove_stage(stage: str | None) -> None:
    if stage and Path(stage).is_dir():
        shutil.rmtree(stage, ignore_errors=True)


# --- one handler per operation ---------------------------------------------------------------
def _checkpoint(ctx, s, d: dict) -> str:
    _wait_tools(d.get("stage"))
    backend = ctx.pool.backend
    pod = queries.find_pod(s, d["pod"])
    ck = queries.checkpoint_by_id(s, d["ck_id"])
    _remove_stage(d.get("stage"))
    if ck is None:
        if d.get("snapshot"):
            backend.delete_volume(Path(d["snapshot"]))  # tolerates one that was never made
        _drop_uncommitted(ctx, s, d)
        if pod is not None:
            podnet.release_locks(ctx.net, pod)  # a dump that died half-way may have left its lock
        resumed = _resume(pod)
        return "undone (not committed)" + ("; its stopped tasks were resumed" if resumed else "")
    if d.get("stop") and pod is not None:
        # The dump ended the pod: finish that as the checkpoint says.
        if procinfo.is_alive(pod.init_pid, pod.init_starttime):
            if d.get("release"):
                podnet.release_locks(ctx.net, pod, ck.criu_run_id)
                podnet.abort_external(ctx.net, pod)
            procinfo.kill_pod_tree(pod.init_pid)
        pod.desired_state = "stopped"
        pod.net_locked_by = None if d.get("release") else ck.id
    return f"finished ({ck.ref} was committed)"


def _drop_uncommitted(ctx, s, d: dict) -> None:
    """The pack and volume stream an uncommitted checkpoint had put into a remote store."""
    store = image_sets.store(ctx)
    if d.get("pack") and d["pack"] not in ChunkIndex(s).pack_names():
        store.unpublish([d["pack"]])
    if d.get("stream") and store.remote is not None:
        store.remote.delete([d["stream"]])


def _restore(ctx, s, d: dict) -> str:
    from zapckpt.ops.restore import _saved_images
    from zapckpt.ops.revive import restore_processes

    _wait_tools(d.get("stage"))
    backend = ctx.pool.backend
    pod = queries.find_pod(s, d["pod"])
    target = queries.checkpoint_by_id(s, d["ck_id"])
    if pod is None or target is None:
        _remove_stage(d.get("stage"))
        return "nothing to do (the pod or checkpoint is gone)"
    volume, new, old = Path(pod.volume), Path(d["new"]), Path(d["old"])
    saved = queries.checkpoint_by_id(s, d["saved_id"]) if d.get("saved_id") else None
    if d.get("phase") == "storing":
        # The restore was done (every page in); only the state it replaced was left to store.
        _remove_stage(d.get("stage"))
        kept = _store_staged(ctx, s, saved)
        if volume.exists():
            backend.delete_volume(old)
        pod.restoring = False
        return f"finished (restored to {target.ref}{kept})"
    restored = _restored_init(d.get("stage"))
    _remove_stage(d.get("stage"))
    if d.get("phase") == "pages" and procinfo.is_alive(pod.init_pid, pod.init_starttime):
        # It ran while its memory came in, and zap died before every page had: the keeper kills
        # it (criu/lazy.py); so do we, in case the keeper is gone too.
        procinfo.kill_pod_tree(pod.init_pid)
    if restored and d.get("lazy"):
        # A lazy restore is done only once every page is in (phase "storing"): whatever CRIU
        # restored before is killed (by its keeper too), never adopted as the pod.
        procinfo.kill_pod_tree(restored[0])
        restored = None
    if restored and d.get("relock") and procinfo.any_stopped(restored[0]):
        # CRIU finished, but the tasks still wait stopped (for the locks CRIU dropped, or for the
        # keeper of a lazy restore): they are not the state they were, so the restore is undone.
        procinfo.kill_pod_tree(restored[0])
        restored = None
    pod.restoring = False
    if d.get("phase") != "pages" and restored and volume.exists() and not procinfo.is_alive(pod.init_pid, pod.init_starttime):
        # CRIU finished: the target's processes run on the new volume. Finish the restore.
        pod.init_pid, pod.init_starttime = restored
        pod.desired_state = "running"
        pod.head_checkpoint_id = target.id
        pod.net_locked_by = None
        if not d.get("resume"):
            podnet.abort_external(ctx.net, pod)
        for leftover in (old, new):
            backend.delete_volume(leftover)
        return f"finished (restored to {target.ref}{_store_staged(ctx, s, saved)})"
    if restored:
        procinfo.kill_pod_tree(restored[0])  # never two copies
    # Undo: the replaced volume back in place.
    if old.exists():
        if volume.exists():
            backend.delete_volume(volume)
        backend.rename_volume(old, volume)
    backend.delete_volume(new)
    if d.get("phase") != "pages" and procinfo.is_alive(pod.init_pid, pod.init_starttime):
        _resume(pod)
        return "undone (the pod kept running as it was)"
    pod.init_pid = pod.init_starttime = None
    pod.desired_state = "stopped"
    if saved is not None and saved.has_images and not _staged_lost(saved):
        podnet.ensure(s, ctx.net, pod)
        with _saved_images(ctx, s, saved) as prep:
            run = restore_processes(ctx, prep, pod, max(criu.timeout(), criu.DEFAULT_TIMEOUT))
            pod.init_pid, pod.init_starttime = run.pid, run.start
            run.wait()
        pod.desired_state = "running"
        return f"undone (the pod was put back as it was, from {saved.ref}{_store_staged(ctx, s, saved)})"
    return f"undone (the pod stays stopped, as it was{_store_staged(ctx, s, saved)})"


def _staged_lost(saved) -> bool:
    from zapckpt.ops.checkpoint import STAGED

    return saved.image_format == STAGED and not (saved.image_dir and Path(saved.image_dir).is_dir())


def _store_staged(ctx, s, saved) -> str:
    """A restore's saved state still in staging, into the store now (its staging directory is
    removed with the other orphans after recovery); where its images are lost (a reboot emptied
    the tmpfs), the checkpoint keeps its files only. Returns a note for the outcome."""
    from zapckpt.ops.checkpoint import STAGED, store_staged

    if saved is None or saved.image_format != STAGED:
        return ""
    if not _staged_lost(saved):
        try:
            store_staged(ctx, s, saved)
            return f"; the state it replaced is stored as {saved.ref}"
        except ZapError as e:
            why = str(e)
    else:
        why = "its images were lost (the machine restarted?)"
    saved.image_format = saved.image_dir = None
    return f"; {saved.ref} keeps the files of the state it replaced, not its processes: {why}"


def _branch(ctx, s, d: dict) -> str:
    _wait_tools(d.get("stage"))
    restored = _restored_init(d.get("stage"))
    _remove_stage(d.get("stage"))
    pod = queries.find_pod(s, d["pod"])
    if pod is not None and d.get("phase") != "pages":
        return "finished (the branch was committed)"
    if pod is not None:
        # It ran while its memory came in, and zap died before every page had: it goes.
        if procinfo.is_alive(pod.init_pid, pod.init_starttime):
            procinfo.kill_pod_tree(pod.init_pid)
        queries.delete_pod(s, pod)
    if restored:
        procinfo.kill_pod_tree(restored[0])
    podnet.remove(ctx.net, Pod(name=d["pod"], net=d.get("net", "host")))
    ctx.pool.backend.delete_volume(Path(d["volume"]))
    return "undone (the half-made branch was removed)"


def _adopt(ctx, s, d: dict) -> str:
    _wait_tools(d.get("stage"))
    restored = _restored_init(d.get("stage"))
    _remove_stage(d.get("stage"))
    pod = queries.find_pod(s, d["pod"])
    if pod is not None and pod.host_id == ctx.host_id and pod.volume == d["volume"]:
        return "finished (the adoption was committed)"
    if restored:
        procinfo.kill_pod_tree(restored[0])
    podnet.remove(ctx.net, Pod(name=d["pod"], net=d.get("net", "host")))
    ctx.pool.backend.delete_volume(Path(d["volume"]))
    return "undone (the pod stays the lost host's; `zap host adopt` again)"


def _remove(ctx, s, d: dict) -> str:
    """rmckpt/prune commit the rows first, then delete: finish the deleting."""
    backend = ctx.pool.backend
    named = queries.snapshot_paths(s, ctx.host_id)
    for snap in d.get("snapshots", []):
        if snap not in named:
            backend.delete_volume(Path(snap))
    store = image_sets.store(ctx)
    with store.lock():  # freed packs: the files no row names any more
        packs = ChunkIndex(s).pack_names()
        for f in store.packs.iterdir() if store.packs.is_dir() else []:
            if f.name not in packs:
                f.unlink(missing_ok=True)
    return "finished (the removed checkpoints' snapshots and packs are deleted)"


def _import(ctx, s, d: dict) -> str:
    shutil.rmtree(d["stage"], ignore_errors=True)
    if queries.find_pod(s, d["pod"]) is not None:
        return "finished (the import was committed)"
    _drop_uncommitted(ctx, s, d)
    backend = ctx.pool.backend
    backend.delete_volume(Path(d["volume"]))
    recv = Path(d["recv"])
    if recv.is_dir():
        for leftover in recv.iterdir():
            backend.delete_volume(leftover)
        recv.rmdir()
    return "undone (the half-made import was removed)"


def _diff(ctx, s, d: dict) -> str:
    ctx.pool.backend.delete_volume(Path(d["snapshot"]))  # the live volume's snapshot, made for the comparison
    return "finished (its temporary snapshot deleted)"


HANDLERS = {"checkpoint": _checkpoint, "restore": _restore, "branch": _branch, "import": _import, "remove": _remove,
            "diff": _diff, "adopt": _adopt}  # fmt: skip


def recover(ctx) -> list[dict]:
    """Settle every interrupted operation; returns what was done, one entry each."""
    done = []
    with ctx.catalog.session() as s:
        rows = [(r.id, r.pod) for r in intent_rows.of_host(s, ctx.host_id) if not owner_alive(r)]
    for rid, pod in rows:
        with ctx.pod_lock(pod, wait=criu.timeout() + 30, own=False):
            with ctx.catalog.session() as s:
                row = intent_rows.get(s, rid)
                if row is None or owner_alive(row):
                    continue  # settled by another command meanwhile
                if row.op not in HANDLERS:
                    raise ZapError(f"intent record {row.id} names an unknown operation {row.op!r}")
                outcome = HANDLERS[row.op](ctx, s, dict(row.data, pod=row.pod))
                done.append({"op": row.op, "pod": row.pod, "started": row.created_at.isoformat(), "outcome": outcome})
                intent_rows.remove(s, rid)
                s.commit()
    if done:
        staging.remove_orphans(ctx.state)
    return done


def pending(ctx) -> bool:
    """Whether any intent record exists (cheap: one query)."""
    with ctx.catalog.session() as s:
        return intent_rows.pending(s, ctx.host_id)


# --- what no catalog row names ---------------------------------------------------------------
def sweep(ctx, repair: bool) -> list[str]:
    """Objects of this state directory that no catalog row names; removed if repair. Runs
    with no operation in progress (their objects are not recorded yet): it waits for them."""
    with operations_lock(ctx, exclusive=True):
        recover(ctx)  # what an interrupted operation left is settled by its record first
        return _sweep_locked(ctx, repair)


def _remote_orphans(ctx, store) -> list[tuple[str, object]]:
    """Objects of the fleet's store that no row names and no operation in flight (on any host)
    is about to name: looked at with the store to ourselves, so none is being added meanwhile."""
    from catalog import volumes as stream_rows
    from zapckpt.store.objects import PACKS, VOLUMES, pack_key

    with store.lock(exclusive=True), ctx.catalog.session() as s:
        named = {pack_key(p) for p in ChunkIndex(s).pack_names()} | set(stream_rows.objects(s))
        for _op, data in intent_rows.all_data(s):
            named |= {pack_key(data["pack"])} if data.get("pack") else set()
            named |= {data["stream"]} if data.get("stream") else set()
        objects = [n for under in (PACKS, VOLUMES) for n, _size, _t in store.remote.list(under)]
    return [(f"object {store.remote.url.text}/{n}", ("object", n)) for n in sorted(objects) if n not in named]


def _sweep_locked(ctx, repair: bool) -> list[str]:
    found: list[tuple[str, object]] = []
    pool = ctx.pool
    backend = pool.backend
    with ctx.catalog.session() as s:
        # this host's snapshots, and its copies of other hosts' checkpoints (store/volumes.py)
        snaps = queries.snapshot_paths(s, ctx.host_id) | {str(pool.snapshots / i) for i in queries.checkpoint_ids(s)}
        vols = queries.pod_volumes(s, ctx.host_id)
        packs = ChunkIndex(s).pack_names()
    if backend.capabilities.snapshot_dirs:
        for d in sorted(pool.snapshots.iterdir()) if pool.snapshots.is_dir() else []:
            if d.name == "imported":
                for sub in sorted(d.iterdir()):
                    kids = list(sub.iterdir()) if sub.is_dir() else []
                    if not any(str(k) in snaps for k in kids):
                        found.append((f"snapshot {sub}", ("imported", sub)))
            elif str(d) not in snaps:
                found.append((f"snapshot {d}", ("volume", d)))
    for d in sorted(pool.pods.iterdir()) if pool.pods.is_dir() else []:
        if str(d) not in vols:
            found.append((f"volume {d}", ("volume", d)))
    store = image_sets.store(ctx)
    if store.packs.is_dir():
        with store.lock():
            for f in sorted(store.packs.iterdir()):
                if f.name not in packs:
                    found.append((f"pack {f}", ("file", f)))
    if store.remote is not None:
        found += _remote_orphans(ctx, store)
    for d in staging.orphans(ctx.state):
        found.append((f"staging {d}", ("tree", d)))
    for d in sorted(ctx.state.root.glob(".import-*")) + sorted(ctx.state.root.glob(".export-*")):
        found.append((f"partial transfer {d}", ("tree", d)))
    if repair:
        for _, (kind, path) in found:
            if kind == "object":
                store.remote.delete([path])
                continue
            if kind == "volume":
                backend.delete_volume(path)
            elif kind == "imported":
                for k in path.iterdir():
                    backend.delete_volume(k)
                path.rmdir()
            elif kind == "file":
                path.unlink(missing_ok=True)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return [what for what, _ in found]
