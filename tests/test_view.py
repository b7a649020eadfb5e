"""The FUSE view (`zap mount`), on real FUSE mounts over real btrfs snapshots and the real image
store: browse and compare byte for byte, live updates, branch by mkdir, read-only everywhere
else, damaged images, busy unmounts, signals, permissions."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from helpers import ROOT, ZAP_CMD, assert_continuous, counted_past, counter_values, wait_for


def _mounted(mp: Path) -> bool:
    return any(ln.split()[4] == str(mp) for ln in Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.fixture
def view(zap):
    mp = Path(tempfile.mkdtemp(prefix="zapview-", dir="/tmp"))
    os.chmod(mp, 0o755)  # other users must reach it for the --allow-other test
    try:
        yield mp
    finally:
        if _mounted(mp):
            zap("umount", "--lazy", mp, check=False)
        assert not _mounted(mp), "the view is still mounted"
        assert not list((zap.home / "views").glob("*.json")) if (zap.home / "views").exists() else True
        mp.rmdir()


def _mount(zap, mp: Path, *opts: str) -> int:
    out = zap("mount", mp, *opts)
    assert out.stdout.strip() == str(mp) and _mounted(mp)
    return int(json.loads(next((zap.home / "views").glob("*.json")).read_text())["pid"])


def _populate(vol: Path) -> None:
    """Every file type, hard and symbolic links, odd modes, xattrs, a sparse and a larger file."""
    (vol / "dir" / "sub").mkdir(parents=True)
    (vol / "dir" / "sub" / "deep.txt").write_text("deep\n")
    (vol / "big.bin").write_bytes(os.urandom(3 << 20) + b"tail")
    (vol / "empty").write_bytes(b"")
    os.link(vol / "big.bin", vol / "dir" / "big-link.bin")
    os.symlink("dir/sub/deep.txt", vol / "rel-link")
    os.symlink("/nonexistent/target", vol / "dangling")
    os.mkfifo(vol / "fifo")
    os.mknod(vol / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(vol / "sock"))
    s.close()
    (vol / "secret").write_text("s\n")
    os.chmod(vol / "secret", 0o600)
    (vol / "setuid").write_text("#!/bin/sh\n")
    os.chmod(vol / "setuid", 0o4755)
    with open(vol / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5 << 20)
        f.write(b"middle")
    os.setxattr(vol / "big.bin", "user.origin", b"zap test")
    os.utime(vol / "empty", ns=(1_000_000_000, 1_234_567_890_123_456_789))


def _tree(root: Path) -> dict:
    """Everything a reader can see of a tree, keyed by relative path (inode numbers aside)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rec = {
                "mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "rdev": st.st_rdev,
                "xattrs": {x: os.getxattr(p, x, follow_symlinks=False) for x in os.listxattr(p, follow_symlinks=False)},
            }  # fmt: skip
            if stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                rec["data"] = p.read_bytes()
            out[str(p.relative_to(root))] = rec
    return out


