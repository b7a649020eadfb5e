"""zap rmckpt, prune, df, verify, export, import: the stored checkpoints."""

from __future__ import annotations

from . import argtypes
from .lazy import lazy
from .output import confirm, emit_json, human_bytes, info, table

# imported by the command that uses them (cli/lazy.py)
remove = lazy("zapckpt.ops.remove")
usage = lazy("zapckpt.ops.usage")
verify_op = lazy("zapckpt.ops.verify")
transfer = lazy("zapckpt.ops.transfer")
context = lazy("zapckpt.context")
errors = lazy("zapckpt.common.errors")


def register(sub) -> None:
    p = sub.add_parser("rmckpt", help="remove checkpoints (snapshots and images): REF... or NAME@A-B")
    p.add_argument("refs", nargs="+", metavar="REF",
                   help="NAME@N, NAME@latest, an id, or a range NAME@A-B (those of A to B that exist)")  # fmt: skip
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before removing more than one")
    p.set_defaults(func=cmd_rmckpt)

    p = sub.add_parser("prune", help="remove checkpoints outside a keep policy (like restic forget)")
    p.add_argument("name")
    p.add_argument("--keep-last", type=argtypes.count, metavar="N")
    for span in ("hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{span}", type=argtypes.count, metavar="N",
                       help=f"keep the newest checkpoint of each of the last N {PERIOD[span]}s having one")  # fmt: skip
    p.add_argument("--keep-within", type=argtypes.duration, metavar="DURATION",
                   help="keep every checkpoint taken within DURATION (2d, 12h) of the newest")  # fmt: skip
    p.add_argument("--keep-tag", action="append", default=[], metavar="TAG",
                   help="keep the checkpoint tagged TAG (`zap tag`); repeatable")  # fmt: skip
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would be removed")
    p.add_argument("--force", action="store_true", help="allow a policy that removes every checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("df", help="stored bytes and dedup ratio per pod; the pool's used and free space")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_df)

    p = sub.add_parser("export", help="write a checkpoint (images and snapshot) to one file")
    p.add_argument("ref")
    p.add_argument("file", help="the file to write, or - for standard output (a pipe)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import a checkpoint exported by `zap export`, as a new pod")
    p.add_argument("file", help="the export file, or - for standard input")
    p.add_argument("--name", help="name of the new pod (default: the exported pod's name)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("verify", help="re-hash every chunk of a checkpoint (or of all); list unrecorded objects")
    p.add_argument("ref", nargs="?")
    p.add_argument("--repair", action="store_true",
                   help="remove snapshots, volumes, packs and staging that no catalog row names")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("recover", help="finish or undo interrupted operations; remove what they left")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recover)


def cmd_rmckpt(args) -> int:
    ask = lambda refs: confirm(f"remove {len(refs)} checkpoints ({', '.join(refs)})?", args.yes)  # noqa: E731
    for ref in remove.rmckpt(context.Context(), args.refs, confirm=ask):
        print(f"removed {ref}")
    return 0


PERIOD = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}


def cmd_prune(args) -> int:
    policy = {k: getattr(args, k) for k in ("keep_last", *(f"keep_{p}" for p in PERIOD), "keep_within", "keep_tag")}
    policy["keep_tags"] = policy.pop("keep_tag") or None
    decisions, freed = remove.prune(context.Context(), args.name, policy, dry_run=args.dry_run, force=args.force)
    if args.json:
        emit_json({"dry_run": args.dry_run, "checkpoints": decisions, "freed_bytes": freed})
        return 0
    table(["REF", "ACTION", "WHY"], [[d["ref"], d["action"], d["why"]] for d in decisions])
    removed = sum(d["action"] != "keep" for d in decisions)
    if args.dry_run:
        info(f"would remove {removed} of {len(decisions)} checkpoint(s)")
    else:
        info(f"removed {removed} of {len(decisions)} checkpoint(s); the image store freed {human_bytes(freed)} "
             f"(snapshots free their blocks as the file system reclaims them)")  # fmt: skip
    return 0


