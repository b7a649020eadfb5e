"""System pods (their own Debian root), `zap guard` and `zap diff`, with real debootstrap (cached
machine-wide after the first build), real dpkg inside the pod, real CRIU and btrfs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import ZAP_CMD, assert_continuous, counted_past, counter_values, pod_runs, proc_state, wait_for

# A service with state in memory (n) and on disk (the file it appends to): after a rollback the
# file must go on exactly where the pre checkpoint's memory was.
SERVICE = "n=0; while :; do n=$((n+1)); echo $n >> /srv/counter.txt; sleep 0.005; done\n"


def _deb(tmp: Path, name: str, postinst_exit: int) -> Path:
    """A package installing a file in /usr and a conffile in /etc; its postinst changes more
    files in /etc and /usr and then exits with postinst_exit."""
    root = tmp / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / name).mkdir(parents=True)
    (root / "usr" / "share" / name / "data.txt").write_text(f"{name} data\n")
    (root / "etc").mkdir()
    (root / "etc" / f"{name}.conf").write_text("setting=1\n")
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: zap <zap@example.org>\n"
        f"Description: zap guard test package\n"
    )
    (root / "DEBIAN" / "conffiles").write_text(f"/etc/{name}.conf\n")
    post = root / "DEBIAN" / "postinst"
    post.write_text(f"#!/bin/sh\necho upgraded >> /etc/issue\necho {name} > /usr/share/{name}-postinst\nexit {postinst_exit}\n")
    post.chmod(0o755)
    out = tmp / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True, capture_output=True)
    return out


def _fails(zap, *args, code: int) -> str:
    """guard reports its progress on stderr; the failure is its last line, one clear line."""
    cp = zap(*args, check=False)
    assert cp.returncode == code, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
    # nothing of ours in between (a shell's "Killed" for the check zap ended, say)
    assert "Killed" not in cp.stderr.splitlines(), cp.stderr
    last = cp.stderr.strip().splitlines()[-1]
    assert last.startswith("zap: error: ")
    return last


def _system_pod(zap, name: str) -> Path:
    zap("create", name, "--rootfs", "debian:bookworm", "--", "bash", "/srv/service.sh", timeout=600)
    vol = zap.volume(name)
    (vol / "srv" / "service.sh").write_text(SERVICE)
    zap("start", name)
    wait_for(lambda: len(counter_values(vol / "srv")) > 20, what=f"{name} to count")
    return vol


def test_guard_rolls_back_a_failed_upgrade_and_keeps_a_good_one(zap, tmp_path):
    vol = _system_pod(zap, "kv")
    pod = zap.pod("kv")
    # The pod runs chrooted in its own root, with its own /proc.
    assert zap("exec", "kv", "--", "cat", "/etc/debian_version").stdout.startswith("12.")
    assert zap("exec", "kv", "--", "cat", "/proc/1/cmdline").stdout.split("\0")[:4] == ["catatonit", "--", "bash", "/srv/service.sh"]

    bad, good = _deb(tmp_path, "zaptest-bad", 1), _deb(tmp_path, "zaptest-good", 0)
    for deb in (bad, good):
        (vol / "tmp" / deb.name).write_bytes(deb.read_bytes())
    status = (vol / "var/lib/dpkg/status").read_bytes()
    issue = (vol / "etc/issue").read_bytes()

    # The failing upgrade: dpkg unpacks, the postinst changes /etc and /usr, then exits 1.
    out = zap("guard", "kv", "--", "dpkg", "-i", "/tmp/zaptest-bad.deb", check=False)
    assert out.returncode == 1, out.stderr
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("zap: error: `dpkg -i /tmp/zaptest-bad.deb` failed (exit 1); rolled kv back to kv@1")
    assert "the failed state is kept as kv@2" in err[-1]
    assert "Traceback" not in out.stderr
    vol = zap.volume("kv")
    assert (vol / "var/lib/dpkg/status").read_bytes() == status
    assert (vol / "etc/issue").read_bytes() == issue
    assert not (vol / "etc/zaptest-bad.conf").exists() and not (vol / "usr/share/zaptest-bad").exists()
    assert not (vol / "usr/share/zaptest-bad-postinst").exists()
    after = zap.pod("kv")
    assert after["state"] == "running" and after["pid"] != pod["pid"]
    # Its memory is the pre checkpoint's: the file goes on from there without a gap, and grows.
    pre_values = counter_values(Path(zap.json("show", "kv@1")["snapshot"]["path"]) / "srv")
    values = wait_for(lambda: (v := counter_values(vol / "srv")) and len(v) > len(pre_values) + 50 and v,
                      what="the service to serve again")  # fmt: skip
    assert values[: len(pre_values)] == pre_values
    assert_continuous(values)
    # The failed state is kept for inspection, with what the broken upgrade did.
    failed = zap.json("show", "kv@2")
    assert failed["message"] == "failed: dpkg -i /tmp/zaptest-bad.deb" and failed["has_processes"]
    assert (Path(failed["snapshot"]["path"]) / "etc/zaptest-bad.conf").exists()
    assert b"upgraded" in (Path(failed["snapshot"]["path"]) / "etc/issue").read_bytes()
    assert [c["message"] for c in zap.json("list", "kv")["checkpoints"]] == ["pre: dpkg -i /tmp/zaptest-bad.deb",
                                                                             "failed: dpkg -i /tmp/zaptest-bad.deb"]
    # kv@latest is the state the pod runs from again, not the failed copy (issue 15).
    assert zap.json("show", "kv@latest")["ref"] == "kv@1" and zap.json("show", "kv@2")["kind"] == "auto"

    # The good upgrade: a pre/post pair, and diff lists what the package installed.
    out = zap("guard", "kv", "--check", "test -f /etc/zaptest-good.conf", "--", "dpkg", "-i", "/tmp/zaptest-good.deb")
    assert out.stdout.split()[-2:] == ["kv@3", "kv@4"]  # after the output of dpkg itself
    assert [c["kind"] for c in zap.json("list", "kv")["checkpoints"]][-2:] == ["pre", "post"]
    d = zap.json("diff", "kv@3", "kv@4")
    listed = zap("exec", "kv", "--", "dpkg", "-L", "zaptest-good").stdout.split()
    pre_root = Path(zap.json("show", "kv@3")["snapshot"]["path"])
    installed = {p for p in listed if not (pre_root / p.lstrip("/")).exists()}
    installed.add("/usr/share/zaptest-good-postinst")  # what the postinst wrote
    bookkeeping = ("/var/lib/dpkg/", "/var/log/", "/srv/counter.txt", "/var/cache/debconf/")
    assert {p for p in d["added"] if not p.startswith(bookkeeping)} == installed
    assert {p for p in d["modified"] if not p.startswith(bookkeeping)} == {"/etc/issue"}
    assert not d["deleted"] and d["counts"]["added"] == len(d["added"])
    assert "/var/lib/dpkg/status" in d["modified"]
    human = zap("diff", "kv@3", "kv@4")
    assert "+ /etc/zaptest-good.conf" in human.stdout.splitlines() and "M /etc/issue" in human.stdout.splitlines()
    assert human.stderr.strip().startswith("kv@3 -> kv@4: ")


def test_system_pod_checkpoint_branch_restore_and_view(zap, tmp_path):
    vol = _system_pod(zap, "sys")
    zap("checkpoint", "sys", "-m", "one")
    at = counter_values(Path(zap.json("show", "sys@1")["snapshot"]["path"]) / "srv")
    zap("branch", "sys@1", "fork")
    fork = zap.pod("fork")
    assert fork["state"] == "running"
    fvals = counted_past(zap.volume("fork") / "srv", len(at) + 50, "the branch to count")  # fmt: skip
    assert fvals[: len(at)] == at
    assert_continuous(fvals)
    # The branch has its own root and its own /proc, pid 1 inside.
    assert zap("exec", "fork", "--", "cat", "/proc/1/cmdline").stdout.startswith("catatonit\0--\0bash\0/srv/service.sh")
    zap("exec", "fork", "--", "sh", "-c", "echo fork-only > /etc/fork-marker")
    assert not (vol / "etc/fork-marker").exists()
    # A branch compares with the pod it came from (issue 15: unrelated pods do not, below).
    zap("checkpoint", "fork")
    assert "+ /etc/fork-marker" in zap("diff", "sys@1", "fork@1").stdout.splitlines()
    # And a checkpoint with the pod's files now (issue 15), through a snapshot deleted afterwards.
    zap("exec", "fork", "--", "sh", "-c", "echo later > /etc/later-marker; rm /etc/fork-marker")
    live = zap.json("diff", "fork@1")
    assert live["to"] == "fork (now)" and "/etc/later-marker" in live["added"] and "/etc/fork-marker" in live["deleted"]
    assert not [p for p in (zap.home / "pool" / "snapshots").iterdir() if p.name.startswith("diff-")]
    # A new pod of the same release is a snapshot of the cached template, not a new debootstrap:
    # btrfs says so (its volume's parent is the template subvolume).
    zap("create", "second", "--rootfs", "debian:bookworm")
    template = zap.home / "pool" / "templates" / "debian-bookworm"
    assert _subvolume_field(zap.volume("second"), "Parent UUID") == _subvolume_field(template, "UUID")
    assert (zap.volume("second") / "etc/debian_version").exists() and zap.pod("second")["state"] == "stopped"
    assert "has no command" in zap.fails("start", "second", code=2)
    # --rootfs DIR: a plain directory is copied (hard links, modes, xattrs kept), and gets the
    # device nodes and directories a pod root needs.
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(tree / "usr" / "bin" / "tool", 0o4755)
    os.link(tree / "usr" / "bin" / "tool", tree / "usr" / "bin" / "tool2")
    zap("create", "copied", "--rootfs", tree)
    cv = zap.volume("copied")
    assert os.stat(cv / "usr/bin/tool").st_mode & 0o7777 == 0o4755
    assert os.stat(cv / "usr/bin/tool").st_ino == os.stat(cv / "usr/bin/tool2").st_ino
    assert os.major(os.stat(cv / "dev/null").st_rdev) == 1 and (cv / "proc").is_dir()
    assert zap.pod("copied")["rootfs"] == str(tree)
    # The FUSE view shows a system pod's checkpoint like any other.
    mp = Path(tmp_path / "view")
    mp.mkdir()
    zap("mount", mp)
    try:
        fs = mp / "pods" / "sys" / "checkpoints" / "1" / "fs"
        assert (fs / "etc" / "debian_version").read_text() == (vol / "etc" / "debian_version").read_text()
        assert (fs / "srv" / "service.sh").read_text() == SERVICE
    finally:
        zap("umount", mp)
    zap("restore", "sys@1")
    vals = counted_past(zap.volume("sys") / "srv", len(at) + 50, "the restored pod to count")  # fmt: skip
    assert vals[: len(at)] == at
    assert_continuous(vals)
    # Bad --rootfs specs change nothing.
    assert "bad --rootfs" in zap.fails("run", "x", "--rootfs", "ubuntu", "--", "true", code=2)
    assert "no such directory" in zap.fails("run", "x", "--rootfs", "/nonexistent", "--", "true", code=2)
    assert "x" not in [p["name"] for p in zap.json("ps")["pods"]]
    # Checkpoints of unrelated pods share no history to compare (it printed btrfs's temporary
    # names, `- /o257-7-0/console.log`).
    zap.run_counter("other")
    zap("checkpoint", "other")
    assert "unrelated pods" in zap.fails("diff", "sys@1", "other@1", code=2)


def test_guard_failures_and_bad_input(zap):
    # Bad input, before anything is changed.
    assert "no pod named" in zap.fails("guard", "ghost", "--", "true", code=2)
    zap("run", "vol", "--", "python3", "-c", "import time; time.sleep(1000)")
    assert "not found inside pod" in zap.fails("guard", "vol", "--", "no-such-command", code=2)
    assert "no command given" in zap.fails("guard", "vol", code=2)
    assert zap.json("list", "vol")["checkpoints"] == []
    zap("stop", "vol", "-t", "1")
    assert "is not running" in zap.fails("guard", "vol", "--", "true", code=2)
    zap("start", "vol")

    # A health check that hangs is killed, and the pod rolled back.
    line = _fails(zap, "guard", "vol", "--check", "sleep 600", "--check-timeout", "1", "--",
                  "sh", "-c", "echo changed > f", code=1)  # fmt: skip
    assert "hung (killed after 1s)" in line and "rolled vol back to vol@1" in line
    assert not (zap.volume("vol") / "f").exists()

    # Ctrl-C during the command rolls back too.
    g = subprocess.Popen([*ZAP_CMD, "guard", "vol", "--", "sleep", "600"],
                         env=zap.env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: len(zap.json("list", "vol")["checkpoints"]) == 3, what="the pre checkpoint")
    wait_for(lambda: pod_runs(zap, "vol", b"sleep\x00600"), what="the guarded command to run")
    g.send_signal(signal.SIGINT)
    assert g.wait(timeout=120) == 1
    err = g.stderr.read()
    assert "was interrupted; rolled vol back to vol@3" in err and "Traceback" not in err
    assert zap.pod("vol")["state"] == "running"

    # The guard holds the pod from its pre checkpoint to its post one: another command's
    # checkpoint waits (here: gives up at once) instead of landing in between (issue 15).
    n = len(zap.json("list", "vol")["checkpoints"])
    g = subprocess.Popen([*ZAP_CMD, "guard", "vol", "--", "sh", "-c",
                          "while [ ! -e go ]; do sleep 0.1; done; rm go"], env=zap.env, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    wait_for(lambda: len(zap.json("list", "vol")["checkpoints"]) == n + 1, what="the pre checkpoint")
    busy = zap("checkpoint", "vol", check=False, env={"ZAP_LOCK_TIMEOUT": "0.5"})
    assert busy.returncode == 1 and "is busy: another zap command is working on it" in busy.stderr, busy.stderr
    (zap.volume("vol") / "go").touch()
    assert g.wait(timeout=120) == 0, g.stderr.read()
    pair = zap.json("list", "vol")["checkpoints"][n:]
    assert [(c["seq"], c["kind"]) for c in pair] == [(n + 1, "pre"), (n + 2, "post")]
    # prune keeps a guard's pair together.
    plan = zap.json("prune", "vol", "--keep-last", "1", "--dry-run")["checkpoints"]
    assert [(c["ref"], c["action"]) for c in plan[-2:]] == [(f"vol@{n + 1}", "keep"), (f"vol@{n + 2}", "keep")]
    assert plan[-2]["why"] == f"guard pair of vol@{n + 2}" and plan[-3]["action"] == "would remove"

    # A rollback that itself fails: said so, both states kept, exit 1.
    snaps = Path(zap.json("show", "vol@1")["snapshot"]["path"]).parent
    # The command fails only once the test says so, after the snapshot directory is made
    # immutable (a fixed sleep raced with a slow CI machine's polling).
    n = len(zap.json("list", "vol")["checkpoints"])
    g = subprocess.Popen([*ZAP_CMD, "guard", "vol", "--", "sh", "-c",
                          "while [ ! -e go ]; do sleep 0.1; done; rm go; exit 1"],
                         env=zap.env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: len(zap.json("list", "vol")["checkpoints"]) == n + 1, what="the pre checkpoint")
    subprocess.run(["chattr", "+i", str(snaps)], check=True)
    try:
        (zap.volume("vol") / "go").touch()
        assert g.wait(timeout=120) == 1
    finally:
        subprocess.run(["chattr", "-i", str(snaps)], check=True)
    err = g.stderr.read().strip().splitlines()[-1]
    assert "failed (exit 1), and rolling back to" in err and "failed too" in err and "is kept as" in err
    pod = zap.pod("vol")
    assert pod["state"] == "running" and proc_state(pod["pid"]) not in ("T", "t")


def test_host_guard_refuses_a_non_btrfs_root(zap):
    root_fs = subprocess.run(["stat", "-f", "-c", "%T", "/"], capture_output=True, text=True).stdout.strip()
    if root_fs == "btrfs":
        pytest.fail("this test expects the machine's root not to be btrfs (see test_host_guard_on_a_btrfs_root)")
    line = zap.fails("guard", "--host", "--", "true", code=2)
    assert "not btrfs" in line and "`zap guard --host` needs" in line
    # each command names itself, not another one (issue 23)
    for args in (["host-snapshot", "apt-pre"], ["host-snapshot", "--list"]):
        line = zap.fails(*args, code=2)
        assert "not btrfs" in line and "`zap host-snapshot` needs" in line and "guard" not in line, line


def _subvolume_field(path: Path, field: str) -> str:
    out = subprocess.run(["btrfs", "subvolume", "show", str(path)], capture_output=True, text=True, check=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith(field + ":"))


def test_host_guard_on_a_btrfs_root_used_through_chroot(zap, tmp_path):
    """The host mode on a Debian root in a subvolume of a btrfs loop volume (the pool), used
    through chroot: this machine's own root is not btrfs."""
    zap("create", "tpl", "--rootfs", "debian:bookworm", timeout=600)
    root = zap.volume("tpl").parent.parent / "hostroot"
    subprocess.run(["btrfs", "-q", "subvolume", "snapshot", str(zap.volume("tpl")), str(root)], check=True)
    try:
        for deb in (_deb(tmp_path, "hostpkg-bad", 1), _deb(tmp_path, "hostpkg-good", 0)):
            (root / "tmp" / deb.name).write_bytes(deb.read_bytes())
        status = (root / "var/lib/dpkg/status").read_bytes()
        line = _fails(zap, "guard", "--host", "--root", root, "--", "dpkg", "-i", "/tmp/hostpkg-bad.deb", code=1)
        assert "failed (exit 1); rolled" in line and "1-pre" in line and "1-failed" in line
        assert (root / "var/lib/dpkg/status").read_bytes() == status
        assert not (root / "etc/hostpkg-bad.conf").exists()
        store = root.parent / ".hostroot.zap-snapshots"
        assert (store / "1-failed" / "etc/hostpkg-bad.conf").exists()
        # Nothing stays mounted from the chroot's /proc and /dev.
        assert str(root) not in Path("/proc/self/mountinfo").read_text()

        out = zap("guard", "--host", "--root", root, "--check", "test -f /etc/hostpkg-good.conf", "--",
                  "dpkg", "-i", "/tmp/hostpkg-good.deb")  # fmt: skip
        pre, post = out.stdout.split()[-2:]
        assert pre.endswith("2-pre") and post.endswith("2-post")
        assert (root / "etc/hostpkg-good.conf").exists() and (Path(post) / "etc/hostpkg-good.conf").exists()
        assert not (Path(pre) / "etc/hostpkg-good.conf").exists()
        # What the apt hooks call (docs/guard.md): numbered snapshots next to guard's.
        snap = zap("host-snapshot", "--root", root, "apt-pre").stdout.strip()
        assert snap.endswith("/3-apt-pre") and (Path(snap) / "etc/hostpkg-good.conf").exists()
        assert "bad label" in zap.fails("host-snapshot", "--root", root, "Bad Label", code=2)

        # snapper's list and delete: a number's pre/post/failed go together.
        listed = json.loads(zap("host-snapshot", "--list", "--root", root, "--json").stdout)["snapshots"]
        assert [(s["number"], s["label"]) for s in listed] == [
            (1, "failed"), (1, "pre"), (2, "post"), (2, "pre"), (3, "apt-pre")]
        assert listed[0]["command"] == "dpkg -i /tmp/hostpkg-bad.deb" and listed[4]["command"] is None
        assert all(s["created_at"] and not s["default"] for s in listed)
        assert "no host snapshot numbered 9" in zap.fails("host-snapshot", "--root", root, "--delete", "3", "9", code=2)
        assert (store / "3-apt-pre").exists()
        out = zap("host-snapshot", "--root", root, "--delete", "1-2").stdout
        assert out.count("deleted ") == 4 and not (store / "1-pre").exists() and not (store / "1.json").exists()
        # The default subvolume (what a rollback of a live root boots into) is never deleted.
        pool = zap.volume("tpl").parent.parent
        subvol = subprocess.run(["btrfs", "inspect-internal", "rootid", str(store / "3-apt-pre")],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        subprocess.run(["btrfs", "subvolume", "set-default", subvol, str(pool)], check=True)
        try:
            assert zap("host-snapshot", "--list", "--root", root).stdout.splitlines()[1].startswith("3*")
            assert "is the default subvolume" in zap.fails("host-snapshot", "--root", root, "--delete", "3", code=1)
        finally:
            subprocess.run(["btrfs", "subvolume", "set-default", "5", str(pool)], check=True)
        zap("host-snapshot", "--root", root, "--delete", "3")
        assert json.loads(zap("host-snapshot", "--list", "--root", root, "--json").stdout) == {"snapshots": []}
        assert "one of" in zap.fails("host-snapshot", "--root", root, code=2)
    finally:
        for p in sorted((root.parent / ".hostroot.zap-snapshots").glob("*-*")) + [root]:
            subprocess.run(["btrfs", "-q", "subvolume", "delete", str(p)], check=False)


# A syslog-like daemon of a system pod: bound at /dev/log inside its root, it appends what its
# clients send to /srv/log.txt; a client sends a line every few ms over a new connection.
LOG_DAEMON = r"""
use IO::Socket::UNIX;
unlink "/dev/log";
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "/dev/log", Listen => 8) or die "bind: $!";
open(my $out, ">>", "/srv/log.txt") or die; $out->autoflush(1);
while (my $c = $s->accept()) { while (my $l = <$c>) { print $out $l; } close $c; }
"""
LOG_CLIENT = r"""
use IO::Socket::UNIX;
my $i = 0;
while (1) {
    $i++;
    my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => "/dev/log");
    if ($c) { print $c "line $i\n"; close $c; } else { open(my $e, ">>", "/srv/refused.txt"); print $e "$i $!\n"; close $e; }
    select(undef, undef, undef, 0.02);
}
"""


def test_system_pod_unix_socket_restored_inside_its_root(zap):
    """A daemon bound at /dev/log inside a system pod: restore and branch bind it again inside
    the pod's root, the pod's clients reach it, and the host's /dev/log is never touched."""
    host_log = Path("/dev/log")
    made = not os.path.lexists(host_log)
    if made:
        host_log.write_text("host sentinel\n")
    before = host_log.lstat()
    try:
        zap("create", "sl", "--rootfs", "debian:bookworm", "--", "perl", "/srv/logd.pl", timeout=600)
        vol = zap.volume("sl")
        (vol / "srv" / "logd.pl").write_text(LOG_DAEMON)
        (vol / "srv" / "client.pl").write_text(LOG_CLIENT)
        zap("start", "sl")
        zap("exec", "-d", "sl", "--", "perl", "/srv/client.pl")

        def lines(v):
            try:
                return (v / "srv" / "log.txt").read_text().count("\n")
            except FileNotFoundError:
                return 0

        wait_for(lambda: lines(vol) > 20, what="the pod's log daemon to receive lines")
        zap("checkpoint", "sl")
        zap("restore", "sl@1")
        n = lines(vol)
        wait_for(lambda: lines(vol) > n + 20, what="the restored daemon to receive lines")
        zap("branch", "sl@1", "sl-b")
        bvol = zap.volume("sl-b")
        # each system pod's /etc/hosts names it at its own address
        for name, v in (("sl", vol), ("sl-b", bvol)):
            assert f"{zap.pod(name)['address']}\t{name}" in (v / "etc" / "hosts").read_text()
        assert zap("exec", "sl-b", "--", "cat", "/etc/hostname").stdout.strip() == "sl-b"
        assert zap("exec", "sl-b", "--", "hostname").stdout.strip() == "sl-b"
        n = lines(bvol)
        wait_for(lambda: lines(bvol) > n + 20, what="the branch's daemon to receive lines")
        for v in (vol, bvol):  # the pod's clients always found their daemon
            assert not (v / "srv" / "refused.txt").exists(), (v / "srv" / "refused.txt").read_text()
        after = host_log.lstat()
        assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)
        if made:
            assert host_log.read_text() == "host sentinel\n"
    finally:
        if made:
            host_log.unlink()
