"""Pods: a process tree in its own pid/ipc/uts/mount namespaces, working in its own volume."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalog import Pod, queries
from zapckpt import settings
from zapckpt.common import proc
from zapckpt.common.errors import AlreadyExists, UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.names import check_name
from zapckpt.net import podnet
from zapckpt.pod import console
from zapckpt.pod.console import start_logger
from zapckpt.pod.mounts import LOG_DIR, LOG_NAME, open_console_log
from zapckpt.pod.status import live_state
from zapckpt.system import cgroups, procinfo

START_TIMEOUT = 30.0
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


def pod_env(pod: Pod) -> dict[str, str]:
    env = dict(BASE_ENV)
    env.update(pod.env or {})
    env["ZAP_POD"] = pod.name
    env["ZAP_POD_PATH"] = "/" if pod.rootfs else pod.mount_path
    return env


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k or not k.replace("_", "a").isalnum() or k[0].isdigit():
            raise UsageError(f"bad --env {p!r}: expected KEY=VALUE")
        env[k] = v
    return env


def _resolve_cwd(mount_path: str, cwd: str | None) -> str:
    """The working directory as the pod's processes see it (inside the root of a system pod:
    call with mount_path "/")."""
    if not cwd:
        return mount_path
    if not os.path.isabs(cwd):
        cwd = os.path.join(mount_path, cwd)
    return os.path.normpath(cwd)


# Podman's init for `--init` (Debian package catatonit); ZAP_INIT names another build of it.
INIT_PATHS = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")


def init_binary() -> str:
    """The small init every new pod runs as its pid 1 (see pod/init.py)."""
    for path in filter(None, (os.environ.get("ZAP_INIT"), *INIT_PATHS)):
        if os.access(path, os.X_OK):
            return path
    raise ZapError("the pod init (catatonit) is missing: `make install` installs it; "
                   "`zap run --no-init` runs the command itself as pid 1")  # fmt: skip


def start_processes(ctx: Context, pod: Pod, netns: str | None) -> tuple[int, int]:
    """Start pod.command as pid 1 of fresh namespaces (in the network namespace `netns`, or the
    host's for None), its stdout and stderr a new pipe to its console log (pod.console_pipe);
    returns (host pid, start time)."""
    console, pipe = start_logger(ctx.state.console_log(pod.name), settings.log_max(ctx))
    try:
        pid, start = _start_processes(pod, netns, ctx.state.root, console)
    finally:
        os.close(console)
    pod.console_pipe = pipe
    pod.exit_code = pod.exited_at = None  # of the run before
    return pid, start


def _start_processes(pod: Pod, netns: str | None, state_root: Path, console: int) -> tuple[int, int]:
    spec = {
        "command": pod.command,
        "env": pod_env(pod),
        "cwd": pod.cwd,
        "volume": pod.volume,
        "mount_path": pod.mount_path,
        "rootfs": bool(pod.rootfs),
        "hostname": pod.name,
        "volumes": pod.volumes or [],
        "private_tmp": pod.private_tmp,
        "host_readonly": not pod.rootfs and not pod.host_writable,
        "state_root": str(state_root),
        "init": init_binary() if pod.init else None,
        "console": f"/proc/{os.getpid()}/fd/{console}",
    }
    # The pod's init reports through a pipe it opens by path: "pid N" once it forked the pod's
    # pid 1 (its host pid), "error ..." if the set-up fails, EOF once the command is exec'd (the
    # pipe is close-on-exec). We hold the write end until "pid", so that it can be opened.
    r, w = os.pipe()
    spec["ready"] = f"/proc/{os.getpid()}/fd/{w}"
    enter = ["nsenter", f"--net={netns}", "--"] if netns else []
    argv = [*enter, sys.executable, "-m", "zapckpt.pod.init", json.dumps(spec)]
    env = {"PATH": BASE_ENV["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)}
    # Joined before the first exec: nothing of the pod ever runs outside its limits.
    join = cgroups.prepare(state_root, pod.name, cgroups.of_pod(pod))
    child = proc.spawn(argv, env=env, stderr=subprocess.PIPE, join_cgroups=join)
    pid = None
    error = None
    buf = b""
    deadline = time.monotonic() + START_TIMEOUT
    with os.fdopen(r, "rb", buffering=0) as f:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([f], [], [], 0.1)
            if not ready:
                if w >= 0 and child.poll():
                    break  # failed before it could fork the pod's pid 1
                continue
            chunk = f.read(4096)
            if not chunk:
                break  # EOF: the pod's pid 1 exec'd the command (or exited)
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith("pid ") and pid is None:
                    pid = int(line.split()[1])
                    os.close(w)  # the pod's pid 1 holds its own copy: EOF comes with its exec
                    w = -1
                elif line.startswith("error "):
                    error = line[6:]
        else:
            error = f"pod {pod.name!r} did not start within {START_TIMEOUT:g}s"
    if w >= 0:
        os.close(w)
    child.wait()  # it exits as soon as it has forked
    err = child.stderr.read().decode(errors="replace").strip().splitlines() if child.stderr else []
    child.stderr.close()
    if error or pid is None:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise ZapError(error or f"pod {pod.name!r} failed to start: {err[-1] if err else 'its init did not start'}")
    start = procinfo.starttime(pid)
    return pid, start or 0


def parse_volumes(specs: list[str]) -> list[dict]:
    """--volume HOSTDIR:PODDIR: a host directory the pod shares (never rolled back)."""
    out = []
    for spec in specs:
        host, sep, inside = spec.partition(":")
        if not sep or not os.path.isabs(host) or not os.path.isabs(inside):
            raise UsageError(f"bad --volume {spec!r}: expected HOSTDIR:PODDIR, both absolute")
        if not os.path.isdir(host):
            raise UsageError(f"--volume {spec!r}: {host} is not a directory")
        out.append({"host": os.path.normpath(host), "pod": os.path.normpath(inside)})
    return out


def run(ctx: Context, name: str, command: list[str], env: dict[str, str], cwd: str | None,
        rootfs: str | None = None, start: bool = True, net: str = "pod", ports: list[dict] | None = None,
        volumes: list[dict] | None = None, init: bool = True, limits: cgroups.Limits = cgroups.Limits(),
        restart: tuple[str, int | None] = ("no", None), host_writable: bool = False) -> Pod:  # fmt: skip
    """`zap run` (start=True) and `zap create` (start=False): a new pod with a fresh volume, or
    with a root file system made from `rootfs` (see rootfs.py), in its own network (net "pod":
    an address on the bridge, `ports` published; "none": loopback only) or the host's. init:
    a small init is the pod's pid 1 and the command its child (see pod/init.py). limits: its
    memory and CPU (system/cgroups.py). host_writable: a volume pod may write the host's tree
    (otherwise it sees it read-only, but for its own parts: pod/mounts.py)."""
    check_name(name)
    if host_writable and rootfs:
        raise UsageError("--host-writable is for a pod without --rootfs (a system pod's root is its own volume)")
    if start and not command:
        raise UsageError("no command given: zap run NAME -- CMD [ARGS...]")
    if net not in podnet.MODES:
        raise UsageError(f"unknown --net {net!r} (pod, none or host)")
    if ports and net != "pod":
        raise UsageError("--publish needs --net pod (the pod's own address to forward to)")
    # `-v DIR:/tmp` shares a /tmp on purpose; otherwise a volume pod's /tmp is its own.
    private_tmp = not rootfs and not any(v["pod"] == "/tmp" for v in volumes or [])
    for v in volumes or []:
        if (str(ctx.state.mount_path(name)) + "/").startswith(v["pod"].rstrip("/") + "/"):
            raise UsageError(f"--volume {v['host']}:{v['pod']}: it would hide the pod's own files at "
                             f"{ctx.state.mount_path(name)}")  # fmt: skip
        # A volume pod sees the host's tree: mount points are made only inside its own path
        # (and its private /tmp).
        own = [str(ctx.state.mount_path(name)), *(["/tmp"] if private_tmp else [])]
        inside_own = any((v["pod"] + "/").startswith(top + "/") for top in own)
        if not rootfs and not inside_own and not os.path.isdir(v["pod"]):
            raise UsageError(f"--volume {v['host']}:{v['pod']}: {v['pod']} does not exist (a pod without --rootfs "
                             f"shares the host's tree: use an existing directory, one under /tmp or under {ctx.state.mount_path(name)})")
    if rootfs:
        from zapckpt.pod import rootfs as roots

        kind, what = roots.parse(rootfs)  # bad specs fail before anything is made
        rootfs = f"debian:{what}" if kind == "debian" else what
    pool = ctx.pool
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            if queries.find_pod(s, name):
                raise AlreadyExists(f"pod {name!r} already exists")
        volume = pool.volume_of(name)
        mount_path = ctx.state.mount_path(name)
        if rootfs:
            roots.populate(pool, rootfs, volume, ctx.log_path(name, "rootfs"))
        else:
            pool.backend.create_volume(volume)
        seen_from = "/" if rootfs else str(mount_path)
        pod = Pod(
            name=name, volume=str(volume), mount_path=str(mount_path), command=command, env=env,
            cwd=_resolve_cwd(seen_from, cwd), desired_state="running" if start else "stopped", rootfs=rootfs,
            net=net, ports=ports or [], volumes=volumes or [],
            private_tmp=private_tmp, init=init, memory_limit=limits.memory, cpus=limits.cpus,
            restart=restart[0], restart_max=restart[1], host_writable=host_writable, host_id=ctx.host_id,
        )  # fmt: skip
        try:
            if net == "pod":
                with ctx.catalog.session() as s:
                    check_ports_free(s, name, pod.ports, ctx.host_id)
                    pod.address = podnet.allocate_address(s, ctx.net)
            podnet.ensure(None, ctx.net, pod)  # the NAT table follows once the pod is recorded
            if rootfs:
                write_network_files(pod)
            inside = os.path.relpath(pod.cwd, seen_from)
            if inside.startswith(".."):
                if not os.path.isdir(pod.cwd):
                    raise UsageError(f"--cwd {cwd!r} does not exist")
            else:
                os.makedirs(os.path.join(pod.volume, inside), exist_ok=True)
            mount_path.mkdir(parents=True, exist_ok=True)
            if start:
                pod.init_pid, pod.init_starttime = start_processes(ctx, pod, podnet.netns_path(ctx.net, pod))
        except BaseException:
            podnet.remove(ctx.net, pod)
            pool.backend.delete_volume(volume)
            raise
        with ctx.catalog.session() as s:
            queries.add_pod(s, pod)
            if pod.net == "pod":
                podnet.sync_nat(s, ctx.net)  # its published ports, and the outbound NAT
        return pod


def check_ports_free(s, name: str, ports: list[dict], host_id: int) -> None:
    """Host ports are one machine's: only the pods of this host can hold them."""
    taken = {(p["host_ip"], p["host_port"], p["proto"]): other.name
             for other in queries.list_pods(s, host_id) if other.name != name for p in other.ports}  # fmt: skip
    for p in ports:
        for (ip, port, proto), owner in taken.items():
            if port == p["host_port"] and proto == p["proto"] and (ip is None or p["host_ip"] is None or ip == p["host_ip"]):
                raise AlreadyExists(f"host port {port}/{proto} is already published by pod {owner!r}")


def write_network_files(pod: Pod) -> None:
    """A system pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, for its own network. The
    name servers are the host's, minus loopback ones (the pod's loopback has none)."""
    etc = Path(pod.volume) / "etc"
    if not etc.is_dir() or etc.is_symlink():
        return
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    hosts += f"{pod.address or '127.0.1.1'}\t{pod.name}\n"
    try:
        host_resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        host_resolv = ""
    resolv = "".join(ln + "\n" for ln in host_resolv.splitlines()
                     if not (ln.startswith("nameserver") and (" 127." in ln or " ::1" in ln)))  # fmt: skip
    for fname, text in (("hostname", pod.name + "\n"), ("hosts", hosts), ("resolv.conf", resolv)):
        target = etc / fname
        # Never through a link the pod's tree placed there.
        if target.is_symlink():
            target.unlink()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def start(ctx: Context, name: str, command: list[str] | None = None) -> Pod:
    """Run the pod's command afresh in its current volume (as `podman start` does); command: a
    new one, kept from now on (a pod created without one gets it so)."""
    with ctx.pod_lock(name):  # (refused first for a pod another host runs or adopted)
        ctx.ensure_pool()  # mounted again after a reboot or `zap deinit`: the volume is on it
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            if live_state(pod) in ("running", "paused", "frozen"):
                raise UsageError(f"pod {name!r} is already running ({live_state(pod)})")
            if not Path(pod.volume).is_dir():
                raise ZapError(f"the volume of pod {name!r} is missing: {pod.volume}")
            if command:
                pod.command = list(command)
            if not pod.command:
                raise UsageError(f"pod {name!r} has no command (it was created without one): `zap start {name} -- CMD` "
                                 f"gives it one")  # fmt: skip
            os.makedirs(pod.mount_path, exist_ok=True)
            podnet.ensure(s, ctx.net, pod)
            # A fresh start has no connections to bring back: drop a --stop dump's locks.
            podnet.release_locks(ctx.net, pod, queries.criu_run_id(s, pod.net_locked_by))
            pod.net_locked_by = None
            pod.init_pid, pod.init_starttime = start_processes(ctx, pod, podnet.netns_path(ctx.net, pod))
            pod.desired_state = "running"
            pod.restart_count = 0  # a restart policy's count starts again (ops/restart.py sets its own)
            pod.note = None  # what happened to it before is over
            return pod


def stop_processes(pod: Pod, timeout: float, say=None) -> None:
    """SIGTERM the pod's init, SIGKILL after timeout; the kernel then ends its pid namespace."""
    if not procinfo.is_alive(pod.init_pid, pod.init_starttime):
        return
    pids = procinfo.pids_in_pidns(pod.init_pid)
    # A pid 1 without a SIGTERM handler (a shell) never receives one: every process of the pod
    # is told instead, and once pid 1 is all that is left, there is nothing more to wait for.
    handles = procinfo.catches(pod.init_pid, signal.SIGTERM)
    if not handles and say:
        say(f"pod {pod.name!r}: its pid 1 ({procinfo.comm(pod.init_pid)}) has no SIGTERM handler, so every "
            f"process of the pod gets SIGTERM; whatever still runs in {timeout:g}s gets SIGKILL")  # fmt: skip
    step(f"waiting for {pod.name} to exit (SIGKILL after {timeout:g} s)")
    procinfo.signal_all([pod.init_pid] if handles else pids, signal.SIGTERM)
    procinfo.signal_all(pids, signal.SIGCONT)  # a paused pod must see its SIGTERM too
    deadline = time.monotonic() + timeout
    while procinfo.is_alive(pod.init_pid, None) and time.monotonic() < deadline:
        if not handles and procinfo.pids_in_pidns(pod.init_pid) == [pod.init_pid]:
            time.sleep(0.2)  # pid 1 alone: give it a moment to exit by itself (`sh -c CMD` does)
            if procinfo.pids_in_pidns(pod.init_pid) == [pod.init_pid]:
                break
        time.sleep(0.02)
    if procinfo.is_alive(pod.init_pid, None):
        procinfo.signal_all(procinfo.pids_in_pidns(pod.init_pid) or pids, signal.SIGKILL)
    if not procinfo.wait_gone(pids, 10):
        raise ZapError(f"processes of pod {pod.name!r} did not exit: {pids}")


def stop(ctx: Context, name: str, timeout: float = 10.0, say=None) -> Pod:
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            stop_processes(pod, timeout, say)
            console.wait_for_loggers(ctx.state.console_log(name))
            pod.desired_state = "stopped"
            return pod


# `zap kill` with one of these stops the pod as `zap stop` does, for its restart policy too
ENDING_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def signal_pod(ctx: Context, name: str, sig: signal.Signals) -> Pod:
    """`zap kill`: send sig to the pod's pid 1 (its command), as `podman kill` does; with
    SIGKILL the kernel ends the whole pid namespace with it."""
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            if live_state(pod) not in ("running", "paused", "frozen"):
                raise UsageError(f"pod {name!r} is not running ({live_state(pod)})")
            if sig in ENDING_SIGNALS:
                pod.desired_state = "stopped"  # ended on purpose: no restart policy brings it back
                s.commit()
            try:
                os.kill(pod.init_pid, sig)
            except ProcessLookupError:
                pass
            return pod


def pause(ctx: Context, name: str) -> Pod:
    """`zap pause`: stop every process of the pod (SIGSTOP; zap has no cgroup freezer of its
    own), until `zap unpause`. A paused pod is not checkpointed (its watch skips it)."""
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            if live_state(pod) != "running":
                raise UsageError(f"pod {name!r} is not running ({live_state(pod)})")
            pod.desired_state = "paused"
            s.commit()
            pids = procinfo.pids_in_pidns(pod.init_pid)
            procinfo.signal_all(pids, signal.SIGSTOP)
            deadline = time.monotonic() + 5
            while any((st := procinfo.read_stat(p)) and st.state not in "TtZX" for p in pids):
                if time.monotonic() > deadline:
                    procinfo.signal_all(pids, signal.SIGCONT)
                    pod.desired_state = "running"
                    s.commit()
                    raise ZapError(f"the processes of pod {name!r} did not stop; it runs on")
                time.sleep(0.01)
            return pod


def unpause(ctx: Context, name: str) -> Pod:
    with ctx.pod_lock(name):
        with ctx.catalog.session() as s:
            pod = queries.get_pod(s, name)
            if live_state(pod) != "paused":
                raise UsageError(f"pod {name!r} is not paused ({live_state(pod)})")
            procinfo.signal_all(procinfo.pids_in_pidns(pod.init_pid), signal.SIGCONT)
            pod.desired_state = "running"
            return pod


def _enter_argv(ctx: Context, name: str, script: str, command: list[str], console: bool = False):
    """The argv (and environment) that runs `sh -c script sh CWD [LOG] COMMAND...` inside the
    running pod's namespaces (and root, for a system pod)."""
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
        if live_state(pod) != "running":
            raise UsageError(f"pod {name!r} is not running")
        # The pod's root: a system pod's, or the copy of the tree a volume pod runs in (with its own /proc).
        root = ["-r", "-w"] if pod.rootfs else ["-r"]
        log = [os.path.join("/" if pod.rootfs else pod.mount_path, LOG_DIR, LOG_NAME)] if console else []
        # -T: a restored pod runs in the time namespace CRIU made for it; a daemon left outside
        # it would make the next restore fail ("Can't restore sub-task in NS").
        argv = ["nsenter", "-t", str(pod.init_pid), "-p", "-m", "-i", "-u", "-n", "-T", *root, "--",
                "/bin/sh", "-c", script, "sh", pod.cwd, *log, *command]  # fmt: skip
        # and in its control groups, as `podman exec`: what it starts counts against the pod's limits
        join = [str(g / "cgroup.procs") for g in cgroups.groups_of(ctx.state.root, name)]
        return argv, pod_env(pod), join


def exec_in(ctx: Context, name: str, command: list[str], timeout: float | None = None, quiet: bool = False,
            tty: bool = False) -> int:  # fmt: skip
    """Run a command inside the pod's namespaces (and root) and working directory; returns its
    exit code. With a timeout, it is killed with all it started when the time is up
    (proc.Timeout). tty (`zap exec -t`): on a terminal of the pod's own, a pty from its devpts
    that util-linux's `script` relays to ours (raw mode, window size), as `podman exec -t`."""
    if not command:
        raise UsageError("no command given: zap exec NAME -- CMD [ARGS...]")
    if tty:
        import shlex

        if not os.isatty(0):
            raise UsageError("the input device is not a TTY: `zap exec -t` needs a terminal (drop -t in scripts)")
        command = ["script", "--quiet", "--return", "--echo", "never", "--command", shlex.join(command), "/dev/null"]
    # nsenter --wd would resolve the directory before entering the mount namespace, where the
    # pod's volume is not mounted: change directory inside instead.
    argv, env, join = _enter_argv(ctx, name, 'cd -- "$1" && shift && exec "$@"', command)
    if tty:
        env["TERM"] = os.environ.get("TERM") or "xterm"  # the terminal it talks to is ours
    kill = procinfo.kill_tree  # with a timeout, all it started goes too
    return proc.interactive(argv, env=env, quiet=quiet, timeout=timeout, kill=kill, what=command[0], join_cgroups=join)


def exec_detached(ctx: Context, name: str, command: list[str]) -> None:
    """`zap exec -d`: start a daemon inside the pod in a session of its own, with /dev/null as
    stdin and the pod's console as stdout and stderr, all opened inside the pod, so that the
    next checkpoint can dump it (host stdio would make CRIU refuse the tree). Pods from before
    the console pipe: their console log in the volume."""
    if not command:
        raise UsageError("no command given: zap exec -d NAME -- CMD [ARGS...]")
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
    if pod.console_pipe is not None:
        # The console pipe, as pid 1 holds it in the pod's own /proc (pod/console.py).
        script = 'cd -- "$1" || exit 1; shift; exec setsid -f "$@" </dev/null >>/proc/1/fd/1 2>&1'
        argv, env, join = _enter_argv(ctx, name, script, command)
        res = proc.run(argv, check=False, env=env, join_cgroups=join)
    elif pod.rootfs:
        # A system pod's shell runs in its root: the log's path resolves inside it whatever it is.
        script = 'cd -- "$1" || exit 1; log=$2; shift 2; exec setsid -f "$@" </dev/null >>"$log" 2>&1'
        argv, env, join = _enter_argv(ctx, name, script, command, console=True)
        res = proc.run(argv, check=False, env=env, join_cgroups=join)
    else:
        # A volume pod sees the host's tree: the log is opened by zap itself, in the pod's mount
        # namespace (so CRIU finds its mount there) and without following the pod's symlinks.
        argv, env, join = _enter_argv(ctx, name, 'cd -- "$1" || exit 1; shift; exec setsid -f "$@"', command)
        want = os.stat(pod.volume)
        res = proc.run(argv, check=False, env=env, join_cgroups=join,
                       stdio_from=lambda: _console_in_pod(pod, (want.st_dev, want.st_ino)))  # fmt: skip
    if res.returncode != 0:
        raise ZapError(f"could not start {command[0]!r} in pod {name!r}: "
                       f"{proc.CommandError(argv, res.returncode, res.stderr).reason()}")  # fmt: skip


def _console_in_pod(pod: Pod, volume_id: tuple[int, int]) -> tuple[int, int]:
    """(stdin, stdout) for a daemon of a volume pod: /dev/null and the console log, opened in
    the pod's mount namespace (entered here: this runs in the child, before it execs)."""
    import ctypes

    ns = os.open(f"/proc/{pod.init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if ctypes.CDLL(None, use_errno=True).setns(ns, 0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "setns")
    os.close(ns)
    top = os.open(pod.mount_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(top)
    if (st.st_dev, st.st_ino) != volume_id:
        raise OSError(f"{pod.mount_path} is not the pod's volume in its namespace")
    log = open_console_log(top)
    os.close(top)
    return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), log


def logs_in_volume(ctx: Context, name: str, follow: bool, out, tail: int | None = None, since: str | None = None,
                   timestamps: bool = False) -> None:  # fmt: skip
    """`zap logs` of a pod from before the console log: `.zap/console.log` in its volume (no
    times: since and timestamps need the new log). Unknown names fail here."""
    with ctx.catalog.session() as s:
        pod = queries.get_pod(s, name)
    if console.follow_log(ctx.state, name, follow, out, tail, since, timestamps):
        return  # its console log appeared meanwhile (a catalog just migrated)
    if since is not None or timestamps:
        raise UsageError(f"pod {name!r} keeps its console log in its volume (it was started by an earlier "
                         f"version): no times to show or select by; `zap stop` and `zap start` it for the new log")  # fmt: skip
    ctx.ensure_pool()  # the log is inside the volume: make sure the pool is mounted
    try:
        volume = os.open(pod.volume, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        raise ZapError(f"cannot read the log of pod {name!r}: {pod.volume}: {e.strerror}") from None
    try:
        fd = open_console_log(volume, create=False)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ZapError(f"cannot read the log of pod {name!r}: {e.strerror or e} (not following a symlink "
                       f"or reading anything but a regular file in the pod's volume)") from None  # fmt: skip
    finally:
        os.close(volume)

    def still():
        with ctx.catalog.session() as s:
            return live_state(queries.get_pod(s, name)) == "running", ctx.state.console_log(name)

    with open(fd, "rb") as f:
        if tail is not None:
            console.seek_to_last_lines(f, tail)
        console.copy(f, lambda chunk: chunk, out, still if follow else None)