def test_browse_matches_the_snapshot(zap, view):
    zap("run", "files", "--", "sleep", "1000")
    _populate(zap.volume("files"))
    zap("checkpoint", "files", "-m", "populated")
    zap("tag", "files@1", "good")
    pid = _mount(zap, view)
    ck = zap.json("show", "files@1")
    top = view / "pods" / "files"

    # The layout a person finds with ls.
    assert os.listdir(view) == ["pods"] and os.listdir(view / "pods") == ["files"]
    assert sorted(os.listdir(top)) == ["by-time", "checkpoints", "info.json", "latest", "live", "tags"]
    assert os.readlink(top / "latest") == "checkpoints/1"
    assert os.listdir(top / "tags") == ["good"] and os.readlink(top / "tags" / "good") == "../checkpoints/1"
    assert sorted(os.listdir(top / "tags" / "good" / "fs")) == sorted(os.listdir(top / "checkpoints" / "1" / "fs"))
    assert os.readlink(top / "live") == str(zap.volume("files"))
    (stamp,) = os.listdir(top / "by-time")
    assert os.readlink(top / "by-time" / stamp) == "../checkpoints/1" and stamp.startswith(ck["created_at"][:4])
    c1 = top / "checkpoints" / "1"
    assert sorted(os.listdir(c1)) == ["branches", "fs", "images", "info.json", "processes"]
    assert json.loads((c1 / "info.json").read_text()) == ck
    assert json.loads((top / "info.json").read_text())["name"] == "files"
    procs = {p["pid"]: p for p in ck["processes"]}
    assert sorted(os.listdir(c1 / "processes")) == sorted(map(str, procs))
    p1 = c1 / "processes" / "1"
    assert (p1 / "cmdline").read_bytes() == b"catatonit\x00--\x00sleep\x001000\x00"  # the pod's init, then its command
    assert os.readlink(p1 / "cwd") == procs[1]["cwd"]
    assert (p1 / "host_pid").read_text().strip() == str(procs[1]["host_pid"])

    # fs/ is the snapshot, byte for byte, every file type, links as they were.
    snap = Path(ck["snapshot"]["path"])
    assert _tree(c1 / "fs") == _tree(snap)
    fs = c1 / "fs"
    assert os.lstat(fs / "big.bin").st_ino == os.lstat(fs / "dir" / "big-link.bin").st_ino
    assert os.lstat(fs / "big.bin").st_ino != os.lstat(fs / "empty").st_ino
    assert stat.S_ISFIFO(os.lstat(fs / "fifo").st_mode) and stat.S_ISSOCK(os.lstat(fs / "sock").st_mode)
    assert stat.S_ISCHR(os.lstat(fs / "null-dev").st_mode)
    assert (fs / "rel-link").read_text() == "deep\n"  # symlinks resolve inside the view
    # Inode numbers are derived, so they survive a remount.
    inos = {n: os.lstat(fs / n).st_ino for n in ("big.bin", "dir", "rel-link")} | {"c1": os.lstat(c1).st_ino}

    # images/ is the CRIU image set, reassembled from the store on read.
    stage = zap.home / "stage"
    subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from zapckpt.context import Context
from zapckpt.store.imagesets import store
ctx = Context()
with ctx.catalog.session() as s:
    store(ctx).materialize(s, {ck['id']!r}, Path({str(stage)!r}))
