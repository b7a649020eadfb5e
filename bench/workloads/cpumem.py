"""Overhead benchmark workload: CPU and memory writes in a loop. Each step dirties a random page
of a WORK_MIB working set and hashes it; every 0.2 s the process overwrites `progress` in its
working directory with "<monotonic seconds> <steps so far>", from which the benchmark reads its
throughput over any window; and every 50 ms it appends the same line to `trace`, from which the
benchmark sees each dip a checkpoint makes."""

import hashlib
import os
import random
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
mib = int(os.environ.get("WORK_MIB", "64"))
pages = mib * 256
work = bytearray(os.urandom(1 << 20)) * mib
rng = random.Random(7)
fd = os.open("progress", os.O_WRONLY | os.O_CREAT, 0o644)
trace = os.open("trace", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
steps, next_report, next_trace = 0, 0.0, 0.0
while True:
    for _ in range(200):
        off = rng.randrange(pages) << 12
        digest = hashlib.sha256(work[off : off + 4096]).digest()
        work[off : off + 32] = digest
    steps += 200
    now = time.monotonic()
    if now >= next_trace:
        line = b"%.6f %d\n" % (now, steps)
        os.write(trace, line)
        next_trace = now + 0.05
        if now >= next_report:
            os.pwrite(fd, line.ljust(40), 0)
            next_report = now + 0.2
