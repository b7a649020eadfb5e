"""Each pod's own network namespace, as Podman's default gives it: loopback, and for `--net pod`
a veth to the host bridge with an address from the state directory's subnet, a default route
through the bridge and outbound NAT.

The namespace is a named one (`ip netns`, /run/netns/zap-<tag>-<pod>) so that it outlives the
pod's processes: a `--stop` checkpoint and its restore keep the same namespace, address and
connection locks. After a reboot (/run is gone) it is made again from the catalog before a
pod starts, is restored or branched. `zap deinit` removes all of it.

What happens to TCP connections (the rule the README states):
- Connections between the pod's own processes (loopback or its own address) always come back.
- Connections to peers outside come back only when the checkpoint restored is the one whose
  `--stop` dump still holds them under CRIU's network lock (pods.net_locked_by). Otherwise
  they are aborted right after the restore, so clients see a reset and reconnect.
- A branch gets its own namespace and address. It also carries the original's address as a
  private alias on its loopback, so connections inside the pod come back; packets from that
  alias never leave the branch (an nftables rule in its namespace drops them), so aborting the
  branch's copies of outside connections cannot reset the original's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from catalog import Pod, queries
from zapckpt.common import proc
from zapckpt.common.errors import UsageError, ZapError

from . import nftables

MODES = ("pod", "none", "host")
DEFAULT_BRIDGE = "zap0"
DEFAULT_SUBNET = "10.89.0.0/24"
NETNS_DIR = Path("/run/netns")
POD_IFNAME = "eth0"


@dataclass(frozen=True)
class NetConfig:
    bridge: str
    subnet: ipaddress.IPv4Network
    tag: str  # distinguishes this state directory's namespaces from another's
    host_id: int = 0  # the host (catalog/hosts.py) whose bridge this is

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1


def config(s: Session, host_id: int, state_root: Path) -> NetConfig:
    """The host's bridge and subnet: chosen once (ZAP_BRIDGE / ZAP_SUBNET or the defaults) and
    kept in the catalog, so addresses never move. Hosts of a fleet given the same subnet (each
    in a network of its own, or one L2 network) share its addresses: a pod keeps its address
    when another of them adopts it."""
    bridge = queries.get_setting(s, host_id, "net.bridge")
    subnet = queries.get_setting(s, host_id, "net.subnet")
    if bridge is None or subnet is None:
        bridge = os.environ.get("ZAP_BRIDGE") or DEFAULT_BRIDGE
        subnet = os.environ.get("ZAP_SUBNET") or DEFAULT_SUBNET
        if not (1 <= len(bridge) <= 15 and bridge.replace("-", "").replace("_", "").isalnum()):
            raise UsageError(f"bad bridge name {bridge!r} (ZAP_BRIDGE): up to 15 letters, digits, - and _")
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError:
            raise UsageError(f"bad subnet {subnet!r} (ZAP_SUBNET): expected an IPv4 network like 10.89.0.0/24") from None
        if net.num_addresses < 8:
            raise UsageError(f"subnet {subnet} is too small (ZAP_SUBNET): at least a /29")
        queries.set_setting(s, host_id, "net.bridge", bridge)
        queries.set_setting(s, host_id, "net.subnet", str(net))
        s.commit()
    tag = hashlib.sha1(str(state_root).encode()).hexdigest()[:6]
    return NetConfig(bridge, ipaddress.IPv4Network(subnet), tag, host_id)


def netns_name(cfg: NetConfig, pod_name: str) -> str:
    return f"zap-{cfg.tag}-{pod_name}"


def netns_path(cfg: NetConfig, pod: Pod) -> str | None:
    """The namespace the pod's processes run in; None for `--net host`."""
    return None if pod.net == "host" else str(NETNS_DIR / netns_name(cfg, pod.name))


def host_ifname(cfg: NetConfig, pod_name: str) -> str:
    return "zv" + hashlib.blake2b(netns_name(cfg, pod_name).encode(), digest_size=6).hexdigest()


def addresses_in_use(s: Session, cfg: NetConfig) -> set[str]:
    """The addresses of the pods of every host on the same subnet (this one included)."""
    same = queries.hosts_with_setting(s, "net.subnet", str(cfg.subnet)) | {cfg.host_id}
    return queries.pod_addresses(s, same)


def allocate_address(s: Session, cfg: NetConfig) -> str:
    used = addresses_in_use(s, cfg)
    for host in cfg.subnet.hosts():
        if host != cfg.gateway and str(host) not in used:
            return str(host)
    raise ZapError(f"no free address left in {cfg.subnet} (ZAP_SUBNET)")


def _link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "link", "show", name]
    return proc.run(argv, check=False).returncode == 0


def _ensure_bridge(cfg: NetConfig) -> None:
    if _link_exists(cfg.bridge):
        return
    proc.run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    proc.run(["ip", "addr", "add", f"{cfg.gateway}/{cfg.subnet.prefixlen}", "dev", cfg.bridge])
    proc.run(["ip", "link", "set", cfg.bridge, "up"])
    # Forwarding for outbound NAT and for published ports reached from other machines (as
    # Podman does); route_localnet on our own bridge only, for the host's 127.0.0.1:HOSTPORT.
    for key, value in (("net/ipv4/ip_forward", "1"), (f"net/ipv4/conf/{cfg.bridge}/route_localnet", "1")):
        Path("/proc/sys", key).write_text(value)


