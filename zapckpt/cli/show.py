"""`zap show` as text for a person: labelled lines, sizes and times written out, "-" for
nothing. The JSON record (`--json`) stays the machine-readable form."""

from __future__ import annotations

import shlex

from .output import human_bytes, interval


def _when(iso: str) -> str:
    """Catalog times are UTC: say so."""
    return iso[:19].replace("T", " ") + " UTC"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def _port(p: dict) -> str:
    return f"{p['host_ip'] + ':' if p['host_ip'] else ''}{p['host_port']} -> {p['pod_port']}/{p['proto']}"


def _lines(pairs: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in pairs)


def pod_text(r: dict) -> str:
    state = r["state"] + (f" (pid {r['pid']})" if r["pid"] else "")
    if r["exit_code"] is not None:
        state += f" (exit {r['exit_code']} at {_when(r['exited_at'])})"
    rs = r["restart"]
    net = r["net"] + (f", address {r['address']}" if r["address"] else "")
    pairs = [
        ("pod", r["name"]),
        ("host", r["host"] or "-"),
        ("state", state),
        ("command", shlex.join(r["command"]) if r["command"] else "-"),
        ("pid 1", "a small init (catatonit), the command its child" if r["init"] else "the command itself"),
        ("working dir", r["cwd"]),
        ("path", r["path"]),
        ("volume", r["volume"]),
        ("root fs", r["rootfs"] or ("the host's, with a /tmp of its own" if r["private_tmp"] else "the host's")),
        ("network", net),
        ("ports", ", ".join(map(_port, r["ports"])) or "-"),
        ("shared dirs", ", ".join(f"{v['host']} -> {v['pod']}" for v in r["volumes"]) or "-"),
        ("limits", _limits(r["limits"])),
        ("restart", rs["policy"] + (f":{rs['max']}" if rs["max"] is not None else "")
                    + (f" ({rs['count']} restart(s) so far)" if rs["count"] else "")),
        ("environment", " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted((r["env"] or {}).items())) or "-"),
        ("checkpoints", str(r["checkpoints"]) + (f" (head {r['head']}: the next one's parent)" if r["head"] else "")),
        ("branched from", r["origin"] or "-"),
        ("watch", f"every {interval(r['watch']['every_s'])}, last: {r['watch']['last_result'] or 'not yet'}" if r["watch"] else "-"),
        ("suspended", "yes (`zap resume` brings it back)" if r["suspended"] else "no"),
        ("created", _when(r["created_at"])),
    ]  # fmt: skip
    if r.get("note"):
        pairs.append(("note", r["note"]))
    return _lines(pairs)


def _limits(lim: dict) -> str:
    parts = ([f"memory {human_bytes(lim['memory'])}"] if lim["memory"] is not None else []) + (
        [f"{lim['cpus']:g} CPUs"] if lim["cpus"] is not None else [])
    return ", ".join(parts) or "none"


def _where(r: dict) -> str:
    """Where the checkpoint's parts are, so a user knows which hosts can use it."""
    taken = f"taken on host {r['host']}" if r["host"] else "taken here"
    images = "its images in the image store" if r["has_processes"] else "files only"
    if r["volume_in_store"]:
        return f"{taken}; {images}; its volume in the fleet's store too: any host can restore or branch it"
    return f"{taken}; {images}; its volume only on that host"


def checkpoint_text(r: dict) -> str:
    t, snap = r["timings_ms"], r["snapshot"]
    if r["has_processes"]:
        procs = f"{len(r['processes'])}, images {human_bytes(r['raw_bytes'])} ({human_bytes(r['stored_bytes'])} new in the store)"
    else:
        procs = "none (files only)"
    pairs = [
        ("checkpoint", f"{r['ref']} (id {r['id']})"),
        ("created", _when(r["created_at"])),
        ("kind", r["kind"]),
        ("message", r["message"] or "-"),
        ("tags", ", ".join(r["tags"]) or "-"),
        ("parent", r["parent"] or "-"),
        ("processes", procs),
        ("snapshot", f"{snap['path']} ({snap['backend']}" + (f", generation {snap['generation']})" if snap["generation"] else ")")),
        ("where", _where(r)),
        ("timings", f"frozen {_ms(t['frozen'])}, dump {_ms(t['dump'])}, fs snapshot {_ms(t['fs_snapshot'])}, "
                    + (f"upload {_ms(t['upload'])}, " if t.get("upload") is not None else "") + f"total {_ms(t['total'])}"),
        ("dump", f"incremental (a pre-dump stopped the pod {_ms(t['predump'])} first)" if r["incremental"]
                 else "full" if r["has_processes"] else "-"),
    ]  # fmt: skip
    out = _lines(pairs)
    for p in r["processes"] or []:
        out += f"\n  pid {p['pid']} (host {p['host_pid']}) in {p['cwd']}: {shlex.join(p['cmdline'])}"
    return out
