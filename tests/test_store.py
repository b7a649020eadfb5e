"""The content-addressed image store with real CRIU images: deduplication, exact reference
counts, garbage collection, prune/rmckpt, verify, and failures (damage, disk full)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import (ROOT, WORKLOADS, assert_continuous, catalog_db, counted_past, counter_values, memory_intact,
                     pack_files, proc_state, store_index, wait_for)

MEMHOG = WORKLOADS / "memhog.py"


def _hog(zap, name, mib=16):
    zap("run", name, "--env", f"MEMHOG_MIB={mib}", "--", "python3", str(MEMHOG))
    wait_for(lambda: "holding" in zap("logs", name).stdout, what=f"{name} to fill its memory")


def test_repeated_checkpoints_are_deduplicated_and_restorable(zap):
    _hog(zap, "hog", 32)
    recs = [zap.json("checkpoint", "hog") for _ in range(3)]
    first, later = recs[0], recs[1:]
    assert first["stored_bytes"] > 8 << 20  # half of the 32 MiB is random: incompressible
    for r in later:
        assert r["raw_bytes"] > 32 << 20
        assert r["stored_bytes"] < first["stored_bytes"] / 100, r  # only what changed is new
    df = zap.json("df")
    assert df["total"]["dedup_ratio"] > 2.5 and df["pods"][0]["checkpoints"] == 3
    assert sum(p.stat().st_size for p in pack_files(zap)) == df["total"]["pack_bytes"]
    # The pool's own use (files of volumes and snapshots) is reported too (issue 15: no command did).
    pool = df["pool"]
    assert pool["backend"] == "btrfs" and 0 < pool["used_bytes"] < pool["size_bytes"]
    (zap.volume("hog") / "big").write_bytes(os.urandom(48 << 20))
    os.sync()
    assert zap.json("df")["pool"]["used_bytes"] - pool["used_bytes"] > 40 << 20
    assert "pool (btrfs, " in zap("df").stdout
    # Any of them restores, from chunks shared with the others: memory byte for byte, files as
    # they were (the counter goes on from the snapshot's values without a gap).
    snap = counter_values(Path(zap.json("show", "hog@1")["snapshot"]["path"]))
    zap("restore", "hog@1")
    assert zap.pod("hog")["state"] == "running"
    vol = zap.volume("hog")
    assert memory_intact(vol)
    values = counted_past(vol, len(snap) + 20, "the restored hog to count")
    assert values[: len(snap)] == snap and not (vol / "big").exists()
    assert_continuous(values)
    assert zap("verify").stdout.strip().endswith("OK")


def test_garbage_is_freed_exactly(zap):
    _hog(zap, "a", 16)
    _hog(zap, "b", 16)
    zap("checkpoint", "a")
    zap("checkpoint", "b")
    before = zap.json("df")["total"]
    b_only = next(p for p in zap.json("df")["pods"] if p["pod"] == "b")["stored_bytes"]
    zap("rm", "--force", "a")
    after = zap.json("df")["total"]
    # a's chunks (random memory: nothing shared with b but a few small images) are gone.
    assert after["stored_bytes"] <= b_only
    assert after["pack_bytes"] < before["pack_bytes"] - (6 << 20)
    assert sum(p.stat().st_size for p in pack_files(zap)) == after["pack_bytes"]
    assert store_index(zap, lambda index: index.packs_with_garbage()) == []
    assert zap("verify").returncode == 0  # includes the recount of every reference


def test_prune_and_rmckpt(zap):
    _hog(zap, "hog", 8)
    for i in range(5):
        zap("checkpoint", "hog", "-m", f"c{i + 1}")
    zap("branch", "hog@2", "fork")
    dry = zap.json("prune", "hog", "--keep-last", "2", "--dry-run")
    assert [c["action"] for c in dry["checkpoints"]] == ["would remove", "keep", "would remove", "keep", "keep"]
    assert "origin of branch fork" in dry["checkpoints"][1]["why"]
    # Hour and day buckets are the machine's local ones, and say their zone (issue 15).
    hourly = zap.json("prune", "hog", "--keep-hourly", "1", "--dry-run")["checkpoints"][-1]["why"]
    assert re.search(r"hourly \d{4}-\d\d-\d\d \d\d [A-Z+0-9-]+", str(hourly)), hourly
    assert len(zap.json("list", "hog")["checkpoints"]) == 5  # dry run changed nothing
    within = zap.json("prune", "hog", "--keep-within", "1h", "--dry-run")["checkpoints"]
    assert all(c["action"] == "keep" and "within 3600s" in c["why"] for c in within)
    weekly = zap.json("prune", "hog", "--keep-weekly", "1", "--keep-yearly", "1", "--dry-run")["checkpoints"]
    assert [c["action"] for c in weekly] == ["would remove", "keep", "would remove", "would remove", "keep"]
    assert "weekly " in weekly[4]["why"] and "yearly " in weekly[4]["why"]
    assert "would remove all" in zap.fails("prune", "hog", "--keep-last", "0", code=2)
    zap.fails("prune", "hog", code=2)
    pruned = zap("prune", "hog", "--keep-last", "2")
    assert "removed 2 of 5 checkpoint(s); the image store freed " in pruned.stderr
    assert [c["ref"] for c in zap.json("list", "hog")["checkpoints"]] == ["hog@2", "hog@4", "hog@5"]
    # Lineage stays connected across the removed ones.
    assert zap.json("show", "hog@4")["parent"] == "hog@2"
    assert "origin of branch fork" in zap.fails("rmckpt", "hog@2", code=2)
    zap("rmckpt", "hog@5")
    assert zap.pod("hog")["head"] == "hog@4"
    assert zap("checkpoint", "hog").stdout.strip() == "hog@6"
    assert zap.json("show", "hog@6")["parent"] == "hog@4"
    zap.fails("rmckpt", "hog@5", code=2)
    zap("restore", "hog@4")
    assert zap("verify").returncode == 0
    # Several at once, and ranges (snapper's `delete 2-5`): all of them, or none (issue 15).
    for _ in range(3):
        zap("checkpoint", "hog")
    refs = [c["ref"] for c in zap.json("list", "hog")["checkpoints"]]
    assert refs == ["hog@2", "hog@4", "hog@6", "hog@7", "hog@8", "hog@9", "hog@10"]
    assert "origin of branch fork" in zap.fails("rmckpt", "hog@2-7", code=2)  # hog@2 must stay
    assert "bad range" in zap.fails("rmckpt", "hog@7-6", code=2)
    assert "numbered 11 to 20" in zap.fails("rmckpt", "hog@11-20", code=2)
    assert len(zap.json("list", "hog")["checkpoints"]) == 7  # nothing was removed
    out = zap("rmckpt", "hog@4-6", "hog@9", "hog@8").stdout.split("\n")
    assert out[:4] == ["removed hog@4", "removed hog@6", "removed hog@8", "removed hog@9"]
    assert [c["ref"] for c in zap.json("list", "hog")["checkpoints"]] == ["hog@2", "hog@7", "hog@10"]
    assert zap("verify").returncode == 0


def test_verify_reports_damage_and_restore_refuses(zap):
    _hog(zap, "hog", 8)
    zap("checkpoint", "hog")
    zap("checkpoint", "hog")
    (pack,) = [p for p in pack_files(zap) if p.stat().st_size > 1 << 20]
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x55
    pack.write_bytes(bytes(data))
    cp = zap("verify", check=False)
    assert cp.returncode == 1 and "damaged: pack " in cp.stdout and "chunk(s) damaged" in cp.stdout
    # one line for the damaged pack, not one per chunk in it
    assert len([ln for ln in cp.stdout.splitlines() if ln.startswith("damaged: ")]) == 1, cp.stdout
    # The chunk is shared: both checkpoints are named, and each is listed as damaged (issue 15).
    assert "hog@1" in cp.stdout and "hog@2" in cp.stdout
    doc = json.loads(zap("verify", "--json", check=False).stdout)
    assert [(c["ref"], c["ok"]) for c in doc["checkpoints"]] == [("hog@1", False), ("hog@2", False)]
    assert [ln.split()[:2] for ln in cp.stdout.splitlines() if ln.startswith("hog@")] == [["hog@1", "damaged"],
                                                                                          ["hog@2", "damaged"]]
    # Eager restores read every frame first, and refuse before anything changes (a lazy one
    # finds a damaged frame when it serves its pages, and puts the pod back: test_lazy.py).
    pid = zap.pod("hog")["pid"]
    assert "damaged" in zap.fails("restore", "hog@2", code=1, env={"ZAP_LAZY": "0"})
    assert zap.pod("hog")["pid"] == pid and proc_state(pid) in ("R", "S", "D")
    assert [c["ref"] for c in zap.json("list")["checkpoints"]] == ["hog@1", "hog@2"]
    zap.fails("branch", "hog@1", "copy", code=1, env={"ZAP_LAZY": "0"})
    # A missing pack and a damaged chunk list are reported too.
    pack.unlink()
    cp = zap("verify", "hog@1", check=False)
    assert cp.returncode == 1 and "missing" in cp.stdout
    with catalog_db(zap) as db:
        db.execute("UPDATE image_files SET chunk_ids = x'00112233' WHERE name LIKE 'pages-%'")
    cp = zap("verify", check=False)
    assert cp.returncode == 1 and "chunk list" in cp.stdout


def test_disk_full_during_ingest(zap, tmp_path):
    # The state directory on a small tmpfs (the pool stays on the fixture's btrfs).
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    try:
        home = small / "home"
        pool_dir = zap.home / "pool" / "ext"
        pool_dir.mkdir()
        env = dict(zap.env, ZAP_HOME=str(home))
        z = type(zap)(home)
        z.env = env
        z("init", "--pool", str(pool_dir))
        z("run", "hog", "--env", "MEMHOG_MIB=16", "--", "python3", str(MEMHOG))
        wait_for(lambda: "holding" in z("logs", "hog").stdout, what="hog")
        z("checkpoint", "hog")
        ballast = small / "ballast"
        with open(ballast, "wb") as f:
            try:
                while True:
                    f.write(os.urandom(1 << 20))
            except OSError:
                pass
        # Free a little: enough for the catalog, not for a new image set.
        os.truncate(ballast, ballast.stat().st_size - (2 << 20))
        # Make the next image set new data: restart the pod (fresh random memory).
        z("stop", "-t", "2", "hog")
        z("start", "hog")
        wait_for(lambda: "holding" in z("logs", "hog").stdout.split("holding", 1)[-1] or
                 z("logs", "hog").stdout.count("holding") >= 2, what="hog again")  # fmt: skip
        msg = z.fails("checkpoint", "hog", code=1)
        assert "No space left" in msg or "space" in msg.lower(), msg
        pod = z.pod("hog")
        assert pod["state"] == "running" and proc_state(pod["pid"]) in ("R", "S", "D")
        assert [c["ref"] for c in z.json("list")["checkpoints"]] == ["hog@1"]
        assert {p.name for p in pack_files(z)} == store_index(z, lambda index: index.pack_names())
        ballast.unlink()
        assert z("verify").returncode == 0
        z("restore", "hog@1")
        assert counter_values(Path(z.pod("hog")["volume"]))
        z("deinit", "--purge")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _write_schema_0001_set(images: Path, target: Path) -> None:
    """An image set as schema 0001 kept it: NAME.zst per image (frame checksums) + manifest."""
    import json

    import zstandard

    target.mkdir(parents=True)
    files = []
    for f in sorted(images.iterdir()):
        data = f.read_bytes()
        packed = zstandard.ZstdCompressor(write_checksum=True).compress(data)
        (target / (f.name + ".zst")).write_bytes(packed)
        files.append({"name": f.name, "raw": len(data), "stored": len(packed)})
    (target / "manifest.json").write_text(json.dumps({"files": files}))


def test_old_image_sets_are_converted_into_the_store_once(zap):
    """A state directory from before the image store (an upgrade from catalog schema 0001):
    the first command converts its image sets into the store, and they restore exactly."""
    zap.run_counter("old")
    ck = zap.json("checkpoint", "old")
    at = max(counter_values(zap.volume("old")))
    # Make it an old-format checkpoint: its images in images/<id>/, nothing in the store.
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
    old = zap.home / "images" / ck["id"]
    _write_schema_0001_set(stage, old)
    with catalog_db(zap) as db:
        db.execute("DELETE FROM image_files")
        db.execute("DELETE FROM chunks")
        db.execute("DELETE FROM frames")
        db.execute("DELETE FROM packs")
        db.execute("UPDATE checkpoints SET image_format = 'dir', image_dir = ? WHERE id = ?", (str(old), ck["id"]))
    for p in pack_files(zap):
        p.unlink()
    cp = zap("list")
    assert "converted 1 image set(s)" in cp.stderr
    assert not old.exists() and pack_files(zap)
    assert zap.json("show", "old@1")["image_format"] == "cas"
    assert "converted" not in zap("list").stderr  # once
    assert zap("verify").stdout.strip().endswith("OK")
    zap("restore", "old@1")
    assert_continuous(counted_past(zap.volume("old"), at + 50, "counting on"))


def test_tags_name_checkpoints_and_keep_them(zap):
    """`zap tag` / `zap untag` (issue 15): NAME@TAG works wherever a reference does (show,
    restore, branch, dump, rmckpt), a tag names one checkpoint per pod (--force moves it), prune
    --keep-tag keeps it, and the tags go with their checkpoint and follow a rename."""
    zap("run", "t", "--", "sh", "-c", "echo one > v; exec sleep 600")
    vol = zap.volume("t")
    wait_for(lambda: (vol / "v").exists(), what="the file")
    for i in ("one", "two", "three"):
        (vol / "v").write_text(i + "\n")
        zap("checkpoint", "t")
    assert zap("tag", "t@1", "good", "v1").stdout.strip() == "t@1: tagged good, v1"
    zap("tag", "t@2", "two")
    assert "t@good is t@1 already" in zap.fails("tag", "t@3", "good", code=2)
    assert "moved good (from t@1)" in zap("tag", "t@3", "good", "--force").stderr
    for bad in ("Bad", "latest", "7up", "a" * 64, "a/b"):
        assert "invalid tag" in zap.fails("tag", "t@1", bad, code=2)
    listed = {c["ref"]: c["tags"] for c in zap.json("list", "t")["checkpoints"]}
    assert listed == {"t@1": ["v1"], "t@2": ["two"], "t@3": ["good"]}
    assert zap("list", "t").stdout.splitlines()[0].split()[3] == "TAGS"
    assert zap.json("show", "t@v1")["ref"] == "t@1" and "tags:       good" in zap("show", "t@good").stdout
    assert zap("dump", "t@two", "v").stdout == "two\n"
    assert "is tagged 'nope'" in zap.fails("show", "t@nope", code=2)
    zap("restore", "t@v1")
    assert (vol / "v").read_text() == "one\n"
    zap("branch", "t@two", "tb")
    assert (zap.volume("tb") / "v").read_text() == "two\n"
    zap("rm", "--force", "tb")
    # prune --keep-tag: the tagged ones stay, whatever the policy
    plan = zap.json("prune", "t", "--keep-last", "1", "--keep-tag", "v1", "--keep-tag", "two", "--dry-run")
    assert {c["ref"]: c["action"] for c in plan["checkpoints"]} == {
        "t@1": "keep", "t@2": "keep", "t@3": "would remove", "t@4": "keep"}
    assert zap("untag", "t@1").stdout.strip() == "t@1: untagged v1"
    assert "is not tagged 'zz'" in zap.fails("untag", "t@2", "zz", code=2)
    zap("rmckpt", "t@two")
    assert {c["ref"]: c["tags"] for c in zap.json("list", "t")["checkpoints"]}["t@3"] == ["good"]
    zap("tag", "t@3", "two")  # the name is free again: its checkpoint is gone
    zap("stop", "t")
    zap("rename", "t", "u")
    assert zap.json("show", "u@good")["ref"] == "u@3"
