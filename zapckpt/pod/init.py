"""Makes a new pod's pid/ipc/uts/mount namespaces (inside its network namespace, unless `--net
host`), forks its pid 1 into them and exits at once, so that nothing waits beside the pod (the
host's init reaps it; the supervisor learns how it ended from the kernel, system/exits.py). The
pid 1 sets the pod up and execs the pod's command. What CRIU needs to dump the tree
later is set up here: a session led from inside the pid namespace, no inherited descriptors,
and stdio opened inside the pod's mount namespace. So is what keeps the pod's state its own:
a private /dev/shm and /dev/pts (see pod/mounts.py).

With spec["init"] (the default for new pods), pid 1 is not the command but a small init,
Podman's catatonit: it starts the command as its child, forwards it every signal, reaps the
orphans a shell leaves behind, and exits with the command's status. It runs from a copy in the
volume (`.zap/init`), so every snapshot holds the very binary its images map, whatever the host
installs later, and a system pod needs no path outside its root.

Usage (by zapckpt.pods only): python -m zapckpt.pod.init SPEC_JSON
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import sys

from zapckpt.pod.mounts import LOG_DIR, detach_views, make_slave, open_console_log, setup_pod_mounts, walk_dirs

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID = 0x20000, 0x04000000, 0x08000000, 0x20000000

INIT_NAME = "init"  # .zap/init in the volume


def install_init(top: int, binary: bytes) -> int:
    """Copy the init into the volume's .zap (unless the same bytes are there), never following a
    link the pod made; returns a descriptor to exec it by."""
    d = walk_dirs(top, LOG_DIR)
    try:
        try:
            fd = os.open(INIT_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            with os.fdopen(os.dup(fd), "rb") as f:
                same = f.read() == binary
            if same:
                return fd
            os.close(fd)
        except FileNotFoundError:
            pass
        tmp = f"{INIT_NAME}.{os.getpid()}"
        w = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755, dir_fd=d)
        with os.fdopen(w, "wb") as f:
            f.write(binary)
        os.rename(tmp, INIT_NAME, src_dir_fd=d, dst_dir_fd=d)
        return os.open(INIT_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
    finally:
        os.close(d)


def _enter_new_namespaces(ready: int) -> None:
    """unshare(1) --pid --fork --ipc --uts --mount --propagation slave, without a parent that
    stays: we fork the pod's pid 1, tell zap its (host) pid, and only the child returns."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        os.write(ready, f"error cannot make the pod's namespaces: {os.strerror(err)}\n".encode())
        os._exit(1)
    make_slave()  # the pod follows the host's unmounts; its own mounts stay its own
    child = os.fork()
    if child:
        os.write(ready, f"pid {child}\n".encode())
        os._exit(0)


def main() -> None:
    spec = json.loads(sys.argv[1])
    ready = os.open(spec["ready"], os.O_WRONLY | os.O_CLOEXEC)
    # The console: the pipe to zap's logger outside the pod (pod/console.py), opened by path as
    # `ready` is, while /proc is still the host's; pods made before it keep their log in the volume.
    console = os.open(spec["console"], os.O_WRONLY | os.O_CLOEXEC) if spec.get("console") else -1
    _enter_new_namespaces(ready)

    def fail(msg: str) -> None:
        os.write(ready, f"error {msg}\n".encode())
        os._exit(127)

    init_fd = -1
    try:
        binary = open(spec["init"], "rb").read() if spec.get("init") else None  # the host's, read before the chroot
        os.setsid()
        socket.sethostname(spec["hostname"])
        detach_views()
        setup_pod_mounts(spec["volume"], spec["mount_path"], bool(spec.get("rootfs")), spec.get("volumes", []),
                         chroot=True, state_root=spec["state_root"], private_tmp=spec.get("private_tmp", False),
                         host_readonly=spec.get("host_readonly", False))  # fmt: skip
        os.chdir(spec["cwd"])
        null = os.open("/dev/null", os.O_RDONLY)
        # Inside the volume, never through a symlink the pod left there (see pod/mounts.py).
        top = os.open("/" if spec.get("rootfs") else spec["mount_path"], os.O_PATH | os.O_DIRECTORY)
        log = console if console >= 0 else open_console_log(top)
        if binary is not None:
            init_fd = install_init(top, binary)
        os.close(top)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        keep = sorted({ready, init_fd} - {-1})
        os.closerange(3, keep[0])
        for a, b in zip(keep, keep[1:] + [65536]):
            os.closerange(a + 1, b)
    except Exception as e:  # noqa: BLE001 - reported to zap run through the pipe
        fail(f"pod set-up failed: {e}")
    # Python ignores SIGPIPE and SIGXFSZ for itself; the pod's command must get the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    if init_fd >= 0:
        # The init execs the command itself: a command that cannot run is reported here, as
        # without the init, not as a pod that stops at once.
        cmd = spec["command"][0]
        found = shutil.which(cmd, path=spec["env"].get("PATH", os.defpath))
        if found is None or os.path.isdir(found):
            fail(f"cannot run {cmd!r}: {'Permission denied' if os.path.exists(cmd) else 'No such file or directory'}")
        try:
            os.execve(init_fd, ["catatonit", "--", *spec["command"]], spec["env"])
        except OSError as e:
            fail(f"cannot run the pod's init: {e.strerror}")
    try:
        os.execvpe(spec["command"][0], spec["command"], spec["env"])
    except OSError as e:
        fail(f"cannot run {spec['command'][0]!r}: {e.strerror}")


if __name__ == "__main__":
    main()
