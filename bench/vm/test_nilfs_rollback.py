"""Rollback in place on NILFS2, the two ways the NILFS issue names, measured in the guest:
copying the files back from the mounted snapshot (what zap does) against making the volume an
overlay on the snapshot. Run:  vagrant/run-vm-tests -s bench/vm/test_nilfs_rollback.py
The guest runs in software emulation: compare the two, do not quote the absolute times."""

import json
import os
import subprocess
import time
from pathlib import Path

DEV = "/dev/vda"


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def test_copy_back_versus_overlay():
    pool, snapmp = Path("/tmp/nilfs-pool"), Path("/tmp/nilfs-cp")
    pool.mkdir()
    snapmp.mkdir()
    sh("mkfs.nilfs2", "-q", "-f", DEV)
    sh("mount", "-t", "nilfs2", DEV, str(pool))
    results = []
    try:
        for mib in (8, 64, 256):
            vol = pool / f"vol{mib}"
            vol.mkdir()
            block = os.urandom(1 << 20)
            for i in range(mib):
                (vol / f"f{i}").write_bytes(block)
            os.sync()
            cp = subprocess.run(["mkcp", "-s", "-p", DEV], check=True, capture_output=True, text=True).stdout.strip()
            sh("mount", "-t", "nilfs2", "-o", f"ro,cp={cp}", DEV, str(snapmp))
            t = time.perf_counter()
            sh("cp", "-a", f"{snapmp}/vol{mib}/.", str(pool / f"copy{mib}"))
            os.sync()
            copy_s = time.perf_counter() - t
            for d in ("upper", "work", "merged"):
                (pool / f"ovl{mib}" / d).mkdir(parents=True)
            t = time.perf_counter()
            o = pool / f"ovl{mib}"
            sh("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={snapmp}/vol{mib},upperdir={o}/upper,workdir={o}/work", str(o / "merged"))
            overlay_s = time.perf_counter() - t
            assert len(os.listdir(o / "merged")) == mib
            sh("umount", str(o / "merged"))
            sh("umount", str(snapmp))
            results.append({"mib": mib, "copy_back_s": round(copy_s, 3), "overlay_s": round(overlay_s, 3)})
    finally:
        subprocess.run(["umount", str(snapmp)], capture_output=True)
        subprocess.run(["umount", str(pool)], capture_output=True)
    print("\nNILFS-ROLLBACK " + json.dumps(results))
