"""zap run, start, ps, logs, exec, stop, kill, pause, unpause, rm."""

from __future__ import annotations

import sys
from contextlib import closing

from . import argtypes
from .lazy import lazy
from .output import confirm, emit_json, human_bytes, info, interval, table, template_fields, warn

# imported by the command that uses them (cli/lazy.py)
queries = lazy("catalog.queries")
pods = lazy("zapckpt.pod.lifecycle")
remove = lazy("zapckpt.ops.remove")
publish = lazy("zapckpt.net.publish")
context = lazy("zapckpt.context")
records = lazy("zapckpt.records")
fastread = lazy("catalog.fastread")
state = lazy("zapckpt.state")
errors = lazy("zapckpt.common.errors")
rename_op = lazy("zapckpt.ops.rename")
cgroups = lazy("zapckpt.system.cgroups")
restart = lazy("zapckpt.ops.restart")
watch = lazy("zapckpt.ops.watch")
update_op = lazy("zapckpt.ops.update")
console = lazy("zapckpt.pod.console")


def register(sub) -> None:
    for verb, what in (("run", "start a command as a new pod"), ("create", "create a pod without starting it")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("name")
        p.add_argument("--env", "-e", action="append", default=[], metavar="K=V")
        p.add_argument("--cwd", metavar="DIR", help="working directory (default: the pod's path, or / with --rootfs)")
        p.add_argument("--rootfs", metavar="debian:RELEASE|DIR",
                       help="give the pod its own root file system (a system pod): a Debian release "
                       "(built once, then snapshotted) or a copy of DIR")  # fmt: skip
        p.add_argument("--net", choices=("pod", "none", "host"), default="pod",
                       help="pod: own network namespace with an address on the host bridge (default); "
                       "none: loopback only; host: the host's (not branchable while it listens)")  # fmt: skip
        p.add_argument("-p", "--publish", action="append", default=[], metavar="[HOSTIP:]HOSTPORT:PODPORT[/PROTO]",
                       help="forward a host port to the pod (needs --net pod)")  # fmt: skip
        p.add_argument("-v", "--volume", action="append", default=[], metavar="HOSTDIR:PODDIR",
                       help="share a host directory with the pod (never rolled back)")  # fmt: skip
        p.add_argument("--no-init", dest="init", action="store_false",
                       help="run the command itself as the pod's pid 1 (e.g. systemd), not as the child of "
                       "a small init that forwards signals and reaps orphans")  # fmt: skip
        p.add_argument("-m", "--memory", type=argtypes.memory, metavar="SIZE",
                       help="the most RAM its processes may use (64M, 1G); beyond it the kernel reclaims, then "
                       "kills one of them (OOM)")  # fmt: skip
        p.add_argument("--cpus", type=argtypes.cpus, metavar="N",
                       help="the most CPU time it may use, in CPUs (0.5: half of one)")  # fmt: skip
        p.add_argument("--restart", default="no", metavar="POLICY",
                       help="when it ends by itself: no (default), on-failure[:N] (non-zero exit, at most N "
                       "times in a row), always (also unless-stopped); a pod zap stopped stays stopped")  # fmt: skip
        p.add_argument("--host-writable", action="store_true",
                       help="let a pod without --rootfs write the host's files outside its volume (by default it "
                       "sees them read-only: what it wrote there would never be rolled back)")  # fmt: skip
        p.add_argument("cmd", nargs="*", metavar="-- CMD [ARGS...]")
        p.set_defaults(func=cmd_run, start=verb == "run")

    p = sub.add_parser("start", help="run a stopped pod's command again in its current volume")
    p.add_argument("name")
    p.add_argument("cmd", nargs="*", metavar="-- CMD [ARGS...]",
                   help="a command to run from now on instead (a pod created without one needs it)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("ps", help="list pods")
    p.add_argument("--json", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only pods whose KEY matches: name=GLOB, state=running|paused|frozen|stopped|dead, "
                   "net=pod|none|host, origin=REF (repeatable: all must match)")  # fmt: skip
    p.add_argument("--format", metavar="TEMPLATE",
                   help="one line per pod from a template of JSON fields: '{name} {state} {pid}'")  # fmt: skip
    p.add_argument("-a", "--all-hosts", action="store_true",
                   help="the pods of every host of the fleet (a HOST column; another host's state is as its catalog "
                   "says)")  # fmt: skip
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("logs", help="show a pod's console log")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", type=argtypes.count, metavar="N",
                   help="only the last N lines (then follow, with -f)")  # fmt: skip
    p.add_argument("--since", type=argtypes.since, metavar="TIME|DURATION",
                   help="only lines written since a time (2026-11-27T10:00:00, UTC unless it says) or "
                   "a duration ago (90s, 10m, 2h, 1d)")  # fmt: skip
    p.add_argument("-t", "--timestamps", action="store_true", help="each line with the time it was written (UTC)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("exec", help="run a command inside a running pod")
    p.add_argument("name")
    p.add_argument("-d", "--detach", action="store_true",
                   help="start it as a daemon of the pod (own session, stdio in the pod's console log)")  # fmt: skip
    p.add_argument("-t", "--tty", action="store_true",
                   help="give it a terminal of the pod's own (needs one here: `zap exec -it web -- bash`)")  # fmt: skip
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep standard input open (always so; accepted as podman's)")  # fmt: skip
    p.add_argument("cmd", nargs="*", metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("stop", help="stop a pod (SIGTERM, then SIGKILL)")
    p.add_argument("name")
    p.add_argument("-t", "--time", type=argtypes.seconds, default=10.0, help="seconds before SIGKILL (default 10)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="send a signal to a pod's command, pid 1 of the pod (default SIGKILL)")
    p.add_argument("name")
    p.add_argument("-s", "--signal", type=argtypes.signal_name, default="KILL", metavar="SIGNAL",
                   help="a name (TERM, SIGHUP) or number (default KILL: the whole pod ends)")  # fmt: skip
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("pause", help="stop every process of a pod (SIGSTOP) until `zap unpause`")
    p.add_argument("name")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("unpause", help="let a paused pod's processes run again (SIGCONT)")
    p.add_argument("name")
    p.set_defaults(func=cmd_unpause)

    p = sub.add_parser("update", help="change a pod's resource limits or restart policy (a running one's at once)")
    p.add_argument("name")
    p.add_argument("-m", "--memory", type=argtypes.memory, metavar="SIZE", help="the most RAM it may use (64M, 1G)")
    p.add_argument("--cpus", type=argtypes.cpus, metavar="N", help="the most CPU time it may use, in CPUs")
    p.add_argument("--restart", metavar="POLICY", help="no, on-failure[:N], always (see zap run)")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("rename", help="give a stopped pod a new name (its checkpoints become NEW@N)")
    p.add_argument("name")
    p.add_argument("new_name")
    p.set_defaults(func=cmd_rename)

    p = sub.add_parser("rm", help="remove a pod and its volume")
    p.add_argument("name")
    p.add_argument("--force", "-f", action="store_true", help="also its checkpoints; stop it if running")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before removing checkpoints with --force")
    p.set_defaults(func=cmd_rm)


def cmd_run(args) -> int:
    ctx = context.Context()
    policy = restart.parse(args.restart)
    if args.start:
        watch.supervise(ctx, policy[0])
    pod = pods.run(ctx, args.name, args.cmd, pods.parse_env(args.env), args.cwd, args.rootfs, args.start,
                   net=args.net, ports=publish.parse_all(args.publish), volumes=pods.parse_volumes(args.volume), init=args.init,
                   limits=cgroups.Limits(args.memory, args.cpus), restart=policy,
                   host_writable=args.host_writable)  # fmt: skip
    if args.start and policy[0] != "no":
        watch.notify(ctx)
    print(f"{pod.name} {pod.mount_path}")
    return 0


def cmd_update(args) -> int:
    ctx = context.Context()
    policy = restart.parse(args.restart) if args.restart is not None else None
    pod = update_op.update(ctx, args.name, args.memory, args.cpus, policy)
    if pod.restart != "no" and pods.live_state(pod) == "running":
        watch.supervise(ctx, pod.restart)
        watch.notify(ctx)
    said = ([f"memory {human_bytes(pod.memory_limit)}"] if pod.memory_limit is not None else []) + (
        [f"{pod.cpus:g} CPUs"] if pod.cpus is not None else [])
    said.append(f"restart {pod.restart}" + (f":{pod.restart_max}" if pod.restart_max is not None else ""))
    print(f"{pod.name}: {', '.join(said)}")
    return 0


def cmd_start(args) -> int:
    ctx = context.Context()
    watch.supervise(ctx, restart.policy_of(ctx, args.name))
    pod = pods.start(ctx, args.name, args.cmd)
    watch.notify(ctx)
    print(f"{pod.name} {pod.mount_path}")
    return 0


def cmd_ps(args) -> int:
    # Straight from SQLite when the catalog is current: `zap ps` answers without importing SQLAlchemy.
    conn = fastread.open_current(*state.StateDir.from_env().reader_args())
    if conn is not None:
        with closing(conn):
            rows = fastread.pod_rows(conn, all_hosts=args.all_hosts)
    else:  # a new or older catalog: the ORM path creates or migrates it
        ctx = context.Context()
        with ctx.catalog.session() as s:
            counts = queries.checkpoint_counts(s)
            me = ctx.host
            rows = [fastread.PodRow.of(p, counts.get(p.id, 0), p.host.name if p.host else None, p.host_id in (None, me.id))
                    for p in queries.list_pods(s, None if args.all_hosts else me.id)]  # fmt: skip
    recs = [r for r in map(records.pod_row_record, rows) if _matches(r, args.filter)]
    if args.format:
        for r in recs:
            try:
                print(args.format.format_map(template_fields(r)))
            except (KeyError, IndexError, ValueError, AttributeError) as e:
                raise errors.UsageError(f"bad --format {args.format!r}: {e} (fields: {', '.join(sorted(r))})") from None
        return 0
    if args.json:
        emit_json({"pods": recs})
        return 0
    rows = [[r["name"], r["state"] + (" (suspended)" if r["suspended"] else "")
             + (f" (exit {r['exit_code']})" if r["exit_code"] is not None else ""), r["pid"] or "-", r["address"] or r["net"],
             ",".join(map(publish.render, r["ports"])) or "-", _watch(r["watch"]), r["origin"] or "-", r["checkpoints"],
             r["path"]] for r in recs]  # fmt: skip
    head = ["NAME", "STATE", "PID", "ADDRESS", "PORTS", "WATCH", "ORIGIN", "CHECKPOINTS", "PATH"]
    if args.all_hosts:
        head.insert(1, "HOST")
        for row, r in zip(rows, recs):
            row.insert(1, r["host"] or "-")
    table(head, rows)
    for r in recs:
        if r["note"]:
            warn(f"{r['name']}: {r['note']}")
    return 0


FILTERS = ("name", "state", "net", "origin")
# the values a filter can match (name and origin: any)
FILTER_VALUES = {"state": ("running", "restoring", "paused", "frozen", "stopped", "dead"), "net": ("pod", "none", "host")}


def _matches(rec: dict, filters: list[str]) -> bool:
    from fnmatch import fnmatchcase

    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in FILTERS:
            raise errors.UsageError(f"bad --filter {f!r}: KEY=VALUE with KEY one of {', '.join(FILTERS)}")
        if key in FILTER_VALUES and value not in FILTER_VALUES[key]:
            raise errors.UsageError(f"bad --filter {f!r}: {key} is one of {', '.join(FILTER_VALUES[key])}")
        have = rec[key] or ""
        if not (fnmatchcase(have, value) if key == "name" else have == value):
            return False
    return True


def _watch(w: dict | None) -> str:
    """`zap watch` of a pod, short: its interval and how the last tick went."""
    if w is None:
        return "-"
    last = "" if w["last_ok"] is None else " ok" if w["last_ok"] else " FAILED"
    return f"every {interval(w['every_s'])}{last}"


def cmd_logs(args) -> int:
    out = sys.stdout.buffer
    # Straight from SQLite, as ps: the ORM only for a pod this cannot tell about.
    if not console.follow_log(state.StateDir.from_env(), args.name, args.follow, out, args.tail, args.since,
                              args.timestamps):  # fmt: skip
        pods.logs_in_volume(context.Context(), args.name, args.follow, out, args.tail, args.since, args.timestamps)
    return 0


def cmd_exec(args) -> int:
    if args.detach:
        pods.exec_detached(context.Context(), args.name, args.cmd)
        return 0
    return pods.exec_in(context.Context(), args.name, args.cmd, tty=args.tty)


def cmd_rename(args) -> int:
    rename_op.rename(context.Context(), args.name, args.new_name)
    print(f"renamed {args.name} to {args.new_name}")
    return 0


def cmd_stop(args) -> int:
    pod = pods.stop(context.Context(), args.name, args.time, say=info)
    print(f"stopped {pod.name}")
    return 0


def cmd_kill(args) -> int:
    pod = pods.signal_pod(context.Context(), args.name, args.signal)
    print(f"sent {args.signal.name} to {pod.name}")
    return 0


def cmd_pause(args) -> int:
    pod = pods.pause(context.Context(), args.name)
    print(f"paused {pod.name}")
    return 0


def cmd_unpause(args) -> int:
    pod = pods.unpause(context.Context(), args.name)
    print(f"unpaused {pod.name}")
    return 0


def cmd_rm(args) -> int:
    ctx = context.Context()
    refs: list[str] = []
    if args.force:
        with ctx.catalog.session() as s:
            pod = queries.find_pod(s, args.name)
            refs = [c.ref for c in sorted(pod.checkpoints, key=lambda c: c.seq)] if pod is not None else []
        if refs:
            confirm(f"remove pod {args.name!r} and its {len(refs)} checkpoint(s) ({_some(refs)})?", args.yes)
    orphans = remove.rm(ctx, args.name, args.force)
    print(f"removed {args.name}")
    if refs:
        info(f"with its {len(refs)} checkpoint(s): {_some(refs)}")
    if orphans:
        warn(f"its branches {_some(orphans)} go on with files of their own, but no longer have an origin "
             f"(`zap ps` shows none; their own checkpoints stay)")  # fmt: skip
    return 0


def _some(refs: list[str], most: int = 5) -> str:
    return ", ".join(refs[:most]) + (f" and {len(refs) - most} more" if len(refs) > most else "")
