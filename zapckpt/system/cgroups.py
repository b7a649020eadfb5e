"""Resource limits of pods (`zap run --memory SIZE --cpus N`), as Podman's: a pod with a limit
runs in a control group of its own, `zapckpt/<state>-<pod>` under the root of each hierarchy
(`<state>`: 8 hex digits naming the state directory, so two state directories' pods of one
name never share a group). A pod without limits gets none and stays in zap's own groups.

Both layouts are handled: cgroup v2 (one unified hierarchy: memory.max, cpu.max; the
controllers are enabled on the way down) and v1 (separate memory and cpu hierarchies:
memory.limit_in_bytes, cpu.cfs_quota_us). The memory limit is on RAM; swap is not limited.

The processes get into the group by inheritance only: the first process of a start, and CRIU
itself for a restore (CRIU is then told to leave groups alone, `--manage-cgroups=ignore`, so
the restored tasks stay where CRIU was forked), join it before they exec (proc.py), so no task
of the pod ever runs outside it. A group is removed when its pod is removed or renamed."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from zapckpt.common import mountinfo
from zapckpt.common.errors import ZapError

PARENT = "zapckpt"
PERIOD_US = 100_000  # the CFS period: --cpus 1.5 is 150 ms of CPU time per 100 ms


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes
    cpus: float | None = None

    def __bool__(self) -> bool:
        return self.memory is not None or self.cpus is not None


@dataclass(frozen=True)
class Hierarchy:
    path: Path  # where it is mounted
    controllers: frozenset[str]
    unified: bool  # cgroup v2


def of_pod(pod) -> Limits:
    return Limits(pod.memory_limit, pod.cpus)


def hierarchies() -> list[Hierarchy]:
    """The mounted hierarchies that carry the memory or cpu controller."""
    out = []
    for m in mountinfo.mounts():
        if m.fstype == "cgroup2":
            try:
                ctl = frozenset((Path(m.point) / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            out.append(Hierarchy(Path(m.point), ctl & {"memory", "cpu"}, True))
        elif m.fstype == "cgroup":
            ctl = frozenset(m.super_options.split(",")) & {"memory", "cpu"}
            out.append(Hierarchy(Path(m.point), ctl, False))
    return [h for h in out if h.controllers and h.path.is_dir()]


def group_name(state_root: Path, pod: str) -> str:
    return f"{hashlib.sha256(os.fsencode(state_root)).hexdigest()[:8]}-{pod}"


def _needed(limits: Limits) -> set[str]:
    return ({"memory"} if limits.memory is not None else set()) | ({"cpu"} if limits.cpus is not None else set())


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        detail = "the value is refused" if e.errno in (errno.EINVAL, errno.EBUSY) else e.strerror
        raise ZapError(f"cannot set the pod's resource limit: writing {value.strip()!r} to {path}: {detail}") from None


def prepare(state_root: Path, pod: str, limits: Limits) -> list[str]:
    """Make the pod's groups (again) with its limits; returns the cgroup.procs files a process
    writes "0" to, to join them (empty for a pod without limits)."""
    need = _needed(limits)
    if not need:
        return []
    found = hierarchies()
    missing = need - set().union(*(h.controllers for h in found))
    if missing:
        raise ZapError(f"cannot limit the pod's {' and '.join(sorted(missing))}: no cgroup hierarchy here has the "
                       f"{' and '.join(sorted(missing))} controller (see `zap doctor`)")  # fmt: skip
    name = group_name(state_root, pod)
    procs = []
    for h in found:
        ctl = h.controllers & need
        if not ctl:
            continue
        parent = h.path / PARENT
        try:
            if h.unified:
                # v2: a controller works in a group only if every parent enables it for its children
                _enable(h.path, ctl)
                parent.mkdir(exist_ok=True)
                _enable(parent, ctl)
            else:
                parent.mkdir(exist_ok=True)
            group = parent / name
            group.mkdir(exist_ok=True)
        except OSError as e:
            raise ZapError(f"cannot make the pod's control group under {h.path}: {e.strerror}") from None
        if "memory" in ctl:
            _write(group / ("memory.max" if h.unified else "memory.limit_in_bytes"), f"{limits.memory}\n")
        if "cpu" in ctl:
            quota = max(1000, round(limits.cpus * PERIOD_US))
            if h.unified:
                _write(group / "cpu.max", f"{quota} {PERIOD_US}\n")
            else:
                _write(group / "cpu.cfs_period_us", f"{PERIOD_US}\n")
                _write(group / "cpu.cfs_quota_us", f"{quota}\n")
        procs.append(str(group / "cgroup.procs"))
    return procs


def _enable(group: Path, controllers: set[str]) -> None:
    have = set((group / "cgroup.subtree_control").read_text().split())
    if controllers - have:
        (group / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(controllers - have)))


def groups_of(state_root: Path, pod: str) -> list[Path]:
    name = group_name(state_root, pod)
    return [g for h in hierarchies() if (g := h.path / PARENT / name).is_dir()]


def remove(state_root: Path, pod: str) -> None:
    """Remove the pod's groups once its processes are gone (the kernel lets a group go a moment
    after its last task is reaped), and zap's parent group when nothing else is in it."""
    for g in groups_of(state_root, pod):
        for _ in range(50):
            try:
                g.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise ZapError(f"cannot remove the pod's control group {g}: {e.strerror}") from None
                time.sleep(0.02)
        else:
            raise ZapError(f"the pod's control group {g} still holds processes: {(g / 'cgroup.procs').read_text().split()}")
        try:
            g.parent.rmdir()
        except OSError:
            pass  # another pod's group is in it


def move(pids: list[int], procs_files: list[str]) -> None:
    """Move running processes into the groups (`zap update` of a pod that had none). A process
    forked meanwhile is born in its parent's group: the caller lists the pids again until
    none is left outside."""
    for path in procs_files:
        for pid in pids:
            try:
                Path(path).write_text(str(pid))
            except ProcessLookupError:
                pass  # it ended meanwhile
            except OSError as e:
                if e.errno != errno.ESRCH:
                    raise ZapError(f"cannot move process {pid} into {Path(path).parent}: {e.strerror}") from None


def members(procs_file: str) -> set[int]:
    return {int(x) for x in Path(procs_file).read_text().split()}
