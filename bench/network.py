#!/usr/bin/env python3
"""Figures for pods with networks of their own (issue 11).

  frozen_net_256m   `zap checkpoint` of a 256 MiB pod that also holds a TCP listener, 16
                    established loopback connections and a UDP socket, in its own network
                    namespace: CRIU's frozen_time. Baseline: raw `criu dump --leave-running` of the
                    same tree into tmpfs with the same options (--tcp-established, the nftables
                    network lock, in the pod's namespaces). Target <= 1.10x.
  branch_net        `zap branch` of a checkpoint of such a pod (64 MiB) with --net pod: the
                    branch gets its own namespace, veth, address, loopback alias and lock rule.
                    Baseline: the same branch of the same workload started with --net none.
                    Target <= 1.2x.
  net_create        what making a pod's network costs: podnet.ensure() in-process (namespace,
                    sysctls, veth to the bridge, address, route, NAT table), against the bare
                    `ip netns add` + `ip link add ... veth` + address + route commands. Report only.

    .venv/bin/python bench/network.py [--runs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, figure, raw_dump, start_memhog, state_dir, wait_for, write_part, zap, zap_env  # noqa: E402

RAW = Path("/dev/shm/zapbench-raw-net")

# A second process of the pod: a listener, 16 established connections to it and a UDP socket.
SOCKETS = """
import socket, time
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("0.0.0.0", 7000)); lst.listen(64)
pairs = []
for _ in range(16):
    c = socket.create_connection(("127.0.0.1", 7000)); s, _ = lst.accept(); pairs.append((c, s))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7001))
open("sockets.ready", "w").write("ok")
while True:
    for c, s in pairs:
        c.sendall(b"x"); s.recv(1)
    time.sleep(0.05)
"""


def networked_pod(home: Path, name: str, mib: int, net: str) -> int:
    pid = start_memhog(home, name, mib, net)
    zap(home, "exec", "-d", name, "--", "python3", "-c", SOCKETS)
    ready = home / "pool" / "pods" / name / "sockets.ready"
    wait_for(ready.exists, what=f"{name}'s sockets")
    return pid


def frozen_net(home: Path, runs: int) -> dict:
    pid = networked_pod(home, "net256", 256, "pod")
    ours, raw = [], []
    for r in range(runs):
        print(f"network frozen 256m: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        for side in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
            if side == "raw":
                raw.append(raw_dump(pid, RAW)["frozen_ms"])
                shutil.rmtree(RAW, ignore_errors=True)
            else:
                rec = json.loads(zap(home, "checkpoint", "net256", "--json", "-m", "bench").stdout)
                ours.append(rec["timings_ms"]["frozen"])
    zap(home, "rm", "--force", "net256")
    return figure("frozen_net_256m", "ms", ours, raw,
                  "criu dump --leave-running into tmpfs, same tree and network options (frozen_time)", target=1.10)  # fmt: skip


def branch_net(home: Path, runs: int) -> dict:
    for name, net in (("bnet", "pod"), ("bnone", "none")):
        networked_pod(home, name, 64, net)
        zap(home, "checkpoint", name)
    ours, base = [], []
    for r in range(runs):
        print(f"network branch: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        for name in ("bnet", "bnone") if r % 2 == 0 else ("bnone", "bnet"):
            t = time.perf_counter()
            zap(home, "branch", f"{name}@1", f"{name}-b")
            (ours if name == "bnet" else base).append(time.perf_counter() - t)
            zap(home, "rm", "--force", f"{name}-b")
            subprocess.run(["sync"])
    for name in ("bnet", "bnone"):
        zap(home, "rm", "--force", name)
    return figure("branch_net", "s", ours, base, "zap branch of the same workload with --net none", target=1.2)


def net_create(home: Path, runs: int) -> dict:
    import os

    os.environ.update(zap_env(home))
    from catalog import Pod
    from zapckpt.context import Context
    from zapckpt.net import podnet

    ctx = Context()
    cfg = ctx.net
    ours, raw = [], []
    try:
        for r in range(runs):
            for side in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
                if side == "ours":
                    pod = Pod(name=f"nc{r}", net="pod", address=str(cfg.subnet.network_address + 200 + r), ports=[])
                    t = time.perf_counter()
                    with ctx.catalog.session() as s:
                        podnet.ensure(s, cfg, pod)
                    ours.append((time.perf_counter() - t) * 1000)
                    podnet.remove(cfg, pod)
                else:
                    ns, hif = f"zapbench-raw{r}", f"zbr{r}"
                    addr = str(cfg.subnet.network_address + 230 + r)
                    t = time.perf_counter()
                    for argv in (["ip", "netns", "add", ns], ["ip", "-n", ns, "link", "set", "lo", "up"],
                                 ["ip", "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", ns],
                                 ["ip", "link", "set", hif, "master", cfg.bridge, "up"],
                                 ["ip", "-n", ns, "addr", "add", f"{addr}/{cfg.subnet.prefixlen}", "dev", "eth0"],
                                 ["ip", "-n", ns, "link", "set", "eth0", "up"],
                                 ["ip", "-n", ns, "route", "add", "default", "via", str(cfg.gateway)]):  # fmt: skip
                        subprocess.run(argv, check=True, capture_output=True)
                    raw.append((time.perf_counter() - t) * 1000)
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    finally:
        ctx.close()
    return figure("net_create", "ms", ours, raw, "the bare ip netns/veth/address/route commands")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parts" / "network.json")
    args = ap.parse_args()
    with state_dir("8G") as home:
        # the bridge exists once the first networked pod does
        figures = [frozen_net(home, args.runs), branch_net(home, args.runs), net_create(home, args.runs)]
    write_part(args.out, figures, vars(args) | {"out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
