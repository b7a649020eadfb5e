"""Programs that a restore used to damage without a word (issue 23), each checked against what
the program itself knows: SQLite in WAL mode (its writer's own count against the table), POSIX
locks on a mapped file (another process must still be refused the lock), a unix socket that
haproxy renames after binding it (its stats socket must answer), POSIX named semaphores (two
processes must go on in step); and what CRIU cannot checkpoint, refused before anything is
frozen, in words that say what to do."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

from helpers import WORKLOADS, ZAP_CMD, proc_state, wait_for


def _pids_of(zap, name: str) -> dict[int, int]:
    """{pid inside the pod: host pid} of a running pod."""
    init = zap.pod(name)["pid"]
    ns = os.stat(f"/proc/{init}/ns/pid").st_ino
    out = {}
    for e in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{e}/ns/pid").st_ino != ns:
                continue
            status = Path(f"/proc/{e}/status").read_text()
        except OSError:
            continue
        out[int(re.search(r"^NSpid:.*\s(\d+)$", status, re.M).group(1))] = int(e)
    return out


def _locks(pids: dict[int, int], volume: Path) -> set[tuple[int, str, str, str, str]]:
    """The POSIX locks the pod's processes hold on files of their volume, as
    (pid in the pod, file name, READ|WRITE, start, end)."""
    # by inode: /proc/locks names the file system's device, stat the btrfs subvolume's own
    names = {f.stat().st_ino: f.name for f in volume.iterdir()}
    inner = {h: i for i, h in pids.items()}
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        p = line.split()
        if len(p) < 8 or p[1] != "POSIX" or int(p[4]) not in inner:
            continue
        name = names.get(int(p[5].split(":")[2]))
        if name:
            out.add((inner[int(p[4])], name, p[3], p[6], p[7]))
    return out


def _sqlite_writer_and_reader(zap, name: str) -> Path:
    w = WORKLOADS / "sqlite_wal.py"
    zap("run", name, "--", "sh", "-c", f"python3 {w} reader & exec python3 {w} writer")
    vol = zap.volume(name)
    wait_for(lambda: (vol / "data.db-wal").exists() and (vol / "data.db-wal").stat().st_size > 200_000,
             what="rows in the WAL")  # fmt: skip
    return vol


def _check_sqlite_after(zap, name: str, locks_before: set) -> None:
    """The restored writer and reader hold their locks again; a new connection does not take
    the WAL away from them; the writer's count and the table agree."""
    vol = zap.volume(name)
    pids = _pids_of(zap, name)
    assert _locks(pids, vol) >= {lk for lk in locks_before if lk[1] == "data.db-shm" and lk[3] == "128"}
    # A third connection comes and goes: with the locks gone it would checkpoint and delete the
    # WAL under the writer, which would go on writing into the deleted file.
    zap("exec", name, "--", "python3", "-c",
        "import sqlite3; c = sqlite3.connect('data.db'); c.execute('SELECT count(*) FROM t').fetchone(); c.close()")
    size = (vol / "data.db-wal").stat().st_size
    wait_for(lambda: (vol / "data.db-wal").stat().st_size != size, what="the writer writing on")
    writer = next(h for h in pids.values() if b"writer" in Path(f"/proc/{h}/cmdline").read_bytes())
    held = [os.readlink(f"/proc/{writer}/fd/{fd}") for fd in os.listdir(f"/proc/{writer}/fd")]
    assert not [h for h in held if h.endswith("(deleted)")], held
    zap("stop", name)
    counted = int((vol / "writer.count").read_text())
    db = sqlite3.connect(vol / "data.db")
    try:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == counted
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_sqlite_wal_writer_and_reader_survive_restore_and_branch(zap):
    vol = _sqlite_writer_and_reader(zap, "db")
    before = _locks(_pids_of(zap, "db"), vol)
    assert {lk[1] for lk in before} >= {"data.db", "data.db-shm"}, before
    zap("checkpoint", "db")
    zap("branch", "db@1", "db2")
    _check_sqlite_after(zap, "db2", before)
    zap("restore", "db@1")
    _check_sqlite_after(zap, "db", before)


def test_a_posix_lock_on_a_mapped_file_is_still_held_after_restore(zap):
    zap("run", "lk", "--", "python3", str(WORKLOADS / "lock_mapped.py"))
    vol = zap.volume("lk")
    wait_for(lambda: (vol / "locked").exists(), what="the locks")
    zap("checkpoint", "lk")
    zap("restore", "lk@1")
    held = _locks(_pids_of(zap, "lk"), vol)
    assert {lk[1:] for lk in held} == {("mapped.dat", "READ", "128", "128"), ("plain.dat", "READ", "0", "0")}, held
    # ... and it is a real lock: another process is refused a write lock on that byte.
    with open(vol / "mapped.dat", "r+b") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        except OSError as e:
            assert e.errno in (11, 13)  # EAGAIN / EACCES
        else:
            raise AssertionError("the restored process's lock on the mapped file is gone")
    # the process runs on (its counter in the mapping moves)
    n = (vol / "mapped.dat").read_bytes()[:8]
    wait_for(lambda: (vol / "mapped.dat").read_bytes()[:8] != n, what="the restored process counting")
    assert proc_state(zap.pod("lk")["pid"]) not in ("T", "t")