def sync_nat(s: Session, cfg: NetConfig) -> None:
    """Rebuild zap's nftables table from every pod's published ports."""
    published = [(p.address, spec) for p in queries.list_pods(s, cfg.host_id) if p.net == "pod" and p.address
                 for spec in p.ports]  # fmt: skip
    nftables.apply(cfg.bridge, str(cfg.subnet), published)


def ensure(s: Session | None, cfg: NetConfig, pod: Pod) -> None:
    """Make the pod's namespace (and its link to the bridge) if it is not there: idempotent."""
    if pod.net == "host":
        return
    name = netns_name(cfg, pod.name)
    if not (NETNS_DIR / name).exists():
        proc.run(["ip", "netns", "add", name])
        proc.run(["ip", "-n", name, "link", "set", "lo", "up"])
        # Answer ARP only for the addresses of the asking interface: a branch carries its
        # original's address on loopback, and must never claim it on the bridge.
        proc.run(["nsenter", f"--net={NETNS_DIR / name}", "--", "sysctl", "-q", "-w",
                  "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"])  # fmt: skip
    if pod.net != "pod" or _link_exists(POD_IFNAME, name):
        return  # the usual case on restore: one look, nothing to make
    _ensure_bridge(cfg)
    hostif = host_ifname(cfg, pod.name)
    if _link_exists(hostif):
        proc.run(["ip", "link", "del", hostif], check=False)
    proc.run(["ip", "link", "add", hostif, "type", "veth", "peer", "name", POD_IFNAME, "netns", name])
    proc.run(["ip", "link", "set", hostif, "master", cfg.bridge, "up"])
    proc.run(["ip", "-n", name, "addr", "add", f"{pod.address}/{cfg.subnet.prefixlen}", "dev", POD_IFNAME])
    proc.run(["ip", "-n", name, "link", "set", POD_IFNAME, "up"])
    proc.run(["ip", "-n", name, "route", "add", "default", "via", str(cfg.gateway)])
    if s is not None:
        sync_nat(s, cfg)  # after a reboot or deinit the table is gone too


def add_origin_alias(cfg: NetConfig, pod: Pod, original_address: str) -> None:
    """A branch keeps the original's address on its loopback (connections inside the pod that
    used it come back) and drops every packet from it that would leave the branch."""
    if pod.net != "pod" or not original_address or original_address == pod.address:
        return
    name = netns_name(cfg, pod.name)
    proc.run(["ip", "-n", name, "addr", "add", f"{original_address}/32", "dev", "lo"], check=False)
    rules = (f"table ip zapckpt_alias {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n"
             f'    oifname != "lo" ip saddr {original_address} drop\n  }}\n}}\n')  # fmt: skip
    proc.run(["nsenter", f"--net={NETNS_DIR / name}", "--", "nft", "-f", "-"], input=rules)


def local_addresses(cfg: NetConfig, pod: Pod) -> list[str]:
    """The addresses a connection may have at both ends and still be inside the pod."""
    if pod.net == "host":
        return []
    out = proc.run(["ip", "-n", netns_name(cfg, pod.name), "-o", "-4", "addr", "show"], check=False).stdout
    return sorted({f.split("/")[0] for ln in out.splitlines() for i, f in enumerate(ln.split()) if i == 3})


def abort_external(cfg: NetConfig, pod: Pod) -> int:
    """Abort (RST) every TCP connection of the pod whose peer is outside it; returns how many.
    Runs after a restore or branch that must not keep outside connections."""
    if pod.net == "host":
        return 0
    locals_ = local_addresses(cfg, pod)
    expr: list[str] = ["not", "dst", "127.0.0.0/8"]
    for a in locals_:
        if not a.startswith("127."):
            expr += ["and", "not", "dst", a]
    argv = ["nsenter", f"--net={NETNS_DIR / netns_name(cfg, pod.name)}", "--",
            "ss", "-K", "-t", "-n", "-H", "state", "connected", *expr]  # fmt: skip
    out = proc.run(argv, check=False).stdout
    return sum(1 for ln in out.splitlines() if ln.strip())


def release_locks(cfg: NetConfig, pod: Pod, run_id: str | None = None) -> list[str]:
    """Drop the CRIU connection locks a --stop dump left: every one in the pod's own namespace;
    in the host's (`--net host`), only the table of that dump (run_id)."""
    if pod.net == "host":
        if run_id:
            name = nftables.criu_lock_table(run_id)
            nftables.delete_table("inet", name)
            return [name]
        return []
    path = netns_path(cfg, pod)
    if path is None or not Path(path).exists():
        return []
    return nftables.delete_criu_locks(path)


def remove(cfg: NetConfig, pod: Pod) -> None:
    """Delete the pod's namespace (its veth goes with it)."""
    if pod.net == "host":
        return
    name = netns_name(cfg, pod.name)
    if (NETNS_DIR / name).exists():
        proc.run(["ip", "netns", "del", name], check=False)
    hostif = host_ifname(cfg, pod.name)
    if _link_exists(hostif):
        proc.run(["ip", "link", "del", hostif], check=False)


def teardown(cfg: NetConfig) -> None:
    """`zap deinit`: every namespace of this state directory, the bridge, and zap's table."""
    prefix = f"zap-{cfg.tag}-"
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if entry.name.startswith(prefix):
                proc.run(["ip", "netns", "del", entry.name], check=False)
    if _link_exists(cfg.bridge):
        proc.run(["ip", "link", "del", cfg.bridge], check=False)
    nftables.remove(cfg.bridge)
