"""`zap doctor`: is this machine able to run zap? Each check says what is missing and the fix."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from zapckpt.common import proc
from zapckpt.criu import incremental, lazy
from zapckpt.criu import probe as criu_probe
from zapckpt.criu import runner as criu
from zapckpt.state import StateDir

INSTALL = "run `make install` in the zapckpt checkout"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _filesystems() -> set[str]:
    try:
        return {ln.split()[-1] for ln in Path("/proc/filesystems").read_text().splitlines() if ln.strip()}
    except OSError:
        return set()


def _tool(name: str, pkg: str) -> Check:
    path = shutil.which(name)
    return Check(f"tool {name}", bool(path), path or "not found",
                 "" if path else f"apt-get install {pkg}  (or {INSTALL})")  # fmt: skip


def _criu() -> list[Check]:
    try:
        binary = criu.criu_binary()
    except Exception:  # noqa: BLE001
        return [Check("criu", False, "not found", INSTALL)]
    out = [Check("criu binary", True, binary)]
    try:
        ver = criu.version(binary)
        major = int(ver.split(".")[0])
        out.append(Check("criu version", major >= criu.MIN_MAJOR, ver,
                         "" if major >= criu.MIN_MAJOR else f"CRIU >= 4 is needed on this kernel; {INSTALL}"))  # fmt: skip
    except (proc.CommandError, proc.ToolMissing, ValueError) as e:
        out.append(Check("criu version", False, str(e), INSTALL))
    res = proc.run([binary, "check"], check=False)
    text = (res.stdout + res.stderr).strip().splitlines()
    text = [ln for ln in text if not any(n in ln for n in proc.NOISE)]
    out.append(Check("criu check", res.returncode == 0, text[-1] if text else f"exit {res.returncode}",
                     "" if res.returncode == 0 else f"see `{binary} check` output; {INSTALL}"))  # fmt: skip
    out.append(_dirty_tracking(binary))
    out.append(_lazy_restore())
    # `criu check` passes for CRIUs that cannot dump one inet socket: judge it by doing that.
    try:
        out.append(Check("criu sockets probe", True, criu_probe.probe(binary)))
    except criu_probe.ProbeFailed as e:
        out.append(Check("criu sockets probe", False, str(e),
                         f"this CRIU cannot checkpoint networked pods on kernel {platform.release()}: {INSTALL} "
                         "(it builds a private CRIU >= 4.2 from Debian testing), or set ZAP_CRIU to one that passes"))  # fmt: skip
    return out


def _dirty_tracking(binary: str) -> Check:
    """Incremental dumps (criu/incremental.py) need the kernel's soft-dirty bits."""
    on = incremental.dirty_tracking(binary)
    if not on:
        detail = ("not available: this kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY is off), so every "
                  "checkpoint dumps all of a pod's memory in its frozen window; the image store still keeps only "
                  "the pages that changed")  # fmt: skip
    elif not incremental.wanted(binary):
        detail = "available, but turned off (ZAP_PREDUMP=off): every checkpoint dumps all of a pod's memory"
    else:
        detail = ("on: memory is pre-dumped while the pod runs, and the frozen window dumps only the pages "
                  "written since")  # fmt: skip
    return Check("incremental dumps", on, detail, "" if on else "a kernel built with CONFIG_MEM_SOFT_DIRTY",
                 required=False)


def _lazy_restore() -> Check:
    """Restores and branches bring memory in on demand (criu/lazy.py) where userfaultfd works."""
    on, why = lazy.mode()
    detail = (f"{why}: restore and branch return once the processes run, and their pages follow"
              if on else f"{why}: restore and branch read all of a pod's memory before it runs")  # fmt: skip
    return Check("lazy restore", on, detail, "" if on or "ZAP_LAZY" in why else
                 "a kernel with CONFIG_USERFAULTFD, and CRIU >= 4 (uffd-noncoop)", required=False)  # fmt: skip


def _cap_sys_resource() -> Check:
    """CRIU reads every dumped process's resource limits; for a process of another user that
    needs CAP_SYS_RESOURCE (containers often drop it from root)."""
    try:
        eff = next(int(ln.split()[1], 16) for ln in Path("/proc/self/status").read_text().splitlines()
                   if ln.startswith("CapEff:"))  # fmt: skip
    except (OSError, StopIteration, ValueError):
        eff = 0
    ok = bool(eff & (1 << 24))
    return Check("capability CAP_SYS_RESOURCE", ok, "present" if ok else "missing from root's capabilities",
                 "" if ok else "pods whose services run as another user (PostgreSQL, ...) cannot be checkpointed "
                 "here (CRIU: \"Can't get rlimit\"); run zap with the full capability set", required=False)  # fmt: skip