def _haproxy_info(zap, name: str) -> str:
    return zap("exec", name, "--", "python3", "-c",
               "import socket; s = socket.socket(socket.AF_UNIX); s.connect('haproxy.sock');"
               "s.sendall(b'show info\\n'); print(s.recv(4096).decode())").stdout  # fmt: skip


def test_haproxys_renamed_stats_socket_answers_after_restore_and_branch(zap, host_dir):
    """haproxy binds its stats socket as haproxy.sock.N.tmp and renames it haproxy.sock."""
    cfg = host_dir / "haproxy.cfg"
    cfg.write_text(
        'global\n    stats socket "${ZAP_POD_PATH}/haproxy.sock" mode 600 level admin\n'
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
        'frontend fe\n    bind 127.0.0.1:8081\n    http-request return status 200 content-type text/plain string "hello"\n'
    )
    zap("run", "hap", "--", "haproxy", "-db", "-f", str(cfg))
    vol = zap.volume("hap")
    wait_for(lambda: (vol / "haproxy.sock").exists(), what="haproxy's stats socket")
    assert "Name: HAProxy" in _haproxy_info(zap, "hap")
    zap("checkpoint", "hap")
    zap("branch", "hap@1", "hap2")
    zap("restore", "hap@1")
    for name in ("hap", "hap2"):
        assert "Name: HAProxy" in _haproxy_info(zap, name)
        assert sorted(p.name for p in zap.volume(name).iterdir() if p.name != ".zap") == ["haproxy.sock"]


