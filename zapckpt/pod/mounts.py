"""The mounts of a pod's own mount namespace, made the same way when it starts (pod/init.py) and
when CRIU restores or branches it (`python -m zapckpt.pod.mounts`, right before `criu restore`
in the new namespace), so restored processes find every file where they left it.

- The volume appears at the pod's path (for a branch: the original pod's path), on a tmpfs
  that hides the rest of the state directory.
- A system pod: the volume is its root, with its own /proc (a restore mounts it from inside
  the new pid namespace, see criu.py) and everything below resolved inside that root.
- /dev/shm is private: a volume pod's is `.zap/shm` inside its volume, a system pod's is its
  root's /dev/shm; either way POSIX shared memory is in every snapshot and never shared with
  the original or a branch.
- /dev/pts is a new devpts instance (ptys numbered from 0 in every pod, so a branch gets the
  same pty numbers as its original).
- /tmp is private for a volume pod made since it existed (`private_tmp`): `.zap/tmp` inside its
  volume, rolled back with it, never the host's. A pod path that lives under /tmp (a state
  directory there) gets a mount point inside that private /tmp.
- Declared `--volume HOSTDIR:PODDIR` binds: shared with the host, never rolled back.
- A volume pod's own /proc: its processes run chrooted in a copy of this namespace's whole
  tree (a recursive bind of / at `.podroot` beside the pod's path, on the tmpfs that hides the
  state directory) with the pod's own proc over its /proc, so `ps` inside lists the pod's processes.
  CRIU, which runs in this namespace and finds the tasks by host pid, keeps the host's /proc at
  the namespace's real root; it dumps the tasks' root and paths as the copy, and a restore
  makes the same copy (the proc comes from a CRIU hook, inside the new pid namespace).

Nothing here follows a symlink the pod placed: paths inside the volume are opened with
O_NOFOLLOW from a directory descriptor, and a system pod's mounts are made after the chroot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import stat
import sys

from zapckpt.common import mountinfo, proc

MS_BIND, MS_REC = 4096, 16384
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
LOG_DIR, LOG_NAME = ".zap", "console.log"
SHM_DIR = ".zap/shm"
TMP_DIR = ".zap/tmp"
PODROOT = ".podroot"


def pod_root(mount_path: str) -> str:
    """Where a volume pod's processes have their root, in its mount namespace only: beside its
    path (`$ZAP_HOME/mnt/.podroot`), so that it follows the path into branches and imports, whose
    images name it."""
    return os.path.join(os.path.dirname(mount_path.rstrip("/")), PODROOT)

def in_volume(path: str, mount_path: str, system: bool, private_tmp: bool, volumes: list[dict]) -> str | None:
    """Where a path as the pod's processes see it lies inside the pod's volume (relative to it),
    or None for a path outside it (the host's tree, a declared volume). The inverse is
    pod_view."""
    if any(_under(path, v["pod"]) is not None for v in volumes):
        return None
    if system:
        return path.lstrip("/") if path.startswith("/") else None
    for top, inside in ((mount_path, ""), *(((("/tmp", TMP_DIR),) if private_tmp else ())), ("/dev/shm", SHM_DIR)):
        rel = _under(path, top)
        if rel is not None:
            return os.path.join(inside, rel) if inside else rel
    return None


def criu_path_in_volume(path: str, mount_path: str, system: bool, private_tmp: bool,
                        volumes: list[dict]) -> str | None:  # fmt: skip
    """in_volume for a path as CRIU names it: from the root of the pod's mount namespace, where
    a volume pod's processes have their root at pod_root and a system pod's at its path."""
    inner = _under(path, mount_path if system else pod_root(mount_path))
    return None if inner is None else in_volume("/" + inner, mount_path, system, private_tmp, volumes)


def lstat_under(root: str | os.PathLike, rel: str) -> os.stat_result | None:
    """lstat of rel under the directory root (None if nothing is there), no symlink followed on
    the way: the pod made everything below its volume, and its snapshots."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = [p for p in rel.split("/") if p]
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return None
            os.close(fd)
            fd = nxt
        try:
            return os.lstat(parts[-1], dir_fd=fd) if parts else os.fstat(fd)
        except OSError:
            return None
    finally:
        os.close(fd)


def remove_in_volume(volume: str, rel: str) -> None:
    """Unlink the regular file rel inside the volume, if it is there; no symlink followed."""
    d = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *dirs, name = [p for p in rel.split("/") if p]
        for part in dirs:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            os.close(d)
            d = nxt
        if stat.S_ISREG(os.lstat(name, dir_fd=d).st_mode):
            os.unlink(name, dir_fd=d)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        pass
    finally:
        os.close(d)


def pod_view(rel: str, mount_path: str, system: bool, private_tmp: bool) -> str:
    """The path the pod's processes see for rel, a path inside its volume."""
    if system:
        return "/" + rel
    for inside, top in (((TMP_DIR, "/tmp"),) if private_tmp else ()) + ((SHM_DIR, "/dev/shm"),):
        sub = _under(rel, inside)
        if sub is not None:
            return os.path.join(top, sub)
    return os.path.join(mount_path, rel)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]  # fmt: skip


