"""`zap mount` / `zap umount`: serving the history view, in the foreground or as a daemon.

The mount is one trio nursery inside an AsyncExitStack (as S3QL does it): every part registers
its own teardown, so SIGINT/SIGTERM, an external `umount` and an error all end the same way:
the session closed, the mount gone, the registry entry removed. Mounted views are registered
under $ZAP_HOME/views/ so `zap umount` can wait for the daemon and `zap deinit` can find them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

from zapckpt.common import mountinfo, proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.context import Context

FSTYPE = mountinfo.VIEW_FSTYPE
# The kernel reads a FUSE file 128 KiB at a time, with 128 KiB of read-ahead: one request in
# flight, and a cold sequential read at a third of the disk's speed. A larger window keeps
# several requests (and worker threads) busy: about 2.5x faster measured (docs/fuse-view.md).
READ_AHEAD_KB = 4096
# How long `zap mount` waits for its server to say the view is live (a guest in software
# emulation needs most of a minute just to start Python).
def ready_timeout() -> float:
    return float(os.environ.get("ZAP_MOUNT_TIMEOUT", "120"))

log = logging.getLogger("zapckpt.view")


def _registry(ctx: Context) -> Path:
    return ctx.state.root / "views"


def _entry_path(ctx: Context, mountpoint: Path) -> Path:
    return _registry(ctx) / (hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16] + ".json")


def view_mounts() -> list[str]:
    """Mount points of zap views in this mount namespace."""
    return mountinfo.points(FSTYPE)


def _tune_read_ahead(mp: Path) -> None:
    """Widen the view's read-ahead, once the kernel has its INIT answer (which sets it to the
    128 KiB default): run on a worker thread, whose stat waits for the loop to answer it."""
    os.stat(mp)
    m = mountinfo.find(mp)
    if m is not None and m.fstype == FSTYPE:
        try:
            Path(f"/sys/class/bdi/{m.device}/read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
        except OSError as e:
            log.warning("cannot widen the read-ahead of %s: %s", mp, e)


def _check_mountpoint(mountpoint: Path) -> Path:
    mp = mountpoint.resolve()
    if not mp.is_dir():
        raise UsageError(f"mount point {mountpoint} does not exist or is not a directory")
    if os.path.ismount(mp):
        raise UsageError(f"{mp} is already a mount point" + (" (a zap view: `zap umount` it first)"
                         if str(mp) in view_mounts() else ""))  # fmt: skip
    return mp


# --- serving ---------------------------------------------------------------------------------
def serve(ctx: Context, mountpoint: Path, allow_other: bool, ready_fd: int | None = None) -> None:
    """Mount and serve until unmounted or signalled (the foreground mode, and the daemon's body)."""

    def report(msg: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, (msg + "\n").encode())
            os.close(ready_fd)

    try:
        mp = _check_mountpoint(mountpoint)
        ctx.ensure_pool()  # the snapshots must be there (re-mounted after a reboot)
        import pyfuse3  # noqa: F401 - fails here, reported, if the module is missing
        import trio

        from .fuseops import HistoryOps
        from .tree import HistoryTree
    except (ZapError, ImportError) as e:
        report(f"error {e}")
        raise
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ops = HistoryOps(HistoryTree(ctx, allow_other))
    options = {"fsname=zapckpt", "subtype=zapckpt", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    try:
        trio.run(_serve, ctx, ops, mp, options, report)
    except ZapError as e:
        report(f"error {e}")
        raise


async def _serve(ctx: Context, ops, mp: Path, options: set[str], report) -> None:
    import pyfuse3
    import trio

    async with AsyncExitStack() as stack:
        try:
            pyfuse3.init(ops, str(mp), options)
        except RuntimeError as e:
            raise ZapError(f"cannot mount the view at {mp}: {e}") from None
        stack.callback(pyfuse3.close, unmount=True)
        entry = _entry_path(ctx, mp)
        entry.parent.mkdir(exist_ok=True)
        entry.write_text(json.dumps({"mountpoint": str(mp), "pid": os.getpid()}))
        stack.callback(entry.unlink, missing_ok=True)
        log.info("view of %s mounted at %s (pid %d)", ctx.state.root, mp, os.getpid())
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                    async for sig in signals:
                        log.info("%s: unmounting %s", signal.Signals(sig).name, mp)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(trio.to_thread.run_sync, _tune_read_ahead, mp)
            report("ok")
            await pyfuse3.main()  # returns when the file system is unmounted from outside
            nursery.cancel_scope.cancel()
    log.info("view at %s unmounted", mp)


# --- the daemon ------------------------------------------------------------------------------
def start_daemon(ctx: Context, mountpoint: Path, allow_other: bool) -> tuple[Path, int, Path]:
    """Start `zap mount --foreground` detached; return once the mount is ready (or failed)."""
    mp = _check_mountpoint(mountpoint)
    ctx.ensure_pool()
    log_path = ctx.log_path("view", "mount")
    r, w = os.pipe()
    argv = [sys.executable, "-m", "zapckpt.view.mount", str(w), str(mp), *(["--allow-other"] if allow_other else [])]
    with open(log_path, "ab") as out:
        child = proc.spawn(argv, env=dict(os.environ, ZAP_HOME=str(ctx.state.root)), stdout=out, stderr=out, pass_fds=(w,))
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], ready_timeout())
        msg = os.read(r, 4096).decode(errors="replace").strip() if ready else ""
    finally:
        os.close(r)
    if msg == "ok":
        return mp, child.pid, log_path
    if not ready:
        child.kill()
    child.wait()
    if msg.startswith("error "):
        raise ZapError(msg[6:])
    raise ZapError(f"the view did not mount (see {log_path})")


