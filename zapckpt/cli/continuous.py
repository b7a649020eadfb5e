"""zap watch, unwatch, suspend, resume: continuous checkpoints and pods that outlive a reboot."""

from __future__ import annotations

from . import argtypes
from .lazy import lazy
from .output import emit_json, info, interval, table

# imported by the command that uses them (cli/lazy.py)
context = lazy("zapckpt.context")
watch_op = lazy("zapckpt.ops.watch")
suspend_op = lazy("zapckpt.ops.suspend")
restart_op = lazy("zapckpt.ops.restart")
errors = lazy("zapckpt.common.errors")


def register(sub) -> None:
    p = sub.add_parser("watch", help="checkpoint a pod every DURATION from now on (or --list the watches)")
    p.add_argument("name", nargs="?")
    p.add_argument("--every", type=argtypes.interval, metavar="DURATION", help="10s, 5m, 1h ... (at least 1s)")
    p.add_argument("--keep-last", type=argtypes.count, metavar="N", help="keep the N newest watch checkpoints")
    p.add_argument("--keep-hourly", type=argtypes.count, metavar="N", help="and the newest of each of the last N hours")
    p.add_argument("--keep-daily", type=argtypes.count, metavar="N", help="and the newest of each of the last N days")
    p.add_argument("--list", action="store_true", help="list the watches and the supervisor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("unwatch", help="stop checkpointing a pod (its checkpoints stay)")
    p.add_argument("name")
    p.set_defaults(func=cmd_unwatch)

    # The supervisor itself: started by `zap watch`, or by scripts/systemd/zapckpt-watch.service.
    p = sub.add_parser("watch-serve")
    p.set_defaults(func=cmd_watch_serve)

    for verb, what in (("suspend", "checkpoint and stop pods, to resume them after a reboot"),
                       ("resume", "restore suspended pods")):  # fmt: skip
        p = sub.add_parser(verb, help=what)
        p.add_argument("names", nargs="*", metavar="NAME")
        p.add_argument("--all", action="store_true", help="every running pod" if verb == "suspend" else "every suspended pod")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_suspend if verb == "suspend" else cmd_resume)


def cmd_watch(args) -> int:
    ctx = context.Context()
    if args.list:
        if args.name or args.every or any(k is not None for k in (args.keep_last, args.keep_hourly, args.keep_daily)):
            raise errors.UsageError("--list takes no pod or policy")
        watches = watch_op.list_watches(ctx)
        pid = watch_op.supervisor_pid(ctx)
        if (watches or restart_op.with_policies(ctx)) and pid is None:
            pid = watch_op.ensure_supervisor(ctx)
            info(f"the supervisor was not running: started (pid {pid})")
        if args.json:
            emit_json({"supervisor": {"pid": pid, "log": str(watch_op.log_path(ctx))}, "watches": watches})
            return 0
        rows = [[w["pod"], interval(w["every_s"]), _keep(w["keep"]), w["taken"], w["skipped"], w["failed"],
                 (w["last_at"] or "-")[:19].replace("T", " "), w["last_result"] or "-"] for w in watches]  # fmt: skip
        table(["POD", "EVERY", "KEEP", "TAKEN", "SKIPPED", "FAILED", "LAST (UTC)", "LAST RESULT"], rows)
        info(f"supervisor: {'running, pid ' + str(pid) if pid else 'not running (no watch, no restart policy)'}; "
             f"log {watch_op.log_path(ctx)}")  # fmt: skip
        return 0
    if not args.name or args.every is None:
        raise errors.UsageError("zap watch POD --every DURATION [--keep-last N ...], or zap watch --list")
    rec = watch_op.watch(ctx, args.name, args.every, args.keep_last, args.keep_hourly, args.keep_daily)
    if args.json:
        emit_json(rec)
    else:
        print(f"watching {rec['pod']} every {interval(rec['every_s'])}" + (f", keeping {_keep(rec['keep'])}" if
              any(v is not None for v in rec["keep"].values()) else ""))  # fmt: skip
    return 0


def _keep(keep: dict) -> str:
    parts = [f"{k} {v}" for k, v in keep.items() if v is not None]
    return ", ".join(parts) or "all"


def cmd_unwatch(args) -> int:
    watch_op.unwatch(context.Context(), args.name)
    print(f"no longer watching {args.name}")
    return 0


def cmd_watch_serve(args) -> int:
    return watch_op.serve(context.Context())


def _outcomes(args, outcomes) -> int:
    if args.json:
        emit_json({"pods": [{"pod": o.pod, "ok": o.ok, "result": o.what} for o in outcomes]})
    else:
        for o in outcomes:
            print(f"{o.pod}: {o.what}" if o.ok else f"{o.pod}: failed: {o.what}")
        if not outcomes:
            info("nothing to do")
    return 0 if all(o.ok for o in outcomes) else 1


def cmd_suspend(args) -> int:
    return _outcomes(args, suspend_op.suspend(context.Context(), args.names, args.all))


def cmd_resume(args) -> int:
    ctx = context.Context()
    code = _outcomes(args, suspend_op.resume(ctx, args.names, args.all))
    if restart_op.with_policies(ctx):
        watch_op.ensure_supervisor(ctx)  # at boot: it restarts the pods that were not suspended
    return code