SYS_MOUNT_SETATTR = 442  # the same number on every architecture
MOUNT_ATTR_RDONLY, AT_EMPTY_PATH, AT_RECURSIVE = 0x1, 0x1000, 0x8000
MS_REMOUNT, MS_RDONLY = 32, 1


def _set_readonly(path: str, readonly: bool) -> None:
    """Make the mount at path and every mount below it read-only (or writable again), in this
    namespace only (mount_setattr; remounting each one on kernels before 5.12)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        attr = _MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
        if _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)) == 0:  # fmt: skip
            return
        err = ctypes.get_errno()
    finally:
        os.close(fd)
    if err == errno.EINVAL and mountinfo.find(path) is None:
        return  # not a mount of its own here (a pod without /dev/ptmx bound, say): nothing to change
    if err != errno.ENOSYS:
        raise OSError(err, f"mount_setattr {path}: {os.strerror(err)}")
    for m in mountinfo.mounts():
        if _under(m.point, path) is not None:
            opts = set(m.options.split(","))
            flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if readonly else 0)
            flags |= (MS_NOSUID if "nosuid" in opts else 0) | (MS_NODEV if "nodev" in opts else 0)
            flags |= MS_NOEXEC if "noexec" in opts else 0
            _mount("none", m.point, None, flags)


MS_SLAVE = 1 << 19


def make_slave() -> None:
    """This (new) mount namespace receives the host's unmounts, and sends nothing back."""
    _mount("none", "/", None, MS_REC | MS_SLAVE)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def walk_dirs(base_fd: int, rel: str, mode: int = 0o755) -> int:
    """An O_PATH descriptor of directory `rel` under base_fd, each missing part made, none
    followed if it is a symlink (the pod controls everything below its volume)."""
    fd = os.dup(base_fd)
    for part in [p for p in rel.split("/") if p]:
        try:
            os.mkdir(part, mode, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _private_dir(root_fd: int, rel: str, mode: int) -> int:
    """walk_dirs, the last directory given `mode`."""
    fd = walk_dirs(root_fd, rel, mode)
    os.chmod(f"/proc/self/fd/{fd}", mode)
    return fd


def _under(path: str, top: str) -> str | None:
    """path relative to directory top, or None if it is not below it."""
    top = top.rstrip("/") + "/"
    return path[len(top):] if (path + "/").startswith(top) else None


def open_console_log(volume_fd: int, create: bool = True) -> int:
    """The pod's console log (`.zap/console.log` under volume_fd), for appending (create) or
    reading, reached without following a symlink the pod may have put there, and only if it is
    a regular file (a FIFO would block zap)."""
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    flags |= (os.O_WRONLY | os.O_APPEND | os.O_CREAT) if create else os.O_RDONLY
    if create:
        d = walk_dirs(volume_fd, LOG_DIR)
    else:
        d = os.open(LOG_DIR, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=volume_fd)
    try:
        fd = os.open(LOG_NAME, flags, 0o640, dir_fd=d)
    finally:
        os.close(d)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{LOG_DIR}/{LOG_NAME} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _bind_fd(fd: int, target: str) -> None:
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)


def _new_devpts() -> None:
    os.makedirs("/dev/pts", exist_ok=True)
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    if os.path.islink("/dev/ptmx"):
        return  # e.g. "pts/ptmx": already the new instance's
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
        return
    _mount("/dev/pts/ptmx", "/dev/ptmx", None, MS_BIND)


