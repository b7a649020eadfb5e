"""`-p/--publish [HOSTIP:]HOSTPORT:PODPORT[/tcp|/udp]` specs, as Podman and Docker write them."""

from __future__ import annotations

import ipaddress

from zapckpt.common.errors import UsageError


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"bad --publish {spec!r}: {text!r} is not a port (1-65535)")
    return int(text)


def parse(spec: str) -> dict:
    """One spec as {"host_ip", "host_port", "pod_port", "proto"} (host_ip None: every address)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"bad --publish {spec!r}: the protocol is tcp or udp")
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, (host_port, pod_port) = None, parts
    elif len(parts) == 3:
        host_ip, host_port, pod_port = parts
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip))
        except ValueError:
            raise UsageError(f"bad --publish {spec!r}: {host_ip!r} is not an IPv4 address") from None
    else:
        raise UsageError(f"bad --publish {spec!r}: expected [HOSTIP:]HOSTPORT:PODPORT[/tcp|/udp]")
    return {"host_ip": host_ip, "host_port": _port(host_port, spec), "pod_port": _port(pod_port, spec), "proto": proto}


def parse_all(specs: list[str]) -> list[dict]:
    ports = [parse(s) for s in specs]
    seen = set()
    for p in ports:
        key = (p["host_ip"], p["host_port"], p["proto"])
        if key in seen:
            raise UsageError(f"host port {p['host_port']}/{p['proto']} is published twice")
        seen.add(key)
    return ports


def render(p: dict) -> str:
    return f"{p['host_ip'] + ':' if p['host_ip'] else ''}{p['host_port']}:{p['pod_port']}/{p['proto']}"
