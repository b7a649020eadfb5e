"""zap host ls, zap host adopt: the hosts of a fleet (ops/fleet.py, ops/adopt.py)."""

from __future__ import annotations

from .lazy import lazy
from .output import emit_json, info, table, warn

context = lazy("zapckpt.context")
fleet = lazy("zapckpt.ops.fleet")
adopt_op = lazy("zapckpt.ops.adopt")


def register(sub) -> None:
    p = sub.add_parser("host", help="the hosts of the fleet: `host ls`, `host adopt LOST [POD...]`")
    hs = p.add_subparsers(dest="host_command", metavar="ls|adopt", parser_class=type(p),
                          help="ls: list the hosts; adopt: take over a lost host's pods")  # fmt: skip
    hs.required = True
    q = hs.add_parser("ls", help="every host of the catalog: name, address, last seen, pods")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ls)
    q = hs.add_parser("adopt", help="take over a lost host's pods here, from their newest checkpoints "
                      "(the lost host, if it comes back, never runs them again)")  # fmt: skip
    q.add_argument("lost", metavar="HOST", help="the lost host's name (see `zap host ls`)")
    q.add_argument("pods", nargs="*", metavar="POD", help="only these of its pods (default: all)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_adopt)


def cmd_ls(args) -> int:
    rows = fleet.host_list(context.Context())
    if args.json:
        emit_json({"hosts": rows})
        return 0
    table(["HOST", "ADDRESS", "LAST SEEN", "PODS", "STATE DIRECTORY"],
          [[r["name"] + (" (this)" if r["this"] else ""), r["address"] or "-", (r["last_seen"] or "-")[:19].replace("T", " "),
            r["pods"], r["state_dir"]] for r in rows])  # fmt: skip
    return 0


def cmd_adopt(args) -> int:
    ctx = context.Context()
    results = adopt_op.adopt(ctx, args.lost, args.pods)
    if args.json:
        emit_json({"adopted": results})
    else:
        for r in results:
            if r["adopted"]:
                print(f"{r['pod']}: adopted from {r['from']}, {r['state']}" + "".join(f"; {n}" for n in r["notes"]))
            else:
                warn(f"{r['pod']}: not adopted: {r['why']}")
        if not results:
            info(f"host {args.lost} runs no pods")
    return 0 if all(r["adopted"] for r in results) else 1