def _hide_state_dir(state_root: str, mount_path: str, volume_fd: int) -> None:
    """Over the state directory, an empty tmpfs holding only the pod's own path: the pod sees
    neither the catalog, the image store nor other pods' volumes, and a service running as
    another user can reach its volume (the state directory itself is root's alone, 0700)."""
    if not (mount_path + "/").startswith(state_root.rstrip("/") + "/"):
        os.makedirs(mount_path, exist_ok=True)
        _bind_fd(volume_fd, mount_path)
        return
    _mount("tmpfs", state_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    os.makedirs(mount_path, mode=0o755, exist_ok=True)
    _bind_fd(volume_fd, mount_path)


# Host directories a restore must never hide (CRIU and the tools it runs live there).
_KEEP_VISIBLE = {"/", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/opt", "/proc", "/sys", "/etc"}


def _redirect_socket_dirs(dirs: list[tuple[int, str]]) -> None:
    """A restore of a system pod: CRIU binds the daemons' unix sockets at their names (e.g.
    /dev/log) from the host's root. In this private namespace, each of those directories is
    the pod's own (opened inside its root), so nothing is created, replaced or deleted on the
    host. A directory the host lacks is made on a tmpfs over its nearest existing parent."""
    for fd, name in dirs:
        target = name
        if not os.path.isdir(target):
            parent = os.path.dirname(target)
            while not os.path.isdir(parent):
                parent = os.path.dirname(parent)
            if parent in _KEEP_VISIBLE:
                raise OSError(f"cannot restore the unix socket directory {name} inside the pod: its parent "
                              f"{parent} on the host cannot be hidden")  # fmt: skip
            _mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            os.makedirs(target, exist_ok=True)
        elif os.path.realpath(target) in _KEEP_VISIBLE:
            raise OSError(f"cannot restore the unix socket directory {name} inside the pod: it would hide the host's")
        _bind_fd(fd, target)


def setup_pod_mounts(volume: str, mount_path: str, system: bool, volumes: list[dict], chroot: bool,
                     state_root: str, socket_dirs: list[str] = (), private_tmp: bool = False,
                     host_readonly: bool = False) -> None:  # fmt: skip
    """Make the pod's mounts in the current (new, private) mount namespace. chroot: enter a
    system pod's root afterwards (pod/init.py); a restore leaves that to CRIU. host_readonly: a
    volume pod sees the host's tree read-only, but for its own parts (see the top)."""
    # Declared host directories and the volume are opened before anything is hidden or any
    # path of the pod's is looked at.
    host_fds = [(os.open(v["host"], os.O_PATH | os.O_DIRECTORY), v["pod"]) for v in volumes]
    volume_fd = os.open(volume, os.O_PATH | os.O_DIRECTORY)
    tmp_fd = -1
    try:
        if private_tmp and not system:
            shared_tmp = _private_dir(volume_fd, TMP_DIR, 0o1777)
            try:
                _bind_fd(shared_tmp, "/tmp")
            finally:
                os.close(shared_tmp)
            # Mount points below are made through the new mount, not the volume's own: a
            # mount sits on a (mount, directory) pair.
            tmp_fd = os.open("/tmp", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        if tmp_fd >= 0 and (rel := _under(mount_path, "/tmp")) is not None:
            # The state directory is under the host's /tmp, hidden now with all the rest of it.
            mount_point = walk_dirs(tmp_fd, rel)
            try:
                _bind_fd(volume_fd, f"/proc/self/fd/{mount_point}")
            finally:
                os.close(mount_point)
        else:
            _hide_state_dir(state_root, mount_path, volume_fd)
        root_fd = os.open(mount_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        if os.fstat(root_fd)[1:3] != os.fstat(volume_fd)[1:3]:  # (st_ino, st_dev)
            os.close(root_fd)
            raise OSError(f"{mount_path} is not the pod's volume after mounting it")
    finally:
        os.close(volume_fd)
    try:
        if system:
            cwd = os.open(".", os.O_PATH | os.O_DIRECTORY)
            real_root = os.open("/", os.O_PATH | os.O_DIRECTORY)
            os.chroot(f"/proc/self/fd/{root_fd}")
            os.chdir("/")
            try:
                if chroot:
                    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                _new_devpts()
                for fd, inside in host_fds:
                    os.makedirs(inside, exist_ok=True)
                    _bind_fd(fd, inside)
                # resolved inside the root: the pod's symlinks stay in the pod
                sock_fds = [(os.open(d, os.O_PATH | os.O_DIRECTORY), d) for d in socket_dirs]
            finally:
                if not chroot:
                    # Back out of the root: CRIU restores with the host's root and the pod's
                    # root as the tasks' own (it is in their images).
                    os.fchdir(real_root)
                    os.chroot(".")
                    os.fchdir(cwd)
                os.close(cwd)
                os.close(real_root)
            try:
                _redirect_socket_dirs(sock_fds)
            finally:
                for fd, _ in sock_fds:
                    os.close(fd)
            return
        shm = _private_dir(root_fd, SHM_DIR, 0o1777)
        try:
            _bind_fd(shm, "/dev/shm")
        finally:
            os.close(shm)
        _new_devpts()
        for fd, inside in host_fds:
            # Below the pod's own path or its private /tmp, the mount point is the pod's to
            # shape: made without following its symlinks. Elsewhere it is an existing host directory.
            if (rel := _under(inside, mount_path)) is not None:
                target = walk_dirs(root_fd, rel)
            elif tmp_fd >= 0 and (rel := _under(inside, "/tmp")) is not None:
                target = walk_dirs(tmp_fd, rel)
            else:
                target = os.open(inside, os.O_PATH | os.O_DIRECTORY)
            try:
                _bind_fd(fd, f"/proc/self/fd/{target}")
            finally:
                os.close(target)
        # /dev/ptmx is the pod's devpts's, bound there: CRIU sets a restored terminal's owner through it
        own = [mount_path, "/dev/shm", "/dev/pts", "/dev/ptmx", *(["/tmp"] if tmp_fd >= 0 else []),
               *(v["pod"] for v in volumes)]  # fmt: skip
        _copy_tree_for_own_proc(pod_root(mount_path), tmp_fd, chroot, own if host_readonly else None)
    finally:
        os.close(root_fd)
        if tmp_fd >= 0:
            os.close(tmp_fd)
        for fd, _ in host_fds:
            os.close(fd)


def _copy_tree_for_own_proc(root: str, tmp_fd: int, enter: bool, writable: list[str] | None) -> None:
    """The copy of the whole tree a volume pod's processes run in (see the top); enter: mount
    the pod's proc (we are its pid 1) and chroot into the copy. writable: the copy is made
    read-only but for these mounts (and what is below them)."""
    if tmp_fd >= 0 and (rel := _under(root, "/tmp")) is not None:
        target = walk_dirs(tmp_fd, rel, 0o700)  # in the pod's private /tmp: never through its links
    else:
        os.makedirs(root, mode=0o700, exist_ok=True)  # on the tmpfs that hides the state directory (an
        # imported pod's path from elsewhere: beside that path on the host, as the path itself)
        target = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _mount("/", f"/proc/self/fd/{target}", None, MS_BIND | MS_REC)
    finally:
        os.close(target)
    if writable is not None:
        _set_readonly(root, True)
        for path in writable:
            _set_readonly(root + path, False)
    if enter:
        _mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chroot(root)
        os.chdir("/")


def detach_views() -> None:
    """A new mount namespace starts as a copy of the host's, `zap mount` views included: not the
    pod's business, and a dead view (its server gone) would make CRIU trip over it later."""
    for point in mountinfo.points(mountinfo.VIEW_FSTYPE):
        proc.run(["umount", "--lazy", point], check=False)


def restore_argv(spec: dict) -> list[str]:
    """The command that makes the pod's mounts in a new mount namespace (main below), then
    execs what follows it: how a restore prepares the namespace CRIU restores into."""
    return [sys.executable, "-m", "zapckpt.pod.mounts", json.dumps(spec), "--"]


def main() -> None:
    """python -m zapckpt.pod.mounts SPEC_JSON -- CMD...: in the new mount namespace CRIU restores
    into, detach views, make the pod's mounts, then exec CMD (criu restore)."""
    spec = json.loads(sys.argv[1])
    detach_views()
    setup_pod_mounts(spec["volume"], spec["mount_path"], spec["system"], spec["volumes"], chroot=False,
                     state_root=spec["state_root"], socket_dirs=spec.get("socket_dirs", []),
                     private_tmp=spec.get("private_tmp", False), host_readonly=spec.get("host_readonly", False))  # fmt: skip
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
