"""zap mount, umount: the history as a read-only file system."""

from __future__ import annotations

from pathlib import Path

from zapckpt.common.errors import UsageError

from .lazy import lazy
from .output import info

# imported by the command that uses them (cli/lazy.py)
context = lazy("zapckpt.context")
view = lazy("zapckpt.view.mount")


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount every pod, checkpoint and branch as a read-only file system")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--foreground", "-f", action="store_true", help="stay attached; Ctrl-C unmounts")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users read checkpoints' fs/ (never images/); default: root only")  # fmt: skip
    p.add_argument("--ready-fd", type=int, metavar="FD",
                   help="with --foreground: write a line to descriptor FD once the view is mounted (for a "
                   "service manager or a script that starts the view in the background)")  # fmt: skip
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a view mounted by `zap mount`")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--lazy", "-l", action="store_true", help="detach now even if files in it are open")
    p.set_defaults(func=cmd_umount)


def cmd_mount(args) -> int:
    if args.ready_fd is not None and not args.foreground:
        raise UsageError("--ready-fd goes with --foreground (the view in the background says itself when it is mounted)")
    ctx = context.Context()
    if args.foreground:
        if args.ready_fd is None:
            info(f"serving the view at {args.mountpoint}; Ctrl-C unmounts")
        view.serve(ctx, args.mountpoint, args.allow_other, args.ready_fd)
        return 0
    mp, pid, log = view.start_daemon(ctx, args.mountpoint, args.allow_other)
    print(mp)
    info(f"view mounted at {mp} (server pid {pid}, log {log}); `zap umount {mp}` unmounts it")
    return 0


def cmd_umount(args) -> int:
    view.unmount(context.Context(), args.mountpoint, args.lazy)
    print(f"unmounted {args.mountpoint}")
    if args.lazy:
        info("files still open in it stay readable; its server exits once they are closed")
    return 0
