"""Start-up: the commands people run in loops and from tab-completion import only what they
need. What is checked here is WHAT gets imported (the time itself is a bench figure,
bench/startup.py); SQLAlchemy alone costs ~0.25 s to import on a small machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "alembic", "pyfuse3", "trio", "zstandard", "zapckpt.ops.checkpoint", "zapckpt.store")

PROBE = """
import json, sys
from zapckpt.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported(home, *args):
    env = dict(os.environ, ZAP_HOME=str(home))
    cp = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(cp.stderr.strip().splitlines()[-1])
    return doc["rc"], [m for m in doc["modules"] if m.split(".")[0] in ("sqlalchemy", "alembic", "pyfuse3", "trio",
                                                                          "zstandard") or m.startswith(HEAVY)]  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["checkpoint", "--help"]])
def test_help_and_version_import_nothing_heavy(tmp_path, args):
    rc, heavy = _imported(tmp_path, *args)
    assert rc == 0 and heavy == []


@pytest.mark.system  # zap ps runs as root
def test_ps_and_list_read_the_catalog_without_sqlalchemy(tmp_path):
    # The first command creates the catalog (through the ORM, which migrates it) ...
    rc, heavy = _imported(tmp_path, "ps")
    assert rc == 0 and "sqlalchemy" in heavy
    # ... every later listing reads it with plain sqlite3.
    for args in (["ps"], ["ps", "--json"], ["list"], ["list", "--json"]):
        rc, heavy = _imported(tmp_path, *args)
        assert rc == 0 and heavy == [], (args, heavy)
    rc, heavy = _imported(tmp_path, "list", "nosuchpod")
    assert rc == 2 and heavy == []


def test_the_zap_command_imports_nothing_of_zap_before_it_must():
    """`zap` (zapckpt/client.py) hands the command to the zap server: it must start as fast as
    Python itself, so it imports nothing of zap but the server's wire."""
    probe = "import sys, zapckpt.client; print(' '.join(sorted(sys.modules)))"
    mods = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    ours = [m for m in mods if m.split(".")[0] in ("zapckpt", "catalog", "fsbackend", "sqlalchemy")]
    assert ours == ["zapckpt", "zapckpt.client", "zapckpt.common", "zapckpt.common.wire"], ours


# What a command may import of zap, at most: more means it pays for what it does not use.
ALLOWED = {
    "logs": ("zapckpt.cli", "zapckpt.common", "zapckpt.pod.console", "zapckpt.pod.status", "zapckpt.system.procinfo",
             "zapckpt.system.locks", "zapckpt.state", "catalog.fastread", "catalog.sql", "catalog.urls", "zapckpt.names"),
    "show": ("zapckpt.cli", "zapckpt.common", "zapckpt.records", "zapckpt.pod.status", "zapckpt.system.procinfo",
             "zapckpt.state", "catalog.fastread", "catalog.sql", "catalog.urls", "zapckpt.names"),
}


@pytest.mark.system  # a pod to read about: zap runs as root
def test_logs_and_show_import_only_what_they_use(zap):
    zap("run", "q", "--", "sh", "-c", "echo hi; exec sleep 600")
    for command in ("logs", "show"):
        rc, heavy = _imported(zap.home, command, "q")
        assert rc == 0 and heavy == [], (command, heavy)
        rc, mods = _modules(zap.home, command, "q")
        extra = [m for m in mods if m.split(".")[0] in ("zapckpt", "catalog", "fsbackend") and "." in m
                 and not m.startswith(ALLOWED[command]) and m not in ("zapckpt.pod", "zapckpt.system")]  # fmt: skip
        assert not extra, (command, extra)


def _modules(home, *args):
    env = dict(os.environ, ZAP_HOME=str(home))
    cp = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(cp.stderr.strip().splitlines()[-1])
    return doc["rc"], doc["modules"]
