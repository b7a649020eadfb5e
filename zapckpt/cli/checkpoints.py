"""zap checkpoint, list, log, show, restore, branch, dump, find."""

from __future__ import annotations

from contextlib import closing

from . import show
from .lazy import lazy
from .output import emit_json, human_bytes, info, ms, table, warn

# imported by the command that uses them (cli/lazy.py)
queries = lazy("catalog.queries")
ckpt = lazy("zapckpt.ops.checkpoint")
rst = lazy("zapckpt.ops.restore")
context = lazy("zapckpt.context")
log_op = lazy("zapckpt.ops.log")
publish = lazy("zapckpt.net.publish")
settings = lazy("zapckpt.settings")
records = lazy("zapckpt.records")
fastread = lazy("catalog.fastread")
state = lazy("zapckpt.state")
errors = lazy("zapckpt.common.errors")
files = lazy("zapckpt.ops.files")
tags_op = lazy("zapckpt.ops.tags")
naming = lazy("zapckpt.names")
watch = lazy("zapckpt.ops.watch")
restart = lazy("zapckpt.ops.restart")


def register(sub) -> None:
    p = sub.add_parser("dump", help="write one file as it was at a checkpoint to stdout (as restic dump)")
    p.add_argument("ref")
    p.add_argument("path", help="the file's path in the pod's volume (relative, or under the pod's path)")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("find", help="files whose name or path matches PATTERN, in every checkpoint of a pod")
    p.add_argument("name")
    p.add_argument("pattern", help="a shell pattern: '*.conf', 'etc/*', ...")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_find)

    p = sub.add_parser("checkpoint", help="atomically checkpoint a pod's processes and files")
    p.add_argument("name")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--stop", action="store_true", help="end the pod after the checkpoint (its outside "
                   "connections are held, and come back with `zap restore` of this checkpoint)")
    p.add_argument("--ghost-limit", metavar="SIZE",
                   help="largest deleted-but-open file to keep in the checkpoint (default 64M, or `zap init --ghost-limit`)")
    p.add_argument("--strict", action="store_true",
                   help="refuse if the pod holds files open outside its volume and declared volumes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("list", help="list checkpoints")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("tag", help="name a checkpoint: NAME@TAG refers to it, prune --keep-tag keeps it")
    p.add_argument("ref")
    p.add_argument("tags", nargs="+", metavar="TAG", help="a-z 0-9 _ . -, starting with a letter")
    p.add_argument("--force", "-f", action="store_true", help="move a tag another checkpoint of the pod has")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("untag", help="remove tags from a checkpoint (all of them without TAG)")
    p.add_argument("ref")
    p.add_argument("tags", nargs="*", metavar="TAG", help="the tags to remove (default: all of its tags)")
    p.set_defaults(func=cmd_untag)

    p = sub.add_parser("log", help="show a pod's lineage, branches included")
    p.add_argument("name")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("show", help="show a checkpoint (NAME@N, NAME@latest, id) or a pod")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("restore", help="roll a pod back to a checkpoint, files and processes")
    p.add_argument("ref")
    p.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="only put this file back as it was (deleted if it did not exist), the pod running on; "
                   "repeatable (snapper's undochange)")  # fmt: skip
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("branch", help="fork a new live pod from a checkpoint")
    p.add_argument("ref")
    p.add_argument("new_name")
    p.add_argument("--no-start", action="store_true", help="create the volume only")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[HOSTIP:]HOSTPORT:PODPORT[/PROTO]",
                   help="forward a host port to the branch")
    p.set_defaults(func=cmd_branch)


def cmd_checkpoint(args) -> int:
    ctx = context.Context()
    limit = settings.parse_size(args.ghost_limit, "--ghost-limit") if args.ghost_limit else None
    ck = ckpt.checkpoint(ctx, args.name, args.message, args.stop, ghost_limit=limit, strict=args.strict)
    with ctx.catalog.session() as s:  # the record as `zap show` gives it, in one plain query
        row = queries.checkpoint_row(s, args.name, ck.seq)
        rec = records.checkpoint_row_records([row])[0]
    for w in ck.warnings:
        warn(w)
    if args.json:
        emit_json(dict(rec, outside_files=ck.outside_files, warnings=ck.warnings))
        return 0
    print(rec["ref"])
    t = rec["timings_ms"]
    info(f"checkpoint {rec['ref']} is durable: frozen {ms(t['frozen'])} ms (fs snapshot {ms(t['fs_snapshot'])} ms), "
         f"images {human_bytes(rec['raw_bytes'])} -> {human_bytes(rec['stored_bytes'])}, total {ms(t['total'])} ms"
         + (", pod stopped" if args.stop else ""))  # fmt: skip
    return 0


def cmd_list(args) -> int:
    # Straight from SQLite when the catalog is current: no SQLAlchemy import (see cmd_ps).
    conn = fastread.open_current(*state.StateDir.from_env().reader_args())
    if conn is not None:
        with closing(conn):
            try:
                pod_id = fastread.pod_id(conn, args.name) if args.name else None
            except fastread.LookupFailed:
                raise errors.unknown_pod(args.name) from None
            recs = records.checkpoint_row_records(fastread.checkpoint_rows(conn, pod_id))
    else:
        ctx = context.Context()
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, args.name) if args.name else None
            recs = records.checkpoint_row_records(queries.checkpoint_rows(s, pod))
    if args.json:
        emit_json({"checkpoints": recs})
        return 0
    rows = [
        [r["ref"], r["created_at"][:19].replace("T", " "), ",".join(r["tags"]) or "-", r["message"] or "-", r["parent"] or "-",
         human_bytes(r["raw_bytes"]) if r["has_processes"] else "files only", human_bytes(r["stored_bytes"]),
         ms(r["timings_ms"]["frozen"])]
        for r in recs
    ]  # fmt: skip
    head = ["REF", "TIME (UTC)", "TAGS", "MESSAGE", "PARENT", "RAW", "STORED", "FROZEN_MS"]
    if any(r["volume_in_store"] for r in recs) or len({r["host"] for r in recs}) > 1:
        # a fleet's: which host took each, and whether any host can use it (its volume in the store)
        head += ["HOST", "VOLUME"]
        for row, r in zip(rows, recs):
            row += [r["host"] or "-", "in store" if r["volume_in_store"] else "on host"]
    table(head, rows)
    return 0


