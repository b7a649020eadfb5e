"""One-off check (not in the suite): a NILFS2 pool on a loop file, `zap init --backend nilfs
--size`. Run: vagrant/run-vm-tests -s bench/vm/test_nilfs_loop_pool.py"""

import os
import subprocess
import sys
import tempfile


def test_loop_file_pool():
    env = dict(os.environ, ZAP_HOME=tempfile.mkdtemp(prefix="zapvm-loop-"))
    zap = [sys.executable, "-m", "zapckpt.cli"]
    out = subprocess.run([*zap, "init", "--backend", "nilfs", "--size", "1G"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(nilfs, loop file" in out.stdout
    mounts = open("/proc/self/mountinfo").read()
    assert " - nilfs2 /dev/loop" in mounts
    out = subprocess.run([*zap, "deinit", "--purge"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert " - nilfs2 " not in open("/proc/self/mountinfo").read()
    print("\nNILFS-LOOP-POOL ok")
