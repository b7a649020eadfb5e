"""zap init, deinit, doctor."""

from __future__ import annotations

from .lazy import lazy
from .output import confirm, emit_json, info

# imported by the command that uses them (cli/lazy.py)
context = lazy("zapckpt.context")
doctor = lazy("zapckpt.ops.doctor")
storage_pool = lazy("zapckpt.system.pool")
settings = lazy("zapckpt.settings")
deinit_op = lazy("zapckpt.ops.deinit")
queries = lazy("catalog.queries")
fleet = lazy("zapckpt.ops.fleet")
state = lazy("zapckpt.state")


def register(sub) -> None:
    p = sub.add_parser("init", help="create (or re-mount) the storage pool")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", help="size of the embedded loop-file btrfs pool (default 8G)")
    g.add_argument("--pool", metavar="DIR", help="use an existing btrfs directory instead")
    g.add_argument("--device", metavar="DEV", help="with --backend nilfs: a block device for the pool")
    p.add_argument("--backend", choices=("btrfs", "nilfs"), help="snapshot backend of a new pool (default btrfs)")
    p.add_argument("--ghost-limit", metavar="SIZE",
                   help="default for every checkpoint: largest deleted-but-open file kept (default 64M)")
    p.add_argument("--log-max", metavar="SIZE",
                   help="rotate a pod's console log at this size, keeping one older file (default 16M; 0: never); "
                   "pods started from now on")  # fmt: skip
    f = p.add_argument_group("a fleet of hosts (docs/fleet.md)")
    f.add_argument("--catalog", metavar="URL",
                   help="the catalog shared by the fleet: postgresql://USER@HOST/DB (a libpq URL, ?host=/socket/dir "
                   "too; the database must exist), or ZAP_CATALOG; default: catalog.db here (SQLite)")  # fmt: skip
    f.add_argument("--host", metavar="NAME", help="this host's name in the catalog (default: the machine's host name)")
    f.add_argument("--address", metavar="IP", help="this host's address, for `zap host ls` (default: its first one)")
    f.add_argument("--store", metavar="s3://BUCKET/PREFIX",
                   help="the fleet's image store, where packs and volumes go (credentials as boto3 and the AWS CLI "
                   "read them); default: a directory of this host")  # fmt: skip
    f.add_argument("--s3-endpoint", metavar="URL", help="the S3 service, if not AWS (http://HOST:PORT)")
    f.add_argument("--cache-size", metavar="SIZE", help="this host's cache of the store's packs (default 4G)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("deinit", help="stop all pods, unmount the pool and detach its loop device")
    p.add_argument("--purge", action="store_true", help="also delete the state directory")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before --purge deletes everything")
    p.set_defaults(func=cmd_deinit)

    p = sub.add_parser("doctor", help="check what this machine needs to run zap")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def cmd_init(args) -> int:
    st = state.StateDir.from_env()
    st.ensure()
    address = args.address or (fleet.detect_address() if (args.catalog or args.host) else None)
    fleet.join(st, args.catalog, args.host, address)
    ctx = context.Context(st)
    me = ctx.host  # registered in the catalog (a name another host holds is refused)
    cache = settings.parse_size(args.cache_size, "--cache-size") if args.cache_size else None
    store = fleet.configure_store(ctx, args.store, args.s3_endpoint, cache)
    if args.ghost_limit:
        settings.set_ghost_limit(ctx, settings.parse_size(args.ghost_limit, "--ghost-limit"))
    if args.log_max:
        settings.set_log_max(ctx, settings.parse_size(args.log_max, "--log-max"))
    pool = storage_pool.init_pool(ctx.state, ctx.catalog, ctx.host_id, size=args.size, pool_dir=args.pool, backend_name=args.backend,
                     device=args.device)  # fmt: skip
    where = {"loop": f"loop file {ctx.state.pool_image}", "device": "device", "dir": "directory"}[pool.kind]
    print(f"pool ready: {pool.path} ({pool.backend.name}, {where})")
    print(f"state directory: {ctx.state.root}")
    if not ctx.catalog.url.embedded or store:
        print(f"host {me.name} of the catalog {ctx.catalog.url.redacted()}; image store {store or ctx.store.root}")
    return 0


def cmd_deinit(args) -> int:
    from zapckpt.view.mount import unmount_all

    ctx = context.Context()
    if args.purge and ctx.state.root.exists():
        what = "every pod, checkpoint, the pool and the image store"
        try:
            with ctx.catalog.session() as s:
                what = f"{len(queries.list_pods(s, ctx.host_id))} pod(s), {sum(queries.checkpoint_counts(s).values())} checkpoint(s)" \
                       ", the pool and the image store"
        except Exception:  # noqa: BLE001 - a damaged catalog must not keep anyone from purging it
            pass
        confirm(f"delete {ctx.state.root}: {what}?", args.yes)
    unmount_all(ctx)  # a view keeps no pool file open for long, but it reads the snapshots
    stopped = deinit_op.deinit(ctx, args.purge)
    if stopped:
        info(f"stopped pods: {', '.join(stopped)}")
    print(f"{'purged' if args.purge else 'deinitialised'} {ctx.state.root}")
    return 0


def cmd_doctor(args) -> int:
    checks = doctor.run_checks()
    doc = doctor.report(checks)
    if args.json:
        emit_json(doc)
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            line = f"[{mark}] {c.name}: {c.detail}"
            if not c.ok and c.fix:
                line += f"\n       fix: {c.fix}"
            print(line)
        print("all required checks passed" if doc["ok"] else "some required checks failed")
    return 0 if doc["ok"] else 1