def cmd_tag(args) -> int:
    ref, moved = tags_op.tag(context.Context(), args.ref, args.tags, args.force)
    print(f"{ref}: tagged {', '.join(dict.fromkeys(args.tags))}")
    if moved:
        info(f"moved {', '.join(moved)}")
    return 0


def cmd_untag(args) -> int:
    ref, gone = tags_op.untag(context.Context(), args.ref, args.tags)
    print(f"{ref}: untagged {', '.join(gone) or 'nothing (it had no tags)'}")
    return 0


def cmd_log(args) -> int:
    ctx = context.Context()
    with ctx.catalog.session() as s:
        print(log_op.render_lineage(s, queries.get_pod(s, args.name)))
    return 0


def cmd_show(args) -> int:
    is_pod, rec = _show_fast(args.ref)
    if rec is None:  # an id, an unknown name, or a catalog to create or migrate: the ORM path says which
        ctx = context.Context()
        with ctx.catalog.session() as s:
            pod = queries.find_pod(s, args.ref) if "@" not in args.ref else None
            is_pod = pod is not None
            if is_pod:
                rec = records.pod_record(pod, len(pod.checkpoints))
            else:
                rec = records.checkpoint_record(queries.resolve_ref(s, args.ref))
    if args.json:
        emit_json(rec)
    else:
        print(show.pod_text(rec) if is_pod else show.checkpoint_text(rec))
    return 0


def _show_fast(ref: str) -> tuple[bool, dict | None]:
    """`zap show POD`, NAME@N and NAME@latest straight from SQLite, as `zap ps` does: scripts
    call show in loops, and SQLAlchemy's import alone is most of a show."""
    conn = fastread.open_current(*state.StateDir.from_env().reader_args())
    if conn is None:
        return False, None
    with closing(conn):
        name, at, what = ref.partition("@")
        if not at:
            rows = fastread.pod_rows(conn, name)
            return True, (records.pod_row_record(rows[0]) if rows else None)
        if what == "latest":
            seq = None
        elif what.isascii() and what.isdigit() and len(what) <= 9:
            seq = int(what)
        elif naming.TAG_RE.fullmatch(what):
            seq = what
        else:
            return False, None
        row = fastread.checkpoint_row(conn, name, seq)
        return False, (records.checkpoint_row_records([row])[0] if row is not None else None)


def cmd_restore(args) -> int:
    ctx = context.Context()
    if args.file:
        saved_ref, done = files.restore_files(ctx, args.ref, args.file)
        for path, what in done:
            print(f"{path}: {what}")
        info(f"the files as they were are kept in {saved_ref} (`zap restore {saved_ref} --file PATH` undoes this)")
        return 0
    watch.supervise(ctx, restart.policy_of(ctx, ref=args.ref))

    def report(o) -> None:
        watch.notify(ctx)
        for w in o.warnings:
            warn(w)
        print(f"restored {o.ref}")
        if o.files_only:
            warn(f"{o.ref} holds files only (the pod was not running when it was taken): the pod is stopped now; "
                 f"`zap start {o.pod}` runs its command on these files")  # fmt: skip
        if o.saved_ref:
            info(f"the state it replaced is kept as {o.saved_ref} (`zap restore {o.saved_ref}` undoes this)")
        else:
            info(f"nothing was replaced: the pod was stopped with its files as {o.ref} left them")
        if o.lazy:
            info(f"{o.pod} runs; its memory is still coming in (`zap ps` says restoring until it is all in)")

    rst.restore(ctx, args.ref, report=report)
    return 0


def cmd_branch(args) -> int:
    ctx = context.Context()
    if not args.no_start:
        watch.supervise(ctx, restart.policy_of(ctx, ref=args.ref))

    def report(o) -> None:
        watch.notify(ctx)
        for w in o.warnings:
            warn(w)
        print(f"{o.pod} {o.mount_path}")
        if not args.no_start and o.files_only:
            warn(f"{args.ref} holds files only (its pod was not running when it was taken): {o.pod} is stopped; "
                 f"`zap start {o.pod}` runs its command on these files")  # fmt: skip

    rst.branch(ctx, args.ref, args.new_name, start=not args.no_start, ports=publish.parse_all(args.publish), report=report)
    return 0


def cmd_dump(args) -> int:
    import sys

    files.dump(context.Context(), args.ref, args.path, sys.stdout.buffer)
    return 0


def cmd_find(args) -> int:
    found = list(files.find(context.Context(), args.name, args.pattern))
    if args.json:
        emit_json({"found": found})
        return 0
    table(["REF", "TYPE", "SIZE", "PATH"], [[f["ref"], f["type"], human_bytes(f["size"]), f["path"]] for f in found])
    info(f"{len(found)} match(es)")
    return 0
