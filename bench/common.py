"""What the benchmark scripts share: run statistics, the figure record of bench/results/latest.json,
the machine description, a throw-away state directory, the `zap` command as users type it, and
the pods and raw CRIU dumps several parts measure.

A figure is {"name", "unit", "ours": {median, min, max, runs}, "baseline": {name, median, min,
max, runs} | null, "ratio_median", "target", "met"}; `ratio_median` is ours/baseline of the
medians, and `target` is read against the ratio (`better` says which way) unless `target_on` is
"ours" (an absolute bound on our median)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the parts call zapckpt in-process too
ZAP = [sys.executable, "-m", "zapckpt"]  # `zap` as users run it (through the zap server once it runs)


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def figure(name: str, unit: str, ours: list[float], base: list[float] | None = None, base_name: str | None = None,
           target: float | None = None, better: str = "lower", target_on: str = "ratio", **extra) -> dict:  # fmt: skip
    o = stats(ours)
    b = stats(base) if base else None
    ratio = o["median"] / b["median"] if b and b["median"] else None
    if target is None:
        met = None
    else:
        value = o["median"] if target_on == "ours" else ratio
        met = value is not None and (value <= target if better == "lower" else value >= target)
    return {"name": name, "unit": unit, "ours": o, "baseline": b and {"name": base_name, **b},
            "ratio_median": ratio, "target": target, "target_on": target_on, "better": better, "met": met,
            **extra}  # fmt: skip


def target_text(f: dict) -> str:
    if f.get("target") is None:
        return "-"
    op = "<=" if f.get("better", "lower") == "lower" else ">="
    on = f"{f['unit']}" if f.get("target_on") == "ours" else "x baseline"
    return f"{op} {f['target']:g} {on}"


def print_table(figures: list[dict], file=None) -> None:
    print(markdown_table(figures), file=file or sys.stdout)


def markdown_table(figures: list[dict]) -> str:
    lines = ["| figure | unit | ours: median (min-max) | baseline: median (min-max) | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in figures:
        o, b = f["ours"], f["baseline"]
        ratio = f"{f['ratio_median']:.2f}" if f["ratio_median"] is not None else "-"
        met = "-" if f["met"] is None else "yes" if f["met"] else "**NO**"
        base = f"{b['median']:.3g} ({b['min']:.3g}-{b['max']:.3g}) {b['name']}" if b else "-"
        lines.append(f"| {f['name']} | {f['unit']} | {o['median']:.3g} ({o['min']:.3g}-{o['max']:.3g}) | {base} "
                     f"| {ratio} | {target_text(f)} | {met} |")  # fmt: skip
    return "\n".join(lines)


def machine() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    from zapckpt.criu import runner as criu

    return {"hostname": platform.node(), "kernel": os.uname().release, "cpus": os.cpu_count(), "cpu_model": cpu,
            "mem_mib": mem, "python": platform.python_version(), "criu": criu.version(),
            "btrfs_progs": first(["btrfs", "--version"]), "os": first(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"])}  # fmt: skip


def write_part(out: Path, figures: list[dict], args: dict, **extra) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "args": args, "figures": figures, **extra}
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print_table(figures)


def zap_env(home: Path) -> dict:
    """ZAP_HOME, and a bridge and subnet of the state directory's own (never a user's zap0)."""
    import hashlib

    tag = hashlib.sha1(str(home).encode()).hexdigest()
    subnet = f"10.{210 + int(tag[6:8], 16) % 40}.{int(tag[8:10], 16)}.0/24"
    return dict(os.environ, ZAP_HOME=str(home), ZAP_BRIDGE=f"zb{tag[:6]}", ZAP_SUBNET=subnet)


def zap(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (a fresh Python process each time)."""
    env = zap_env(home)
    res = subprocess.run([*ZAP, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise RuntimeError(f"zap {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def wait_for(pred, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@contextmanager
def state_dir(size: str = "8G", prefix: str = "zapbench-") -> Iterator[Path]:
    """A throw-away ZAP_HOME with the embedded default pool (a btrfs loop file), removed with
    everything in it (pods, mounts, loop device) at the end."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        zap(home, "init", "--size", size)
        yield home
    finally:
        subprocess.run([*ZAP, "deinit", "--purge"], env=zap_env(home), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def fill_volume(path: Path, total_mib: int, file_mib: int = 64, small_files: int = 1000) -> None:
    """total_mib of incompressible data in file_mib files, plus small files (a tree, as a service's
    data directory would be), written and synced."""
    block = os.urandom(1 << 20)
    path.mkdir(parents=True, exist_ok=True)
    left = total_mib
    i = 0
    while left > 0:
        n = min(file_mib, left)
        with open(path / f"data{i:04d}.bin", "wb") as f:
            for k in range(n):
                f.write(block[k % 997:] + block[: k % 997])  # no two MiB alike within a file
        left -= n
        i += 1
    small = path / "small"
    small.mkdir(exist_ok=True)
    for k in range(small_files):
        (small / f"f{k:05d}").write_bytes(block[k : k + 512])
    os.sync()


# --- pods the parts measure ------------------------------------------------------------
def pod_program(path: Path) -> Path:
    """path, where a pod sees it: pods without --rootfs have a /tmp of their own, so a program
    of a checkout in the host's /tmp is run from a copy under /run (removed at exit)."""
    if not str(path).startswith("/tmp/"):
        return path
    import atexit

    copies = Path(f"/run/zapbench-{os.getpid()}")
    if not copies.exists():
        copies.mkdir(mode=0o755)
        atexit.register(shutil.rmtree, copies, True)
    copy = copies / path.name
    shutil.copyfile(path, copy)
    return copy


MEMHOG = ROOT / "tests" / "workloads" / "memhog.py"


def size_name(mib: int) -> str:
    return f"{mib // 1024}g" if mib >= 1024 and mib % 1024 == 0 else f"{mib}m"


def start_memhog(home: Path, name: str, mib: int, net: str = "pod") -> int:
    zap(home, "run", name, "--net", net, "--env", f"MEMHOG_MIB={mib}", "--env", "MEMHOG_QUIET=1", "--", "python3",
        str(pod_program(MEMHOG)))  # fmt: skip
    log = home / "console" / f"{name}.log"  # its console (zapckpt/pod/console.py)
    wait_for(lambda: log.exists() and "holding" in log.read_text(), what=f"{name} to fill its memory")
    return pod_info(home, name)["pid"]


def pod_info(home: Path, name: str) -> dict:
    for p in json.loads(zap(home, "ps", "--json").stdout)["pods"]:
        if p["name"] == name:
            return p
    raise RuntimeError(f"pod {name} not found")


def raw_dump(pid: int, out: Path) -> dict:
    """criu dump --leave-running into tmpfs, as zap runs it minus the hook; CRIU's own timings."""
    from zapckpt.criu import runner as criu
    from zapckpt.criu.images import read_dump_stats
    from zapckpt.system import procinfo

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    # The pod's /dev/shm is its own: the image directory is reached through our root, as zap does.
    subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "--", criu.criu_binary(), "dump", "-t", str(pid),
                    "-D", criu.through_host_root(out), "-o", "dump.log", "--leave-running", "--file-locks",
                    *criu.net_opts(procinfo.has_tcp_connections(pid))], check=True, capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t
    st = read_dump_stats(out)
    return {"wall_s": wall, "frozen_ms": st.frozen_ms, "memdump_ms": st.memdump_ms, "memwrite_ms": st.memwrite_ms,
            "freezing_ms": st.freezing_ms}  # fmt: skip
