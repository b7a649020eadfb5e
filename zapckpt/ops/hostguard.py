"""`zap guard --host [--root DIR] -- CMD`: snapper's apt hook idea for a machine (or a chroot)
whose root is a btrfs subvolume. Files only (the host's processes are not checkpointed).

A read-only snapshot `N-pre` is taken before CMD, `N-post` after it succeeds; on failure the
failed tree is kept as `N-failed` and the root goes back to `N-pre`:
- DIR (a subvolume that is not a mount point, e.g. a chroot): swapped in place, at once;
- the running root `/`: cannot be swapped under the running system, so a writable copy of
  `N-pre` becomes the default subvolume and the rollback completes at the next boot (as
  `snapper rollback` does); zap says so.
Snapshots live in `<root>/.zap-snapshots` for `/` and beside DIR (`.DIR.zap-snapshots`)
otherwise, so a swap never moves them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fsbackend import get_backend
from zapckpt.common import mountinfo, proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.ops.guard import outcome
from zapckpt.system import procinfo


def _say(msg: str) -> None:
    print(f"zap guard: {msg}", file=sys.stderr, flush=True)


def _check_root(root: Path, command: str):
    """The btrfs backend, for a root that is a btrfs subvolume (command: what needs it)."""
    fstype = proc.run(["stat", "-f", "-c", "%T", str(root)]).stdout.strip()
    if fstype != "btrfs":
        raise UsageError(f"the root {root} is on {fstype}, not btrfs: `zap {command}` needs a btrfs root subvolume "
                         "(its snapshots are btrfs snapshots)")  # fmt: skip
    backend = get_backend("btrfs")
    if not backend.is_volume(root):
        raise UsageError(f"{root} is on btrfs but is not a subvolume: it cannot be snapshotted")
    return backend


def _store(root: Path) -> Path:
    return root / ".zap-snapshots" if root == Path("/") else root.parent / f".{root.name}.zap-snapshots"


def _number(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() and "-" in name else None


def _next_number(store: Path) -> int:
    nums = [_number(p.name) or 0 for p in store.iterdir()] if store.is_dir() else []
    return max(nums, default=0) + 1


def host_snapshots(root: str = "/") -> list[dict]:
    """The numbered snapshots of the root, oldest first (snapper's `list`): number, label, when it
    was made (the birth time of the snapshot's top directory), the guarded command (guard's
    N.json), and whether it is the default subvolume a rollback boots into."""
    top = Path(root).resolve()
    backend = _check_root(top, "host-snapshot")
    store = _store(top)
    snaps = sorted((p for p in store.iterdir() if _number(p.name) and p.is_dir() and not p.is_symlink()),
                   key=lambda p: (_number(p.name), p.name)) if store.is_dir() else []  # fmt: skip
    if not snaps:
        return []
    born = proc.run(["stat", "-c", "%W", *map(str, snaps)]).stdout.split()  # birth times: os.stat has none
    ids = backend.subvolume_ids(snaps)
    default = backend.default_subvolume(top)
    out = []
    for i, snap in enumerate(snaps):
        n = _number(snap.name)
        meta = store / f"{n}.json"
        try:
            command = json.loads(meta.read_text())["command"] if meta.is_file() and not meta.is_symlink() else None
        except (OSError, ValueError, KeyError, TypeError):
            command = None
        created = int(born[i]) if i < len(born) and born[i].isdigit() and born[i] != "0" else None
        out.append({"number": n, "label": snap.name.split("-", 1)[1], "path": str(snap),
                    "created_at": None if created is None else
                    datetime.fromtimestamp(created, timezone.utc).isoformat(),
                    "command": command, "default": len(ids) == len(snaps) and ids[i] == default})  # fmt: skip
    return out


def delete_host_snapshots(numbers: list[int], root: str = "/", confirm=None) -> list[str]:
    """Delete every snapshot numbered N (its pre, post, failed... together, as snapper deletes a
    pair), all or none: refused for the default subvolume, which the next boot would use."""
    listed = host_snapshots(root)
    have = {s["number"] for s in listed}
    missing = sorted(set(numbers) - have)
    if missing:
        raise UsageError(f"no host snapshot numbered {', '.join(map(str, missing))} (zap host-snapshot --list)")
    doomed = [s for s in listed if s["number"] in set(numbers)]
    for s in doomed:
        if s["default"]:
            raise ZapError(f"{s['path']} is the default subvolume (the next boot uses it): make another one the "
                           "default first (btrfs subvolume set-default)")  # fmt: skip
    if confirm is not None and len(doomed) > 1:
        confirm(f"delete {len(doomed)} host snapshots ({', '.join(Path(s['path']).name for s in doomed)})?")
    backend = get_backend("btrfs")
    store = _store(Path(root).resolve())
    for s in doomed:
        backend.delete_volume(Path(s["path"]))
    for n in set(numbers):
        meta = store / f"{n}.json"
        if meta.is_file() or meta.is_symlink():
            meta.unlink()
    return [s["path"] for s in doomed]


def _run(root: Path, argv: list[str], timeout: float | None = None) -> int:
    """Run argv on the host, or chrooted in root (with /proc and /dev, in a private mount
    namespace so nothing stays mounted)."""
    if root != Path("/"):
        setup = 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && r="$1" && shift && exec chroot "$r" "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup, "sh", str(root), *argv]
    # the same deepest-first kill as a pod's health check
    return proc.interactive(argv, timeout=timeout, kill=procinfo.kill_tree, what=argv[-1])


def host_snapshot(label: str, root: str = "/") -> str:
    """One numbered read-only snapshot of the root (for apt's DPkg::Pre/Post-Invoke hooks)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,40}", label):
        raise UsageError(f"bad label {label!r}: use a-z 0-9 _ . - (e.g. apt-pre)")
    top = Path(root).resolve()
    backend = _check_root(top, "host-snapshot")
    store = _store(top)
    store.mkdir(exist_ok=True)
    snap = store / f"{_next_number(store)}-{label}"
    backend.snapshot(top, snap)
    return str(snap)


def host_guard(command: list[str], check: str | None, check_timeout: float, root: str = "/") -> tuple[str, str]:
    if not command:
        raise UsageError("no command given: zap guard --host -- CMD [ARGS...]")
    top = Path(root).resolve()
    backend = _check_root(top, "guard --host")
    live_root = top == Path("/") or mountinfo.find(top) is not None
    store = _store(top)
    store.mkdir(exist_ok=True)
    n = _next_number(store)
    what = shlex.join(command)
    pre = store / f"{n}-pre"
    backend.snapshot(top, pre)
    (store / f"{n}.json").write_text(json.dumps({"command": what, "started": time.time()}))
    _say(f"pre snapshot {pre}; running `{what}`" + ("" if top == Path("/") else f" in {top}"))
    failure = outcome(what, lambda argv, timeout=None: _run(top, argv, timeout), command, check, check_timeout)
    if failure is None:
        post = store / f"{n}-post"
        backend.snapshot(top, post)
        _say(f"`{what}` succeeded; post snapshot {post}")
        return str(pre), str(post)
    failed = store / f"{n}-failed"
    backend.snapshot(top, failed)
    if live_root:
        # The running root cannot be swapped: boot into a writable copy of pre next time.
        nxt = store / f"{n}-rollback"
        backend.clone(pre, nxt)
        backend.set_default_subvolume(top, nxt)
        raise ZapError(f"{failure}; the root {top} will be back to {pre} after a reboot (default subvolume "
                       f"{nxt}); the failed state is kept as {failed}")  # fmt: skip
    # A subvolume directory: swap it for a writable copy of pre.
    staged = top.with_name(f".{top.name}.zap-rollback")
    backend.delete_volume(staged)
    try:
        backend.clone(pre, staged)
        old = top.with_name(f".{top.name}.zap-replaced")
        os.rename(top, old)
        os.rename(staged, top)
        backend.delete_volume(old)  # its content is kept as the failed snapshot
    except (OSError, ZapError) as e:
        raise ZapError(f"{failure}, and rolling back to {pre} failed too: {e} (both states are kept: "
                       f"{pre}, {failed})") from None  # fmt: skip
    raise ZapError(f"{failure}; rolled {top} back to {pre}; the failed state is kept as {failed}")
