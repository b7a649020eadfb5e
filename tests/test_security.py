"""zap runs as root: hostile import files, pods and local users must not get past it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
import zstandard

from helpers import ZAP_CMD, wait_for

# --- crafted `btrfs send` streams (format v1: btrfs-progs send.h) --------------------------
SUBVOL, SYMLINK, WRITE, TRUNCATE, MKFILE, RENAME, END = 1, 8, 15, 17, 3, 9, 21
A_UUID, A_CTRANSID, A_INO, A_SIZE, A_PATH, A_PATH_TO, A_PATH_LINK, A_OFFSET, A_DATA = 1, 2, 3, 4, 15, 16, 17, 18, 19

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def _crc32c_raw(data: bytes) -> int:
    crc = 0  # as btrfs: seed 0, no final inversion
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _cmd(cmd: int, *attrs: tuple[int, bytes]) -> bytes:
    payload = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in attrs)
    head = struct.pack("<IHI", len(payload), cmd, 0)
    crc = _crc32c_raw(head + payload)
    return struct.pack("<IHI", len(payload), cmd, crc) + payload


def crafted_stream(*cmds: bytes) -> bytes:
    sub = _cmd(SUBVOL, (A_PATH, b"evil"), (A_UUID, uuid.uuid4().bytes), (A_CTRANSID, struct.pack("<Q", 7)))
    return b"btrfs-stream\0" + struct.pack("<I", 1) + sub + b"".join(cmds) + _cmd(END)


def export_file(path: Path, stream: bytes, meta_changes: dict | None = None) -> Path:
    meta = {"format": "zapckpt-export", "version": 1,
            "checkpoint": {"ref": "evil@1", "message": "", "kind": "manual", "processes": [],
                           "timings_ms": {"frozen": None, "dump": None, "fs_snapshot": None, "total": None}},
            "pod": {"name": "evil", "mount_path": "/etc", "command": ["true"], "env": {}, "cwd": "/etc",
                    "rootfs": None, "net": "none"}}  # fmt: skip
    for k, v in (meta_changes or {}).items():
        meta["pod"][k] = v
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("zapckpt-export.json", json.dumps(meta).encode()), ("snapshot.btrfs", stream)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


@pytest.fixture
def victim(host_dir):
    """A host file outside the state directory that a hostile import would like to change."""
    v = host_dir / "victim.txt"
    v.write_text("precious\n")
    yield v
    assert v.read_text() == "precious\n", "a host file was changed through an import"


def test_crafted_imports_change_nothing_outside(zap, tmp_path, victim, host_dir):
    link = lambda name, to: _cmd(SYMLINK, (A_PATH, name), (A_INO, struct.pack("<Q", 300)), (A_PATH_LINK, to))  # noqa: E731
    cases = {
        "write through a symlink": crafted_stream(
            link(b"l", str(victim).encode()),
            _cmd(WRITE, (A_PATH, b"l"), (A_OFFSET, struct.pack("<Q", 0)), (A_DATA, b"pwned\n"))),
        "truncate through a symlink": crafted_stream(
            link(b"t", str(victim).encode()), _cmd(TRUNCATE, (A_PATH, b"t"), (A_SIZE, struct.pack("<Q", 0)))),
        "dot-dot path": crafted_stream(
            _cmd(MKFILE, (A_PATH, b"../../../../" + str(host_dir / "made").encode().lstrip(b"/")),
                 (A_INO, struct.pack("<Q", 301)))),
        "rename out of the subvolume": crafted_stream(
            _cmd(MKFILE, (A_PATH, b"f"), (A_INO, struct.pack("<Q", 302))),
            _cmd(RENAME, (A_PATH, b"f"), (A_PATH_TO, str(host_dir / "moved").encode()))),
    }  # fmt: skip
    # (SQLite's -wal and -shm files come and go with its connections: not zap's doing)
    listing = lambda: sorted(p.name for p in zap.home.iterdir() if not p.name.endswith(("-wal", "-shm")))  # noqa: E731
    before = listing()
    for what, stream in cases.items():
        f = export_file(tmp_path / "evil.zap", stream)
        cp = zap("import", f, check=False)
        assert cp.returncode in (0, 1) and "Traceback" not in cp.stderr and "internal error" not in cp.stderr, (what, cp.stderr)
        if cp.returncode == 0:
            # Received inside the pool: the pod's paths are this state directory's, never the file's.
            pod = zap.pod("evil")
            assert pod["path"] == f"{zap.home}/mnt/evil" and pod["cwd"] == f"{zap.home}/mnt/evil", (what, pod)
            assert not Path("/etc/mnt").exists()
            zap("rm", "--force", "evil")
    assert sorted(host_dir.iterdir()) == [victim]
    assert listing() == before, (listing(), before)
    # Hostile metadata is refused before anything is made.
    plain = crafted_stream(_cmd(MKFILE, (A_PATH, b"f"), (A_INO, struct.pack("<Q", 303))))
    for bad in ({"name": "../../x"}, {"command": "rm -rf /"}, {"env": ["A=1"]}, {"name": "x" * 300}):
        line = zap.fails("import", export_file(tmp_path / "bad.zap", plain, bad), code=1)
        assert "bad metadata" in line, line
    assert zap.json("ps")["pods"] == []
    # A path from the file is used only with the shape of a pod path, outside system directories.
    for wanted, got in (("/etc/mnt/evil", f"{zap.home}/mnt/evil"), ("/srv/zap/mnt/evil", "/srv/zap/mnt/evil")):
        zap("import", export_file(tmp_path / "p.zap", plain, {"mount_path": wanted, "cwd": "/"}))
        pod = zap.pod("evil")
        assert (pod["path"], pod["cwd"]) == (got, got), pod
        zap("rm", "--force", "evil")
    assert not Path("/etc/mnt").exists()


def _modes_under(top: Path) -> list[str]:
    found = []
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = Path(dirpath) / n
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            # images (process memory) 0600, every directory 0700; CRIU's own stats files and
            # logs are not memory, and nobody else can reach them anyway (the base is 0700)
            if st.st_mode & 0o077 and (stat.S_ISDIR(st.st_mode) or n.endswith(".img")):
                found.append(f"{p} {stat.filemode(st.st_mode)}")
    return found


def test_staging_is_private(zap):
    """Images are never readable by another user: the staging base is root's 0700, image files
    0600, during a checkpoint and a restore; a base pre-made by another user is refused."""
    zap("run", "hog", "--", "python3", "-c", "import time; x = bytearray(b'k' * (64 << 20)); time.sleep(1000)")
    tag = hashlib.sha1(str(zap.home).encode()).hexdigest()[:10]
    base = Path(f"/dev/shm/zapckpt.{tag}")
    seen, bad, stop = set(), [], threading.Event()

    def watch():
        tried = False
        while not stop.is_set():
            try:
                st = os.lstat(base)
                found = list(base.rglob("*"))
            except FileNotFoundError:
                continue  # made or removed while looked at: look again
            if st.st_uid != 0 or st.st_mode & 0o077:
                bad.append(f"base {stat.filemode(st.st_mode)}")
            for p in found:
                seen.add(p.name)
                if not tried and p.name.startswith("pages-"):
                    tried = True  # a real attempt by another user, not only the modes
                    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(p)],
                                        capture_output=True)  # fmt: skip
                    if cp.returncode == 0:
                        bad.append(f"user nobody read {p}")
            bad.extend(_modes_under(base))

    t = threading.Thread(target=watch)
    t.start()
    try:
        zap("checkpoint", "hog")
        zap("restore", "hog@1")
        # its memory in, and the state it replaced stored (from staging) in the background
        wait_for(lambda: zap.json("show", "hog@2")["image_format"] == "cas", what="the replaced state stored")
    finally:
        stop.set()
        t.join()
    assert any(n.startswith("pages-") for n in seen), "the watcher never saw an image"
    assert not bad, bad[:5]
    # Another user's directory in its place is refused, not used.
    shutil.rmtree(base)
    os.mkdir(base, 0o777)
    os.chown(base, 65534, 65534)
    try:
        line = zap.fails("checkpoint", "hog", code=1)
        assert "refusing the staging directory" in line, line
        assert zap.pod("hog")["state"] == "running"
    finally:
        os.rmdir(base)


def test_console_log_symlink_is_not_followed(zap, host_dir):
    """A pod started by an earlier version keeps its console log in its volume, where the pod
    may put a link: made here by turning a new pod into such a pod in the catalog."""
    secret = host_dir / "secret"
    secret.write_text("do not print\n")
    zap("run", "p", "--", "sleep", "600")
    vol = zap.volume("p")
    zap("stop", "p")
    with sqlite3.connect(zap.home / "catalog.db") as db:
        db.execute("UPDATE pods SET console_pipe = NULL WHERE name = 'p'")
    (zap.home / "console" / "p.log").unlink()
    log = vol / ".zap" / "console.log"
    log.unlink(missing_ok=True)  # a new pod writes none
    log.symlink_to(secret)
    line = zap.fails("logs", "p", code=1)
    assert "do not print" not in line
    # start copies the init into .zap (and a pod from before it appends to its log there): never through the link
    os.rename(vol / ".zap", vol / ".zap-real")
    (vol / ".zap").symlink_to(host_dir)
    cp = zap("start", "p", check=False)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert sorted(p.name for p in host_dir.iterdir()) == ["secret"]
    assert secret.read_text() == "do not print\n"


def test_export_refuses_devices_and_symlinks_and_is_private(zap, tmp_path):
    zap("run", "p", "--", "sleep", "600")
    zap("checkpoint", "p")
    assert "not a regular file" in zap.fails("export", "p@1", "/dev/null", code=1)
    assert Path("/dev/null").is_char_device()
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "link.zap").symlink_to(target)
    assert "not a regular file" in zap.fails("export", "p@1", tmp_path / "link.zap", code=1)
    assert target.read_text() == "keep"
    out = tmp_path / "p.zap"
    zap("export", "p@1", out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".zap-export-*"))


def test_view_hides_env_from_other_users(zap, tmp_path):
    zap("run", "p", "--env", "DB_PASSWORD=hunter2", "--", "sleep", "600")
    mp = tmp_path / "view"
    mp.mkdir()
    zap("mount", "--allow-other", mp)
    try:
        info = json.loads((mp / "pods" / "p" / "info.json").read_text())
        assert info["env"] == {"DB_PASSWORD": "(hidden: see `zap show`)"}
        assert "hunter2" not in subprocess.run(["grep", "-r", "hunter2", str(mp / "pods" / "p" / "info.json")],
                                               capture_output=True, text=True).stdout  # fmt: skip
    finally:
        zap("umount", mp)
    assert zap.pod("p")["env"] == {"DB_PASSWORD": "hunter2"}


BAD_LINES = [
    ["restore", "a@99999999999999999999"], ["restore", "a@²"], ["show", "a@-1"], ["run", "x" * 300, "--", "true"],
    ["show", "f" * 70000], ["show", "../../etc/passwd"], ["checkpoint", "../../tmp/x"], ["import", "."],
    ["stop", "a", "-t", "nan"], ["stop", "a", "-t", "inf"], ["stop", "a", "-t", "-1"], ["prune", "a", "--keep-last", "-3"],
    ["prune", "a", "--keep-last", "٣"], ["guard", "a", "--check-timeout", "nan", "--", "true"], ["mount", "/" + "m" * 5000],
    ["checkpoint", "a", "--ghost-limit", "٣M"], ["logs", "a@1"], ["branch", "a@1", "b" * 64], ["rmckpt", "zzzz"],
]  # fmt: skip


def test_bad_input_is_one_line(zap):
    zap("run", "a", "--", "sleep", "600")
    for argv in BAD_LINES:
        cp = zap(*argv, check=False, timeout=30)
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("zap: error: "), (argv[:3], cp.stderr)
    cp = subprocess.run([*ZAP_CMD, "show", b"caf\xe9".decode("utf-8", "surrogateescape")],
                        env=zap.env, capture_output=True)  # fmt: skip
    assert cp.returncode == 2 and cp.stderr.count(b"\n") == 1 and b"UTF-8" in cp.stderr, cp.stderr
    assert zap.pod("a")["state"] == "running"


def test_cli_fuzz_never_internal_error(zap):
    """Random command lines built from the real commands and hostile words: always a clean
    exit (0, 1 or 2) within the time limit, never an internal error or a traceback."""
    import hypothesis
    from hypothesis import strategies as st

    zap("run", "a", "--", "sleep", "600")
    zap("checkpoint", "a")
    words = st.sampled_from(["a", "a@1", "a@latest", "a@0", "b", "@", "--json", "-t", "nan", "--keep-last", "1e99",
                             "-1", "..", "/", "--", "x" * 300, "ä", "\t", "--force", "--stop", "-m", "", "0", "a@1a"])  # fmt: skip
    commands = st.sampled_from(["show", "list", "log", "ps", "checkpoint", "restore", "rmckpt", "prune", "diff",
                                "logs", "stop", "verify", "df", "export", "exec", "branch", "rm"])  # fmt: skip
    safe = {"rm", "rmckpt", "prune", "restore", "stop", "branch", "export", "exec", "checkpoint"}

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(commands, st.lists(words, max_size=4))
    def one(cmd, args):
        if cmd in safe and ("a" in args or "a@1" in args or "a@latest" in args):
            args = [w for w in args if not w.startswith("a")]  # keep the pod itself alive and whole
        cp = zap(cmd, *args, check=False, timeout=60)
        assert cp.returncode in (0, 1, 2), (cmd, args, cp.returncode, cp.stderr)
        assert "internal error" not in cp.stderr and "Traceback" not in cp.stderr, (cmd, args, cp.stderr)

    one()
    wait_for(lambda: zap.pod("a")["state"] == "running", what="a still running")
