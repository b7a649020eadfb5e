"""Unit tests of the logic zap puts on top of CRIU's output (log lines, stats image)."""

import os
import struct

from helpers import varint
from zapckpt.criu import runner as criu
from zapckpt.criu import images as criu_images


def test_log_errors_drop_noise_and_classify_transient(tmp_path):
    log = tmp_path / "dump.log"
    log.write_text(
        "(00.000100) Error (criu/util.c:651): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
        "(00.010000) Warn  (criu/x.c:1): something harmless\n"
        "(00.020000) Error (criu/sk-inet.c:200): In-flight connection (l) for 1a2b\n"
        "(00.020100) Error (criu/cr-dump.c:2000): Dumping FAILED.\n"
    )
    lines = criu.log_errors(log)
    assert lines == ["In-flight connection (l) for 1a2b"]
    err = criu.CriuError("dump failed", log, lines)
    assert err.transient and "In-flight" in str(err) and str(log) in str(err)
    log.write_text("(00.1) Error (criu/sk-inet.c:1): Connected TCP socket, consider using --tcp-established option.\n")
    assert not criu.CriuError("x", log, criu.log_errors(log)).transient



def test_read_dump_stats(tmp_path):
    dump = b"".join(varint(k << 3) + varint(v) for k, v in ((1, 1500), (2, 23456), (3, 7000), (4, 9000), (5, 42)))
    entry = varint((1 << 3) | 2) + varint(len(dump)) + dump
    (tmp_path / "stats-dump").write_bytes(struct.pack("<III", criu_images.IMG_SERVICE_MAGIC, criu_images.STATS_MAGIC, len(entry)) + entry)
    st = criu_images.read_dump_stats(tmp_path)
    assert (st.freezing_ms, st.frozen_ms, st.memdump_ms, st.memwrite_ms) == (1.5, 23.456, 7.0, 9.0)
    (tmp_path / "stats-dump").write_bytes(b"garbage")
    assert criu_images.read_dump_stats(tmp_path).frozen_ms is None


def test_pagemap_runs_cover_pages_file_of_a_real_dump(zap, tmp_path):
    from conftest import WORKLOADS, wait_for
    from catalog import queries
    from zapckpt.store import imagesets as image_sets
    from zapckpt.context import Context
    from zapckpt.state import StateDir

    memhog = WORKLOADS / "memhog.py"
    zap("run", "hog", "--env", "MEMHOG_MIB=8", "--", "python3", str(memhog))
    wait_for(lambda: "holding" in zap("logs", "hog").stdout, what="memhog")
    zap("checkpoint", "hog")
    images = tmp_path / "img"
    ctx = Context(StateDir(zap.home))
    with ctx.catalog.session() as s:
        image_sets.materialize(ctx, s, queries.resolve_ref(s, "hog@1"), images)
    ctx.close()
    pagemaps = sorted(images.glob("pagemap-*.img"))
    assert pagemaps
    total_present = 0
    for pm_path in pagemaps:
        pm = criu_images.read_pagemap(pm_path)
        pages = images / f"pages-{pm.pages_id}.img"
        runs = list(pm.page_runs())
        assert sum(n for _, n, _ in runs) == pages.stat().st_size
        vaddrs = [e.vaddr for e in pm.entries]
        assert vaddrs == sorted(vaddrs) and all(e.nr_pages > 0 for e in pm.entries)
        total_present += pages.stat().st_size
    assert total_present >= 8 << 20  # the 8 MiB the workload holds are in there
    st = criu_images.read_dump_stats(images)
    assert st.frozen_ms and st.frozen_ms > 0
    try:
        criu_images.read_pagemap(images / "inventory.img")
    except criu_images.ImageFormatError as e:
        assert "magic" in str(e)
    else:
        raise AssertionError("a non-pagemap image was accepted")


def test_an_outside_session_error_names_the_process_and_the_fix():
    err = criu.CriuError("CRIU refused to dump the pod", None,
                         [f"A session leader of {os.getpid()}(4) is outside of its pid namespace"])  # fmt: skip
    msg = str(err)
    assert f"process 4 of the pod (host pid {os.getpid()}: " in msg and "pytest" in msg
    assert "`zap exec -d`" in msg and len(msg.splitlines()) == 1
    plain = str(criu.CriuError("CRIU refused to dump the pod", None, ["Can't dump half of a pipe"]))
    assert "zap exec -d" not in plain