def cmd_df(args) -> int:
    doc = usage.df(context.Context())
    if args.json:
        emit_json(doc)
        return 0
    rows = [[p["pod"], p["checkpoints"], human_bytes(p["raw_bytes"]), human_bytes(p["stored_bytes"]),
             f"{p['dedup_ratio']:.1f}x" if p["dedup_ratio"] else "-"] for p in doc["pods"]]  # fmt: skip
    t = doc["total"]
    rows.append(["TOTAL", t["checkpoints"], human_bytes(t["raw_bytes"]), human_bytes(t["stored_bytes"]),
                 f"{t['dedup_ratio']:.1f}x" if t["dedup_ratio"] else "-"])  # fmt: skip
    table(["POD", "CHECKPOINTS", "RAW", "STORED", "DEDUP"], rows)
    print(f"packs on disk: {human_bytes(t['pack_bytes'])} in {t['packs']} file(s)")
    p = doc["pool"]
    print(f"pool ({p['backend']}, {p['path']}): {human_bytes(p['used_bytes'])} used of {human_bytes(p['size_bytes'])}, "
          f"{human_bytes(p['free_bytes'])} free (the files of every pod and snapshot)")  # fmt: skip
    return 0


def cmd_export(args) -> int:
    import sys

    if args.file == "-":
        if sys.stdout.isatty():
            raise errors.UsageError("refusing to write an export to a terminal: redirect or pipe it (zap export REF - > FILE)")
        _, size = transfer.export(context.Context(), args.ref, "-", sys.stdout.buffer)
        info(f"exported {args.ref} to standard output ({human_bytes(size)})")
        return 0
    out, size = transfer.export(context.Context(), args.ref, args.file)
    print(f"exported {args.ref} to {out} ({human_bytes(size)})")
    return 0


def cmd_import(args) -> int:
    import sys

    if args.file == "-" and sys.stdin.isatty():
        raise errors.UsageError("an import from standard input needs a pipe or a file there (zap import - < FILE)")
    ctx = context.Context()
    ck = transfer.import_(ctx, args.file, args.name, sys.stdin.buffer if args.file == "-" else None)
    with ctx.catalog.session() as s:
        from catalog import queries

        ref = queries.resolve_ref(s, ck.id).ref
    print(ref)
    info(f"imported as {ref}; `zap branch {ref} NEW` or `zap restore {ref}` brings it to life")
    return 0


def cmd_verify(args) -> int:
    from zapckpt.ops import recovery

    ctx = context.Context()
    doc = verify_op.verify(ctx, args.ref)
    if args.ref is None:
        doc["unrecorded"] = recovery.sweep(ctx, repair=args.repair)
        doc["repaired"] = bool(args.repair and doc["unrecorded"])
        doc["ok"] = doc["ok"] and (args.repair or not doc["unrecorded"])
    if args.json:
        emit_json(doc)
    else:
        for d in doc["damage"]:
            print(f"damaged: {d['what']}; affects {', '.join(d['affects']) or 'no checkpoint'}")
        if args.ref or not doc["ok"]:  # one line per checkpoint: which can be restored
            table(["CHECKPOINT", "STATE"], [[c["ref"], "ok" if c["ok"] else f"damaged ({c['problems']} problem(s))"]
                                            for c in doc["checkpoints"]])  # fmt: skip
        for what in doc.get("unrecorded", []):
            print(f"{'removed' if args.repair else 'unrecorded'}: {what}")
        problems = len(doc["damage"]) + (0 if args.repair else len(doc.get("unrecorded", [])))
        print(f"verified {doc['chunks_checked']} chunk(s) of {doc['checkpoints_checked']} checkpoint(s): "
              + ("OK" if doc["ok"] else f"{problems} problem(s)")
              + ("" if args.repair or not doc.get("unrecorded") else " (`zap verify --repair` removes the unrecorded objects)"))  # fmt: skip
    return 0 if doc["ok"] else 1


def cmd_recover(args) -> int:
    from zapckpt.ops import recovery

    from zapckpt.ops.adopt import retire

    ctx = context.Context()
    done = recovery.recover(ctx)
    retired = retire(ctx)
    removed = recovery.sweep(ctx, repair=True)
    if args.json:
        emit_json({"operations": done, "retired": retired, "removed": removed})
        return 0
    for d in done:
        print(f"{d['op']} of {d['pod']} (started {d['started']}): {d['outcome']}")
    for line in retired:
        print(line)
    for what in removed:
        print(f"removed unrecorded {what}")
    if not done and not removed and not retired:
        print("nothing to recover")
    return 0

