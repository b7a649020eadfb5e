"""Bench/test workload: holds MEMHOG_MIB MiB of non-trivial resident data, then counts slowly
into counter.txt (like counter.py) so its files and memory can be checked after a restore."""

import hashlib
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
mib = int(os.environ.get("MEMHOG_MIB", "256"))
# Half random, half structured data: compressible in part, like a real heap.
blocks = []
seed = b"zapckpt"
for i in range(mib):
    if i % 2:
        blocks.append(bytearray(os.urandom(1 << 20)))
    else:
        seed = hashlib.sha256(seed).digest()
        blocks.append(bytearray(seed * (1 << 15)))
fd = os.open("counter.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
print(f"holding {mib} MiB", flush=True)
i = 0
while True:
    i += 1
    os.write(fd, b"%d\n" % i)
    time.sleep(0.01)