def _counts(vol: Path) -> tuple[int, int]:
    def one(n):
        try:
            return int((vol / f"{n}.count").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    return one("a"), one("b")


def _in_step(zap, name: str) -> None:
    vol = zap.volume(name)
    a0, _ = _counts(vol)
    wait_for(lambda: _counts(vol)[0] > a0 + 50, what=f"{name}'s processes to ping-pong on")
    a, b = _counts(vol)
    assert abs(a - b) <= 1, (a, b)


def test_named_semaphores_shared_by_two_processes_survive_restore_and_branch(zap):
    w = WORKLOADS / "sem_pingpong.py"
    # `a`, which made the semaphores, first in the tree: CRIU meets its unlinked mapping first
    zap("run", "sem", "--", "sh", "-c", f"python3 {w} b & exec python3 {w} a")
    _in_step(zap, "sem")
    zap("checkpoint", "sem")  # glibc's sem_open: CRIU needs --link-remap
    zap("restore", "sem@1")
    _in_step(zap, "sem")
    vol = zap.volume("sem")
    # the name still leads to the semaphore the processes share (a new process would join them)
    # (CRIU maps it through its link_remap file, which it then unlinks: the inode is what counts)
    shm = vol / ".zap" / "shm"
    mapped = {int(ln.split()[4]) for h in _pids_of(zap, "sem").values()
              for ln in Path(f"/proc/{h}/maps").read_text().splitlines() if "/dev/shm/" in ln}  # fmt: skip
    assert mapped == {(shm / "sem.zping").stat().st_ino, (shm / "sem.zpong").stat().st_ino}
    zap("branch", "sem@1", "sem2")
    _in_step(zap, "sem2")
    # A --stop dump leaves CRIU's links in the live volume until a restore: zap removes them.
    zap("checkpoint", "--stop", "sem")
    assert sorted(p.name for p in (vol / ".zap" / "shm").iterdir()) == ["sem.zping", "sem.zpong"]
    zap("restore", "sem@latest")
    _in_step(zap, "sem")


def _refused(zap, name: str, *words: str) -> None:
    line = zap.fails("checkpoint", name, code=1)
    for w in words:
        assert w in line, line
    pod = zap.pod(name)
    assert pod["state"] == "running" and proc_state(pod["pid"]) not in ("T", "t")
    assert zap.json("list", name)["checkpoints"] == []


def test_what_criu_cannot_checkpoint_is_refused_in_our_words(zap):
    w = WORKLOADS / "unsupported.py"
    for what in ("io_uring", "mqueue"):
        zap("run", what.replace("_", ""), "--", "python3", str(w), what)
        wait_for(lambda: (zap.volume(what.replace("_", "")) / "ready").exists(), what=what)
    _refused(zap, "iouring", "process ", "uses io_uring, which CRIU cannot checkpoint", "run it without")
    _refused(zap, "mqueue", "POSIX message queue /zapq", "CRIU cannot checkpoint message queues")
    zap("run", "nobody", "--", "python3", str(w), "nobody")
    wait_for(lambda: _runs_as_nobody(zap, "nobody"), what="setuid")
    if not _has_sys_resource():
        _refused(zap, "nobody", "runs as user nobody (uid 65534)", "CAP_SYS_RESOURCE")
    else:  # zap may read the limits of other users' processes here: the checkpoint works
        zap("checkpoint", "nobody")


def _runs_as_nobody(zap, name: str) -> bool:
    # the workload is the pod's one process besides its init (whatever pid it got)
    workers = [h for p, h in _pids_of(zap, name).items() if p != 1]
    try:
        return len(workers) == 1 and Path(f"/proc/{workers[0]}/status").read_text().count("65534") >= 2
    except OSError:
        return False


def _has_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_a_zap_exec_terminal_is_refused_until_it_ends(zap):
    zap("run", "tt", "--", "sleep", "600")
    pid, fd = pty.fork()
    if pid == 0:  # the child: `zap exec -it` on a terminal of its own
        os.environ.update(zap.env)
        os.execv(ZAP_CMD[0], [*ZAP_CMD, "exec", "-it", "tt", "--", "sh"])
    try:
        wait_for(lambda: any(b"script" in Path(f"/proc/{h}/cmdline").read_bytes() for h in _pids_of(zap, "tt").values()),
                 what="the exec's terminal in the pod")  # fmt: skip
        _refused(zap, "tt", "holds a terminal from outside the pod", "zap exec -it", "end that session first")
        os.write(fd, b"exit\n")  # the user ends the session
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(fd)
        if proc_state(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    wait_for(lambda: len(_pids_of(zap, "tt")) == 2, what="the session to end")
    zap("checkpoint", "tt")


def test_a_volume_pod_sees_the_host_read_only_but_for_its_own_parts(zap, host_dir):
    zap("run", "ro", "-v", f"{host_dir}:/mnt", "--", "sleep", "600")
    assert zap.pod("ro")["host_writable"] is False

    def writes(name: str) -> dict[str, str]:
        script = ('for p in /root/zap-ro-test /etc/zap-ro-test /var/tmp/zap-ro-test "$ZAP_POD_PATH/f" /tmp/f '
                  "/dev/shm/f /mnt/f; do if (echo x > $p) 2>/dev/null; then echo $p ok; rm -f $p; "
                  "else echo $p refused; fi; done; echo x > /dev/null && echo /dev/null ok")  # fmt: skip
        out = zap("exec", name, "--", "sh", "-c", script).stdout
        return {p: r for p, r in (ln.rsplit(" ", 1) for ln in out.splitlines())}

    want = {"/root/zap-ro-test": "refused", "/etc/zap-ro-test": "refused", "/var/tmp/zap-ro-test": "refused",
            f"{zap.pod('ro')['path']}/f": "ok", "/tmp/f": "ok", "/dev/shm/f": "ok", "/mnt/f": "ok",
            "/dev/null": "ok"}  # fmt: skip
    assert writes("ro") == want
    zap("checkpoint", "ro")
    zap("restore", "ro@1")
    assert writes("ro") == want
    zap("branch", "ro@1", "ro2")
    assert writes("ro2") == want and zap.pod("ro2")["host_writable"] is False
    zap("run", "rw", "--host-writable", "--", "sleep", "600")
    assert writes("rw")["/var/tmp/zap-ro-test"] == "ok" and zap.pod("rw")["host_writable"] is True
    assert not Path("/var/tmp/zap-ro-test").exists()
    zap.fails("run", "sys", "--rootfs", str(host_dir), "--host-writable", "--", "true", code=2)


def test_a_pod_does_not_pin_mounts_the_host_unmounts(zap, host_dir, tmp_path):
    """Neither another state directory's pool (its loop device goes with `zap deinit`) nor a
    disk the host unmounts later (where the host's mounts are shared, as systemd makes them)."""
    from conftest import Zap

    other = Zap(tmp_path / "other")
    other("init", "--size", "1G")
    try:
        shared = host_dir / "shared"
        shared.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "zaptest", str(shared)], check=True)
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        img = host_dir / "disk.img"
        subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
        (shared / "disk").mkdir()
        subprocess.run(["mount", "-o", "loop", str(img), str(shared / "disk")], check=True)

        zap("run", "pin", "--", "sleep", "600")
        init = zap.pod("pin")["pid"]
        mounts = lambda: Path(f"/proc/{init}/mountinfo").read_text()  # noqa: E731
        loops = lambda what: [ln for ln in subprocess.run(["losetup", "-a"], capture_output=True, text=True)
                              .stdout.splitlines() if str(what) in ln]  # noqa: E731  # fmt: skip
        assert str(shared / "disk") in mounts() and loops(other.home)
        other("deinit")
        assert not loops(other.home) and str(other.home / "pool") not in mounts()
        subprocess.run(["umount", str(shared / "disk")], check=True)
        assert str(shared / "disk") not in mounts() and not loops(img)
        assert zap.pod("pin")["state"] == "running"
    finally:
        subprocess.run(["umount", "-R", str(host_dir / "shared")], capture_output=True)
        other("deinit", "--purge", check=False)
