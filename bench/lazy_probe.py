#!/usr/bin/env python3
"""A probe for issue 25, not a bench part: the ways a lazy restore can get its pages, measured
side by side on a real pod (tests/workloads/memhog.py) restored the way zap restores it:

  eager      the whole image set, uncompressed in tmpfs, read by `criu restore` (no lazy pages)
  lazy       raw CRIU: `criu lazy-pages` reading the same uncompressed set from tmpfs
  lazy-view  the daemon reading its pages through the history view's `images/` (a FUSE file
             system serving the chunk store: design B)
  lazy-zap   the daemon asking zap's page server (criu/pageserver.py), which answers from the
             chunk store's packs (store/pages.py): design A, the one zap uses

Each restored process hashes its memory again and the hash must equal the one it wrote before
the checkpoint. Prints one line per run and the medians.

    .venv/bin/python bench/lazy_probe.py [--mib 256] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, pod_info, pod_program, wait_for, zap, zap_env  # noqa: E402

sys.path.insert(0, str(ROOT))
MEMHOG = ROOT / "tests" / "workloads" / "memhog.py"


def zap_pages(ctx, s, ck, skel: Path):
    """What zap's lazy restore prepares (ops/revive.py): the image set but its lazy pages, in
    skel; the page server and CRIU's daemon (under its keeper) started."""
    from zapckpt.criu.pageserver import PageMaps
    from zapckpt.ops.revive import LazyPages, Prepared
    from zapckpt.store import imagesets

    pages = imagesets.page_images(ctx, s, ck)
    pages.write_whole(skel)
    maps = PageMaps(skel)
    for name in pages.files:
        pages.write_pages(skel, name, maps.eager.get(name, []))
    prep = Prepared(skel, pages, maps)
    prep.coming = LazyPages.start(ctx, prep, "probe")
    return prep.coming, skel


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="zapbench-lazy-"))
    stage = Path(tempfile.mkdtemp(prefix="zapbench-lazy-", dir="/dev/shm"))
    os.environ.update(zap_env(home))
    from zapckpt.context import Context
    from zapckpt.criu import runner as criu
    from zapckpt.pod.mounts import pod_root, restore_argv
    from zapckpt.store import imagesets
    from catalog import queries
    from zapckpt.system import procinfo

    results: dict[str, list] = {"eager": [], "lazy": [], "lazy-view": [], "lazy-zap": []}
    view = Path(tempfile.mkdtemp(prefix="zapbench-lazy-view-"))
    try:
        zap(home, "init", "--size", "2G")
        zap(home, "run", "m", "--env", f"MEMHOG_MIB={args.mib}", "--", "python3", str(pod_program(MEMHOG)))
        info = pod_info(home, "m")
        vol, mount_path = Path(info["volume"]), Path(info["path"])
        wait_for(lambda: (vol / "memsum.start").exists(), what="memhog to hash its memory", timeout=120)
        want = (vol / "memsum.start").read_text()
        ref = json.loads(zap(home, "checkpoint", "m", "--json").stdout)["ref"]
        zap(home, "stop", "m")
        ctx = Context()
        images = stage / "images"
        with ctx.catalog.session() as s:
            imagesets.materialize(ctx, s, queries.resolve_ref(s, ref), images)
        ctx.close()
        zap(home, "mount", str(view))
        view_images = view / "pods" / "m" / "checkpoints" / ref.split("@")[1] / "images"
        assert (view_images / "inventory.img").exists(), sorted(os.listdir(view_images))
        mounts = {"volume": str(vol), "mount_path": str(mount_path), "system": False, "volumes": [],
                  "state_root": str(mount_path.parent.parent), "private_tmp": True}  # fmt: skip
        for r in range(args.runs):
            modes = ("eager", "lazy", "lazy-view", "lazy-zap")
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                (vol / "memsum").unlink(missing_ok=True)
                daemon = None
                log = stage / f"{mode}-{r}.log"
                coming = None
                if mode == "lazy-zap":
                    # zap's own: the images but the lazy pages, the rest from its page server
                    t = time.perf_counter()
                    ctx = Context()
                    with ctx.catalog.session() as s:
                        coming, skel = zap_pages(ctx, s, queries.resolve_ref(s, ref), stage / f"skel-{r}")
                    ctx.close()
                    coming.wait_ready()
                    skel_s = time.perf_counter() - t
                elif mode != "eager":
                    for f in images.glob("lazy-pages*"):
                        f.unlink()
                    # its socket in the restore's work directory; its pages from -D
                    pages = view_images if mode == "lazy-view" else images
                    daemon = subprocess.Popen([criu.criu_binary(), "lazy-pages", "-D", criu.through_host_root(pages),
                                               "-W", criu.through_host_root(images), "-o", "lazy-pages.log"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                    wait_for(lambda: (images / "lazy-pages.socket").exists(), what="the lazy-pages daemon")
                pidfile = stage / "pid"
                pidfile.unlink(missing_ok=True)
                t = time.perf_counter()
                where = skel if coming is not None else images
                pid = criu.restore(where, pidfile, restore_argv(mounts), os.path.join(pod_root(str(mount_path)), "proc"),
                                   None, log, extra=("--lazy-pages",) if mode != "eager" else ())  # fmt: skip
                if coming is not None:
                    coming.restored(pid)
                returned = time.perf_counter() - t + (skel_s if coming is not None else 0.0)
                (vol / "memsum.req").touch()
                wait_for(lambda: (vol / "memsum").exists(), what="the restored memhog's hash", timeout=120)
                hashed = time.perf_counter() - t
                got = (vol / "memsum").read_text()
                done = hashed
                if daemon is not None:
                    daemon.wait(timeout=120)
                    done = time.perf_counter() - t
                if coming is not None:
                    coming.wait()
                    coming.prep.pages.close()
                    done = time.perf_counter() - t
                    st = coming.server.stats
                    print(f"  zap's page server: {st.requests} requests ({st.faults} faults), {st.pages} pages, "
                          f"busy {st.busy_s * 1000:.0f} ms", flush=True)  # fmt: skip
                procinfo.kill_pod_tree(pid)
                ok = got == want
                results[mode].append((returned, hashed, done, ok))
                print(f"{mode:9} run {r + 1}: restore returned {returned * 1000:.0f} ms, memory hashed at "
                      f"{hashed * 1000:.0f} ms, all pages in at {done * 1000:.0f} ms, memory {'exact' if ok else 'WRONG'}",
                      flush=True)  # fmt: skip
        for mode, rows in results.items():
            if not rows:
                continue
            med = [statistics.median(x[i] for x in rows) * 1000 for i in range(3)]
            print(f"{mode}: medians returned {med[0]:.0f} ms, hashed {med[1]:.0f} ms, complete {med[2]:.0f} ms; "
                  f"exact {sum(x[3] for x in rows)}/{len(rows)}")
    finally:
        subprocess.run([sys.executable, "-m", "zapckpt", "umount", str(view)], env=zap_env(home), capture_output=True)
        subprocess.run([sys.executable, "-m", "zapckpt", "deinit", "--purge", "--yes"], env=zap_env(home), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        if not os.path.ismount(view):
            shutil.rmtree(view, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
