"""zap guard, diff: rollback after a failed upgrade, and what an upgrade changed."""

from __future__ import annotations

from zapckpt.common.errors import NotFound, UsageError

from . import argtypes
from .lazy import lazy
from .output import confirm, emit_json, info, table

# imported by the command that uses them (cli/lazy.py)
context = lazy("zapckpt.context")
diff_op = lazy("zapckpt.ops.diff")
files_op = lazy("zapckpt.ops.files")
guard_op = lazy("zapckpt.ops.guard")


def register(sub) -> None:
    p = sub.add_parser("guard", help="run CMD in a pod between pre/post checkpoints; roll back if it fails")
    p.add_argument("name", nargs="?", help="the pod (not with --host)")
    p.add_argument("--host", action="store_true", help="guard the host's btrfs root instead of a pod (files only)")
    p.add_argument("--root", metavar="DIR", default="/",
                   help="with --host: a btrfs subvolume holding a root used through chroot (default /)")  # fmt: skip
    p.add_argument("--check", metavar="CMD", help="health check (a shell command run inside the pod) after CMD")
    p.add_argument("--check-timeout", type=argtypes.seconds, default=60.0, metavar="SECS",
                   help="a health check running longer fails (default 60)")  # fmt: skip
    p.add_argument("cmd", nargs="*", metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_guard)

    p = sub.add_parser("host-snapshot", help="a numbered read-only snapshot of the host's btrfs root (apt hooks); "
                       "--list, --delete")  # fmt: skip
    p.add_argument("label", nargs="?", help="e.g. apt-pre, apt-post")
    p.add_argument("--root", metavar="DIR", default="/", help="a btrfs subvolume holding a root (default /)")
    p.add_argument("--list", action="store_true", help="list the snapshots (guard's and the hooks') instead")
    p.add_argument("--delete", nargs="+", metavar="N[-M]", type=argtypes.number_range,
                   help="delete the snapshots numbered N (or N to M), each number's pre/post/failed together")  # fmt: skip
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting more than one")
    p.add_argument("--json", action="store_true", help="with --list")
    p.set_defaults(func=cmd_host_snapshot)

    p = sub.add_parser("diff", help="files added, modified, deleted between two checkpoints, or since one")
    p.add_argument("ref_a")
    p.add_argument("ref_b", nargs="?", help="the newer checkpoint (default: the pod's files now)")
    p.add_argument("-p", "--content", action="store_true",
                   help="also the changed files' contents, line by line (diff -u; binary files are named)")  # fmt: skip
    p.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="only PATH (a file or directory inside the volume); repeatable")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)


def cmd_guard(args) -> int:
    if args.host:
        if args.name:
            raise UsageError("--host guards the host, not a pod: zap guard --host -- CMD")
        from zapckpt.ops.hostguard import host_guard

        print(*host_guard(args.cmd, args.check, args.check_timeout, args.root))
        return 0
    if not args.name:
        raise UsageError("which pod? zap guard NAME -- CMD (or --host)")
    if args.root != "/":
        raise UsageError("--root goes with --host")
    res = guard_op.guard(context.Context(), args.name, args.cmd, args.check, args.check_timeout)
    print(f"{res.pre} {res.post}")
    return 0


def cmd_host_snapshot(args) -> int:
    from zapckpt.ops import hostguard

    if sum(map(bool, (args.label, args.list, args.delete))) != 1:
        raise UsageError("one of: zap host-snapshot LABEL, --list, --delete N[-M]...")
    if args.list:
        snaps = hostguard.host_snapshots(args.root)
        if args.json:
            emit_json({"snapshots": snaps})
            return 0
        table(["#", "LABEL", "TIME (UTC)", "COMMAND", "PATH"],
              [[f"{s['number']}{'*' if s['default'] else ''}", s["label"],
                (s["created_at"] or "-")[:19].replace("T", " "), s["command"] or "-", s["path"]]
               for s in snaps])  # fmt: skip
        if any(s["default"] for s in snaps):
            info("*: the default subvolume (a rollback the next boot completes)")
        return 0
    if args.delete:
        numbers = [n for ns in args.delete for n in ns]
        for path in hostguard.delete_host_snapshots(numbers, args.root, lambda q: confirm(q, args.yes)):
            print(f"deleted {path}")
        return 0
    print(hostguard.host_snapshot(args.label, args.root))
    return 0


MARKS = (("added", "+"), ("modified", "M"), ("deleted", "-"), ("type_changed", "T"), ("mode_changed", "m"))


def cmd_diff(args) -> int:
    if args.json and args.content:
        raise UsageError("--content prints diff -u text: it does not go with --json")
    only = ["/" + "/".join(files_op.components(p)) for p in args.file]
    differed = []
    absent = []

    def contents(root_a, root_b, changes) -> None:
        # while both trees exist (a live diff's snapshot is deleted afterwards)
        absent.extend(p for p in only if not any(files_op.exists_in_snapshot(r, p) for r in (root_a, root_b)))
        if args.content and not absent:
            listing(changes, only)
            differed.append(diff_op.patch(root_a, root_b, diff_op.changed_files(changes, only), names))

    names = (args.ref_a, args.ref_b or "now")
    a, b, ch = diff_op.diff(context.Context(), args.ref_a, args.ref_b, contents)
    if absent:  # a path in neither tree is a mistake, not "nothing changed"
        raise NotFound(f"no {', '.join(absent)} in {a} or in {b} (--file names a path inside the pod's volume)")
    if only:
        ch = ch.only(only)
    counts = ch.counts()
    if args.json:
        doc = {"from": a, "to": b, "counts": counts, "renamed": [{"from": x, "to": y} for x, y in ch.renamed]}
        doc.update({k: getattr(ch, k) for k, _m in MARKS})
        emit_json(doc)
        return 0
    if not args.content:
        listing(ch, [])
    info(f"{a} -> {b}: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()))
    return 0


def listing(ch, only: list[str]) -> None:
    if only:
        ch = ch.only(only)
    rows = [(p, mark) for k, mark in MARKS for p in getattr(ch, k)]
    for p, mark in sorted(rows):
        print(f"{mark} {p}")
    for x, y in ch.renamed:
        print(f"R {x} -> {y}")
