"""Runs as pid 1 of a new pod, inside its fresh pid/ipc/uts/mount namespaces (and network
namespace, unless `--net host`), then execs the pod's command. What CRIU needs to dump the tree
later is set up here: a session led from inside the pid namespace, no inherited descriptors,
and stdio opened inside the pod's mount namespace. So is what keeps the pod's state its own:
a private /dev/shm and /dev/pts (see pod/mounts.py).

Usage (by zapckpt.pods only): python -m zapckpt.pod.init SPEC_JSON
"""

import json
import os
import signal
import socket
import sys

from zapckpt.pod.mounts import detach_views, open_console_log, setup_pod_mounts


def main() -> None:
    spec = json.loads(sys.argv[1])
    ready = os.open(spec["ready"], os.O_WRONLY | os.O_CLOEXEC)

    def fail(msg: str) -> None:
        os.write(ready, f"error {msg}\n".encode())
        os._exit(127)

    # /proc is still the host's here (a system pod mounts its own below): our host pid.
    host_pid = os.readlink("/proc/self")
    try:
        os.setsid()
        socket.sethostname(spec["hostname"])
        detach_views()
        setup_pod_mounts(spec["volume"], spec["mount_path"], bool(spec.get("rootfs")), spec.get("volumes", []),
                         chroot=True, state_root=spec["state_root"], private_tmp=spec.get("private_tmp", False))  # fmt: skip
        os.chdir(spec["cwd"])
        null = os.open("/dev/null", os.O_RDONLY)
        # Inside the volume, never through a symlink the pod left there (see pod/mounts.py).
        top = os.open("/" if spec.get("rootfs") else spec["mount_path"], os.O_PATH | os.O_DIRECTORY)
        log = open_console_log(top)
        os.close(top)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, ready)
        os.closerange(ready + 1, 65536)
    except Exception as e:  # noqa: BLE001 - reported to zap run through the pipe
        fail(f"pod set-up failed: {e}")
    os.write(ready, f"pid {host_pid}\n".encode())
    # Python ignores SIGPIPE and SIGXFSZ for itself; the pod's command must get the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(spec["command"][0], spec["command"], spec["env"])
    except OSError as e:
        fail(f"cannot run {spec['command'][0]!r}: {e.strerror}")


if __name__ == "__main__":
    main()
