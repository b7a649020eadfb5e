"""The one nftables table zap owns on the host: outbound NAT for the pods' subnet and the
published ports (DNAT, from other machines and from the host itself). It is rebuilt whole from
the catalog after every change, in one atomic `nft -f` transaction, and removed by `deinit`."""

from __future__ import annotations

from zapckpt.common import proc


def table_name(bridge: str) -> str:
    return f"zapckpt_{bridge}".replace("-", "_").replace(".", "_")


def render(bridge: str, subnet: str, published: list[tuple[str, dict]]) -> str:
    """The table's text; published: (pod address, port spec) pairs."""
    t = table_name(bridge)
    dnat = []
    for address, p in published:
        match = f"ip daddr {p['host_ip']}" if p["host_ip"] else "fib daddr type local"
        dnat.append(f"{match} {p['proto']} dport {p['host_port']} dnat to {address}:{p['pod_port']}")
    rules = "\n".join(f"    {r}" for r in dnat)
    return f"""table ip {t}
delete table ip {t}
table ip {t} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{rules}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
{rules}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} ip daddr != {subnet} oifname != "{bridge}" masquerade
    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
  }}
}}
"""


def apply(bridge: str, subnet: str, published: list[tuple[str, dict]]) -> None:
    proc.run(["nft", "-f", "-"], input=render(bridge, subnet, published))


def remove(bridge: str) -> None:
    t = table_name(bridge)
    proc.run(["nft", "-f", "-"], input=f"table ip {t}\ndelete table ip {t}\n", check=False)


def delete_criu_locks(netns_path: str | None) -> list[str]:
    """Remove the connection-lock tables CRIU left in a pod's network namespace (a --stop dump
    keeps them so that nothing escapes until the restore)."""
    enter = ["nsenter", f"--net={netns_path}", "--"] if netns_path else []
    out = proc.run([*enter, "nft", "list", "tables"], check=False).stdout
    gone = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith("CRIU-"):
            proc.run([*enter, "nft", "delete", "table", parts[1], parts[2]], check=False)
            gone.append(parts[2])
    return gone


def delete_table(family: str, name: str) -> None:
    """Delete one table of the host's namespace if it is there."""
    proc.run(["nft", "-f", "-"], input=f"table {family} {name}\ndelete table {family} {name}\n", check=False)


def criu_lock_table(run_id: str) -> str:
    """CRIU's lock table for a dump: it formats "inet CRIU-<run id>" into 32 bytes (31 and NUL)."""
    return f"inet CRIU-{run_id}"[:31].split(" ", 1)[1]