"""], check=True, env=zap.env)  # fmt: skip
    names = sorted(os.listdir(stage))
    assert sorted(os.listdir(c1 / "images")) == names and any(n.startswith("pages-") for n in names)
    for n in names:
        assert (c1 / "images" / n).read_bytes() == (stage / n).read_bytes(), n
        assert os.stat(c1 / "images" / n).st_size == os.stat(stage / n).st_size
    with open(c1 / "images" / "pages-1.img", "rb") as f:  # random access, across chunks
        f.seek(4096 - 10)
        assert f.read(20) == (stage / "pages-1.img").read_bytes()[4086:4106]

    zap("umount", view)
    assert not _mounted(view)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the view's server to exit")
    _mount(zap, view)
    assert {n: os.lstat(fs / n).st_ino for n in ("big.bin", "dir", "rel-link")} | {"c1": os.lstat(c1).st_ino} == inos
    zap("umount", view)


def test_read_only_everywhere_but_branches(zap, view):
    zap("run", "ro", "--", "sleep", "1000")
    (zap.volume("ro") / "f.txt").write_text("x\n")
    zap("checkpoint", "ro")
    _mount(zap, view)
    c1 = view / "pods" / "ro" / "checkpoints" / "1"
    attempts = [
        lambda: open(c1 / "fs" / "f.txt", "w"),
        lambda: open(c1 / "fs" / "f.txt", "a"),
        lambda: open(c1 / "fs" / "new.txt", "x"),
        lambda: os.unlink(c1 / "fs" / "f.txt"),
        lambda: os.rename(c1 / "fs" / "f.txt", c1 / "fs" / "g.txt"),
        lambda: os.chmod(c1 / "fs" / "f.txt", 0o777),
        lambda: os.truncate(c1 / "fs" / "f.txt", 0),
        lambda: os.setxattr(c1 / "fs" / "f.txt", "user.x", b"1"),
        lambda: os.symlink("x", c1 / "fs" / "l"),
        lambda: os.mkdir(c1 / "fs" / "d"),
        lambda: os.mkdir(c1 / "newdir"),
        lambda: os.mkdir(view / "pods" / "ro" / "checkpoints" / "2"),
        lambda: os.rmdir(c1 / "branches"),
        lambda: open(c1 / "info.json", "w"),
        lambda: open(c1 / "images" / "pages-1.img", "r+b"),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, (i, e.value)
    assert (c1 / "fs" / "f.txt").read_text() == "x\n"
    assert zap.json("list")["checkpoints"].__len__() == 1
    zap("umount", view)


def test_branch_by_mkdir_and_live_updates(zap, view):
    zap.run_counter("web")
    zap("checkpoint", "web", "-m", "one")
    _mount(zap, view)
    top = view / "pods" / "web"
    branches = top / "checkpoints" / "1" / "branches"
    assert os.listdir(branches) == []

    # Bad names and taken names change nothing.
    for bad, code in (("Bad_Name", errno.EINVAL), ("web", errno.EEXIST), ("-x", errno.EINVAL)):
        with pytest.raises(OSError) as e:
            os.mkdir(branches / bad)
        assert e.value.errno == code, bad
    assert [p["name"] for p in zap.json("ps")["pods"]] == ["web"]
    log = next((zap.home / "logs").glob("view-mount-*.log")).read_text()
    assert "invalid pod name 'Bad_Name'" in log and "already exists" in log

    # mkdir returns once the branch runs, exactly as `zap branch web@1 fork` would.
    os.mkdir(branches / "fork")
    fork = zap.pod("fork")
    assert fork["state"] == "running" and fork["origin"] == "web@1"
    assert os.listdir(branches) == ["fork"]
    # The branch's namespaces do not hold a copy of the view (it would outlive the unmount).
    assert " - fuse.zapckpt " not in Path(f"/proc/{fork['pid']}/mountinfo").read_text()
    assert os.readlink(branches / "fork" / "pod") == "../../../../../fork"
    assert json.loads((branches / "fork" / "pod" / "info.json").read_text())["origin"] == "web@1"
    at = counter_values(Path(zap.json("show", "web@1")["snapshot"]["path"]))
    vals = counted_past(zap.volume("fork"), len(at) + 50, "fork counting")
    assert vals[: len(at)] == at
    assert_continuous(vals)
    assert sorted(os.listdir(view / "pods")) == ["fork", "web"]

    # New checkpoints appear without a remount, while another thread keeps reading the view.
    errors, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                for n in os.listdir(top / "checkpoints"):
                    c = top / "checkpoints" / n
                    json.loads((c / "info.json").read_text())
                    (c / "fs" / "counter.txt").read_bytes()
                os.readlink(top / "latest")
            except OSError as e:
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2, 6):
            assert zap("checkpoint", "web", "-m", f"n{i}").stdout.strip() == f"web@{i}"
            assert str(i) in os.listdir(top / "checkpoints")
            assert os.readlink(top / "latest") == f"checkpoints/{i}"
            snap = counter_values(Path(zap.json("show", f"web@{i}")["snapshot"]["path"]))
            assert counter_values(top / "checkpoints" / str(i) / "fs") == snap
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(os.listdir(top / "by-time")) == 5
    # Removed checkpoints go from the view too.
    zap("rmckpt", "web@3")
    assert sorted(os.listdir(top / "checkpoints"), key=int) == ["1", "2", "4", "5"]
    wait_for(lambda: not (top / "checkpoints" / "3").exists(), timeout=5, what="web@3 to leave the view")
    zap("umount", view)


def test_damaged_images_are_eio_and_the_mount_survives(zap, view):
    zap("run", "dmg", "--", "python3", "-c",
        "import time; x = bytes(range(256)) * 40000; open('ready', 'w').close(); time.sleep(1000)")  # fmt: skip
    wait_for(lambda: (zap.volume("dmg") / "ready").exists(), what="the process to fill its memory")
    zap("checkpoint", "dmg")
    packs = list((zap.home / "store" / "packs").iterdir())
    _mount(zap, view)
    c1 = view / "pods" / "dmg" / "checkpoints" / "1"
    for pack in packs:  # every frame's checksum now fails
        size = pack.stat().st_size
        with open(pack, "r+b") as f:
            for off in range(0, size, 4096):
                f.seek(off)
                f.write(b"\xff" * 64)
    with pytest.raises(OSError) as e:
        (c1 / "images" / "pages-1.img").read_bytes()
    assert e.value.errno == errno.EIO
    log = next((zap.home / "logs").glob("view-mount-*.log")).read_text()
    assert "damaged" in log
    # Still serving: the rest of the view answers.
    assert "info.json" in os.listdir(c1) and json.loads((c1 / "info.json").read_text())["ref"] == "dmg@1"
    zap("umount", view)


def test_unmount_busy_lazy_signals_and_bad_input(zap, view):
    zap("run", "u", "--", "sleep", "1000")
    (zap.volume("u") / "f.txt").write_text("x\n")
    zap("checkpoint", "u")
    # Bad input: one line, exit 2.
    assert "does not exist" in zap.fails("mount", view / "missing", code=2)
    assert "not a mounted zap view" in zap.fails("umount", view, code=2)
    pid = _mount(zap, view)
    assert "already a mount point" in zap.fails("mount", view, code=2)

    # Busy: a clear refusal, the view keeps working; --lazy detaches it anyway.
    f = open(view / "pods" / "u" / "checkpoints" / "1" / "fs" / "f.txt")
    assert "busy" in zap.fails("umount", view, code=1)
    assert _mounted(view) and f.read() == "x\n"
    zap("umount", "--lazy", view)
    assert not _mounted(view)
    f.close()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the view's server to exit")

    # Foreground: SIGTERM (and SIGINT) unmount cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        fg = subprocess.Popen([*ZAP_CMD, "mount", "--foreground", str(view)],
                              env=zap.env, stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(lambda: _mounted(view) and os.listdir(view) == ["pods"], what="the foreground mount")
        fg.send_signal(sig)
        assert fg.wait(timeout=20) == 0, fg.stderr.read()
        assert not _mounted(view)


def test_permissions_root_only_unless_allow_other(zap, view):
    zap("run", "perm", "--", "sleep", "1000")
    (zap.volume("perm") / "public.txt").write_text("hello\n")
    os.chmod(zap.volume("perm") / "public.txt", 0o644)
    (zap.volume("perm") / "private.txt").write_text("no\n")
    os.chmod(zap.volume("perm") / "private.txt", 0o600)
    zap("checkpoint", "perm")
    c1 = view / "pods" / "perm" / "checkpoints" / "1"

    def as_nobody(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                              capture_output=True, text=True)  # fmt: skip

    _mount(zap, view)
    assert as_nobody("cat", str(c1 / "fs" / "public.txt")).returncode != 0
    zap("umount", view)

    _mount(zap, view, "--allow-other")
    assert as_nobody("cat", str(c1 / "fs" / "public.txt")).stdout == "hello\n"
    assert as_nobody("cat", str(c1 / "fs" / "private.txt")).returncode != 0
    assert as_nobody("ls", str(c1 / "images")).returncode != 0
    assert as_nobody("cat", str(c1 / "images" / "pages-1.img")).returncode != 0
    assert (c1 / "images" / "pages-1.img").stat().st_size > 0  # root still reads them
    zap("umount", view)