# --- unmounting ------------------------------------------------------------------------------
def _registered(ctx: Context) -> list[dict]:
    out = []
    for p in sorted(_registry(ctx).glob("*.json")) if _registry(ctx).is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _wait_gone(pid: int, timeout: float) -> bool:
    if pid <= 1:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child (a test's foreground mount): reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def unmount(ctx: Context, mountpoint: Path, lazy: bool = False, timeout: float = 60.0) -> None:
    mp = Path(os.path.abspath(mountpoint))
    if str(mp) not in view_mounts():
        raise UsageError(f"{mountpoint} is not a mounted zap view")
    res = proc.run(["umount", *(["--lazy"] if lazy else []), str(mp)], check=False)
    if res.returncode != 0:
        if "busy" in res.stderr.lower():
            raise ZapError(f"{mp} is busy: a file or directory in it is open (close it, or `zap umount --lazy {mp}`)")
        raise ZapError(f"cannot unmount {mp}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    if lazy:
        return  # the server goes on serving files still open in the detached view, then exits
    # The daemon notices the unmount, closes its session and exits; a branch being made through
    # the view is finished first.
    for e in _registered(ctx):
        if e.get("mountpoint") == str(mp) and not _wait_gone(int(e["pid"]), timeout):
            raise ZapError(f"{mp} is unmounted but its server (pid {e['pid']}) has not exited")


def unmount_all(ctx: Context) -> list[str]:
    """Every view of this state directory (for `zap deinit`): lazily, they must not block it."""
    done = []
    mounted = set(view_mounts())
    for e in _registered(ctx):
        mp = e.get("mountpoint", "")
        if mp in mounted:
            proc.run(["umount", "--lazy", mp], check=False)
            done.append(mp)
        pid = int(e.get("pid") or 0)
        if pid > 1 and not _wait_gone(pid, 10.0):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _entry_path(ctx, Path(mp)).unlink(missing_ok=True)
    return done


def main() -> None:
    """python -m zapckpt.view.mount READY_FD MOUNTPOINT [--allow-other]: the daemon that
    start_daemon() starts (`zap mount --foreground` serves the same in the foreground)."""
    from zapckpt.common.errors import one_line

    ready_fd, mountpoint = int(sys.argv[1]), Path(sys.argv[2])
    try:
        serve(Context(), mountpoint, "--allow-other" in sys.argv[3:], ready_fd)
    except ZapError as e:
        print(f"zap mount: error: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