def _cgroups() -> Check:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    hybrid = Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
    v1 = Path("/sys/fs/cgroup/freezer").is_dir()
    kind = "v2" if v2 else ("hybrid (v1 + v2 at unified/)" if hybrid else ("v1" if v1 else "none"))
    return Check("cgroups", kind != "none", kind, "" if kind != "none" else "mount cgroup2 at /sys/fs/cgroup")


def _limits() -> Check:
    from zapckpt.system import cgroups

    found = {c for h in cgroups.hierarchies() for c in h.controllers}
    ok = found >= {"memory", "cpu"}
    return Check("resource limits", ok, "memory and cpu controllers" if ok else
                 f"missing the {' and '.join(sorted({'memory', 'cpu'} - found))} controller",
                 "" if ok else "`zap run --memory/--cpus` needs them (boot with cgroup_enable=memory, or enable "
                 "them in the root's cgroup.subtree_control)", required=False)  # fmt: skip


def run_checks() -> list[Check]:
    fs = _filesystems()
    state = StateDir.from_env()
    checks = [
        Check("root", os.geteuid() == 0, f"euid {os.geteuid()}", "run zap as root"),
        Check("kernel", True, platform.release()),
    ]
    for ns in ("pid", "ipc", "uts", "mnt", "net"):
        ok = Path(f"/proc/self/ns/{ns}").exists()
        checks.append(Check(f"namespace {ns}", ok, "available" if ok else "missing",
                            "" if ok else "a kernel with CONFIG_NAMESPACES and CONFIG_{PID,IPC,UTS}_NS"))  # fmt: skip
    checks.append(Check("btrfs", "btrfs" in fs, "in kernel" if "btrfs" in fs else "not in /proc/filesystems",
                        "" if "btrfs" in fs else "modprobe btrfs (or a kernel with CONFIG_BTRFS_FS)"))  # fmt: skip
    fuse_ok = "fuse" in fs and Path("/dev/fuse").exists()
    checks.append(Check("fuse", fuse_ok, "/dev/fuse present" if fuse_ok else "missing",
                        "" if fuse_ok else "modprobe fuse; apt-get install fuse3", required=False))  # fmt: skip
    loop_ok = Path("/dev/loop-control").exists()
    checks.append(Check("loop devices", loop_ok, "/dev/loop-control" if loop_ok else "missing",
                        "" if loop_ok else "modprobe loop (needed for the embedded pool)"))  # fmt: skip
    checks.append(_cgroups())
    checks.append(_limits())
    checks.append(_cap_sys_resource())
    for tool, pkg in (("btrfs", "btrfs-progs"), ("mkfs.btrfs", "btrfs-progs"), ("unshare", "util-linux"),
                      ("nsenter", "util-linux"), ("mount", "mount"), ("losetup", "mount"), ("ip", "iproute2"),
                      ("ss", "iproute2"), ("nft", "nftables")):  # fmt: skip
        checks.append(_tool(tool, pkg))
    checks.extend(_criu())
    checks.append(_pod_init())
    checks.append(_console_logger())
    checks.append(_root_propagation())
    shm_ok = Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)
    checks.append(Check("tmpfs staging", shm_ok, str(state.staging),
                        "" if shm_ok else "mount a tmpfs on /dev/shm", required=False))  # fmt: skip
    root = state.root
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    writable = os.access(probe, os.W_OK)
    checks.append(Check("state directory", writable, f"{root} ({'exists' if root.exists() else 'will be created'})",
                        "" if writable else f"make {probe} writable or set ZAP_HOME"))  # fmt: skip
    return checks


def _pod_init() -> Check:
    from zapckpt.common.errors import ZapError
    from zapckpt.pod.lifecycle import init_binary

    try:
        return Check("pod init", True, f"{init_binary()} (pid 1 of every new pod)", "")
    except ZapError:
        return Check("pod init", False, "catatonit not found", "apt-get install catatonit (or make install); "
                     "without it only `zap run --no-init` works")  # fmt: skip


def _console_logger() -> Check:
    from zapckpt.common.errors import ZapError
    from zapckpt.pod.console import logger_binary

    try:
        return Check("console logger", True, logger_binary())
    except ZapError as e:
        return Check("console logger", False, str(e), INSTALL)


def _root_propagation() -> Check:
    """Pods follow the host's unmounts when the host's mounts are shared, as systemd makes them."""
    try:
        line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if ln.split()[4] == "/")
    except (OSError, StopIteration):
        return Check("mount propagation", False, "/proc/self/mountinfo unreadable", required=False)
    shared = "shared:" in line.partition(" - ")[0]
    return Check("mount propagation", shared, "/ is shared: pods follow the host's unmounts" if shared else
                 "/ is private: a disk the host unmounts stays busy while a pod that saw it runs (zap's own "
                 "pools do propagate)", "" if shared else "mount --make-rshared / (as systemd does at boot)",
                 required=False)  # fmt: skip


def report(checks: list[Check]) -> dict:
    return {"ok": all(c.ok for c in checks if c.required), "checks": [asdict(c) for c in checks]}
