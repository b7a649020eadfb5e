"""Incremental-dump benchmark workload: DIRTY_MIB MiB of random data, of which DIRTY_PCT percent of
the pages are rewritten every second, spread evenly (20 slices a second), at random pages; it
appends "ready" to ready.txt once all of its memory is written. DIRTY_THP=0 asks the kernel not
to back the data with transparent huge pages (madvise MADV_NOHUGEPAGE, as Redis and most
databases advise): with them, one written 4 KiB page marks its whole 2 MiB page dirty."""

import mmap
import os
import random
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
PAGE = 4096
mib = int(os.environ.get("DIRTY_MIB", "256"))
pct = float(os.environ.get("DIRTY_PCT", "2"))
buf = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE)  # private anonymous memory, like a heap
if os.environ.get("DIRTY_THP", "1") == "0":
    buf.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, len(buf), 1 << 20):
    buf[off : off + (1 << 20)] = os.urandom(1 << 20)
pages = len(buf) // PAGE
per_slice = max(1, round(pages * pct / 100 / 20))
rng = random.Random(1)
with open("ready.txt", "a") as f:
    f.write("ready\n")
while True:
    t = time.monotonic()
    for _ in range(per_slice):
        o = rng.randrange(pages) * PAGE + rng.randrange(0, PAGE - 16)
        buf[o : o + 16] = rng.randbytes(16)
    time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
