"""zap export / zap import: a checkpoint as one file, brought back on a second state directory."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import Zap
from helpers import ZAP_CMD, assert_continuous, counted_past, counter_values


@pytest.fixture
def second(zap, tmp_path):
    """Another state directory with its own pool: "another machine"."""
    z = Zap(tmp_path / "other")
    z("init", "--size", "1G")
    yield z
    z("deinit", "--purge", check=False)


def test_export_import_branch_round_trip(zap, second, tmp_path):
    zap.run_counter("ctr")
    zap("checkpoint", "ctr", "-m", "to ship")
    snap = counter_values(Path(zap.json("show", "ctr@1")["snapshot"]["path"]))
    out = tmp_path / "ctr1.zap"
    assert "exported ctr@1" in zap("export", "ctr@1", str(out)).stdout
    assert out.stat().st_size > 1000 and not Path(str(out) + ".partial").exists()
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd stream

    assert second("import", str(out)).stdout.strip() == "ctr@1"
    rec = second.json("show", "ctr@1")
    assert rec["message"] == "to ship (imported from ctr@1)" and rec["has_processes"]
    assert rec["created_at"] == zap.json("show", "ctr@1")["created_at"]  # when it was taken, not imported (issue 15)
    assert counter_values(Path(rec["snapshot"]["path"])) == snap
    second("branch", "ctr@1", "alive")
    vol = second.volume("alive")
    values = counted_past(vol, len(snap) + 50, "imported counting")
    assert values[: len(snap)] == snap
    assert_continuous(values)
    assert second("verify").returncode == 0
    # The same file again needs another name.
    assert "already exists" in second.fails("import", str(out), code=2)
    assert second("import", str(out), "--name", "again").stdout.strip() == "again@1"
    second("restore", "again@1")
    assert second.pod("again")["state"] == "running"
    # the restored import counts on from the exported checkpoint's values, files and memory agreeing
    again = counted_past(second.volume("again"), len(snap) + 50, "the restored import counting")
    assert again[: len(snap)] == snap
    assert_continuous(again)

    # Streamed: `zap export REF - | zap import -` (issue 15), no file in between.
    exp = subprocess.Popen([*ZAP_CMD, "export", "ctr@1", "-"], env=zap.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    imp = subprocess.run([*ZAP_CMD, "import", "-", "--name", "piped"], env=second.env,
                         stdin=exp.stdout, capture_output=True, text=True, timeout=120)  # fmt: skip
    exp.stdout.close()
    assert exp.wait(60) == 0 and b"exported ctr@1 to standard output" in exp.stderr.read()
    assert imp.returncode == 0 and imp.stdout.strip() == "piped@1", imp.stderr
    assert counter_values(Path(second.json("show", "piped@1")["snapshot"]["path"])) == snap
    cut = subprocess.run([*ZAP_CMD, "import", "-", "--name", "cut"], env=second.env,
                         input=out.read_bytes()[: out.stat().st_size // 2], capture_output=True, timeout=120)  # fmt: skip
    assert cut.returncode == 1 and b"truncated" in cut.stderr and "cut" not in second("ps").stdout, cut.stderr


def test_export_and_import_bad_input(zap, second, tmp_path):
    zap.run_counter("ctr")
    zap("checkpoint", "ctr")
    assert "cannot write" in zap.fails("export", "ctr@1", "/nonexistent-dir/x.zap", code=1)
    zap.fails("export", "nope@1", str(tmp_path / "x.zap"), code=2)
    good = tmp_path / "good.zap"
    zap("export", "ctr@1", str(good))
    data = good.read_bytes()

    truncated = tmp_path / "cut.zap"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in second.fails("import", str(truncated), code=1)
    foreign = tmp_path / "foreign.zap"
    foreign.write_bytes(os.urandom(4096))
    assert "not a zapckpt export" in second.fails("import", str(foreign), code=1)
    import io
    import tarfile

    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "tar.zap").write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    assert "not a zapckpt export" in second.fails("import", str(tmp_path / "tar.zap"), code=1)
    second.fails("import", str(tmp_path / "missing.zap"), code=2)
    second.fails("import", str(good), "--name", "Bad!", code=2)
    # Nothing was left behind by the failed imports.
    assert second.json("ps")["pods"] == [] and second.json("list")["checkpoints"] == []
    assert [p.name for p in (second.home / "pool" / "snapshots").rglob("*")] in ([], ["imported"])
    assert not list(second.home.glob(".import-*"))
