"""The small things a new user trips on (issue 23), each checked as that user would meet it."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

from helpers import ZAP_CMD, counted_past, proc_state, wait_for


def test_references_latest_and_their_errors(zap):
    zap.run_counter("web")
    zap("checkpoint", "web")
    zap("restore", "web@1")  # web@2 is the state it replaced
    assert zap.json("show", "web@latest")["ref"] == "web@1"
    zap("restore", "web@2")  # the rollback undone: the pod runs from web@2 (a safety copy) now
    assert zap.json("show", "web@latest")["ref"] == "web@2"  # straight from SQLite
    assert zap("tag", "web@latest", "now").stdout.startswith("web@2:")  # and through the ORM
    # one wording for a reference that names nothing, whatever its form
    for ref in ("web@9", "web@nosuchtag", "abcdef12"):
        line = zap.fails("show", ref, code=2)
        assert line.startswith(f"zap: error: no checkpoint {ref}"), line
        assert "(see `zap list" in line, line
    for ref in ("web@", "web@0x1", "z"):
        assert f"bad checkpoint reference {ref!r}: expected NAME@N, NAME@latest, NAME@TAG or a checkpoint id" in \
            zap.fails("restore", ref, code=2)  # fmt: skip
    # completion offers them
    script = zap("completion", "bash").stdout
    assert "zap list 2>/dev/null" in script and "@latest" in script


def test_ps_format_filters_and_paused_pids(zap):
    zap("run", "p", "--", "sleep", "600")
    out = zap("ps", "--format", "{name} {restart} {restart[policy]} {exit_code} {init} {ports}").stdout.split()
    assert out == ["p", '{"count":0,"max":null,"policy":"no"}', "no", "-", "true", "[]"], out
    assert "state is one of running" in zap.fails("ps", "-f", "state=zombie", code=2)
    assert "net is one of pod" in zap.fails("ps", "-f", "net=bridge", code=2)
    zap("pause", "p")
    pid = zap.pod("p")["pid"]
    assert pid and proc_state(pid) == "T"
    assert zap("ps", "--format", "{name} {state} {pid}").stdout.split() == ["p", "paused", str(pid)]
    zap("unpause", "p")


def test_command_and_value_messages(zap):
    zap("run", "p", "--", "sleep", "600")
    assert "a duration must be more than 0" in zap.fails("watch", "p", "--every", "0s", code=2)
    assert "at least 1s" in zap.fails("watch", "p", "--every", "0.5s", code=2)
    assert "is written --since=VALUE" in zap.fails("logs", "p", "--since", "-5s", code=2)
    assert "duration back from now" in zap.fails("logs", "p", "--since=-5s", code=2)
    assert "is not suspended" in zap.fails("resume", "p", code=2)
    zap("stop", "p")
    assert "is not running" in zap.fails("suspend", "p", code=2)
    # create without a command, then give it one at its first start
    zap("create", "later")
    assert "zap start later -- CMD" in zap.fails("start", "later", code=2)
    zap("start", "later", "--", "sleep", "600")
    assert zap.pod("later")["command"] == ["sleep", "600"] and zap.pod("later")["state"] == "running"
    # limits can be lowered as well as raised (the README says so)
    zap("update", "later", "--memory", "512M")
    zap("update", "later", "--memory", "256M")
    assert zap.pod("later")["limits"]["memory"] == 256 << 20


def test_resume_keeps_no_empty_copy_and_branches_say_what_they_are(zap):
    zap.run_counter("s")
    zap("suspend", "s")
    zap("resume", "s")
    cks = zap.json("list", "s")["checkpoints"]
    assert [c["kind"] for c in cks] == ["suspend"], cks  # no "replaced by resume" files-only copy
    counted_past(zap.volume("s"), 10, "the resumed counter")
    # a branch of a files-only checkpoint is stopped, and says so
    zap("stop", "s")
    zap("restore", "s@1")  # the state it replaced (stopped): a files-only checkpoint s@2
    zap("stop", "s")
    files_only = next(c["ref"] for c in zap.json("list", "s")["checkpoints"] if not c["has_processes"])
    cp = zap("branch", files_only, "fo")
    assert "holds files only" in cp.stderr and "`zap start fo`" in cp.stderr
    assert zap.pod("fo")["state"] == "stopped"
    # rm --force of the origin names the branches it leaves without one
    cp = zap("rm", "--force", "--yes", "s")
    assert "its branches fo go on" in cp.stderr, cp.stderr
    assert zap.pod("fo")["origin"] is None


def test_dump_diff_and_file_paths(zap):
    zap("run", "f", "--", "sleep", "600")
    vol = zap.volume("f")
    (vol / "etc").mkdir()
    (vol / "etc" / "a.conf").write_text("one\n")
    os.symlink("/etc/shadow", vol / "etc" / "link")
    zap("checkpoint", "f")
    (vol / "etc" / "b.conf").write_text("two\n")
    zap("checkpoint", "f")
    # a directory comes out as a tar of what is in it; links stay links, never followed
    cp = subprocess.run([*ZAP_CMD, "dump", "f@2", "etc"], env=zap.env, capture_output=True)
    assert cp.returncode == 0, cp.stderr
    with tarfile.open(fileobj=io.BytesIO(cp.stdout)) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert set(names) == {"etc", "etc/a.conf", "etc/b.conf", "etc/link"}
        assert names["etc/link"].issym() and names["etc/link"].linkname == "/etc/shadow"
        assert tar.extractfile("etc/b.conf").read() == b"two\n"
    assert "no etc/nosuch in this checkpoint" in zap.fails("dump", "f@2", "etc/nosuch", code=2)
    # diff -p: an added file's old side is /dev/null, not the checkpoint that lacks it
    out = zap("diff", "f@1", "f@2", "-p").stdout
    assert "--- /dev/null\n+++ f@2:/etc/b.conf" in out, out
    assert "no /etc/nosuch in f@1 or in f@2" in zap.fails("diff", "f@1", "f@2", "--file", "etc/nosuch", code=2)


def test_a_branch_keeps_its_namespace_settings_for_icmp_sockets(zap):
    """A program that opens ICMP ("ping") sockets sets net.ipv4.ping_group_range in its network
    namespace; its branch gets a namespace of its own, which must have it too, or CRIU cannot
    make the socket again (zdtm's socket_icmp)."""
    script = ("import socket, time\n"
              "open('/proc/sys/net/ipv4/ping_group_range', 'w').write('0 0')\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n"
              "open('ready', 'w').close()\n"
              "while True: time.sleep(0.1)\n")  # fmt: skip
    zap("run", "icmp", "--", "python3", "-c", script)
    wait_for(lambda: (zap.volume("icmp") / "ready").exists(), what="the ICMP socket")
    zap("checkpoint", "icmp")
    zap("branch", "icmp@1", "icmp2")
    assert zap.pod("icmp2")["state"] == "running"
    value = zap("exec", "icmp2", "--", "cat", "/proc/sys/net/ipv4/ping_group_range").stdout.split()
    assert value == ["0", "0"], value


def test_the_ghost_limit_error_names_the_option_and_the_pods_path(zap):
    script = ("import os, time\n"
              "f = open('ghost.bin', 'w+b'); f.write(os.urandom(4 << 20)); f.flush(); os.unlink('ghost.bin')\n"
              "open('ready', 'w').close()\n"
              "while True: time.sleep(0.2)\n")  # fmt: skip
    zap("run", "g", "--", "python3", "-c", script)
    wait_for(lambda: (zap.volume("g") / "ready").exists(), what="the deleted file")
    line = zap.fails("checkpoint", "g", "--ghost-limit", "1M", code=1)
    path = f"{zap.pod('g')['path']}/ghost.bin"
    assert "--ghost-limit (1.0M)" in line and path in line and ".podroot" not in line, line
    assert "zap checkpoint --ghost-limit SIZE" in line
