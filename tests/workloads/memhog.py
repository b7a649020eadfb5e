"""Bench/test workload: holds MEMHOG_MIB MiB of non-trivial resident data, then counts slowly
into counter.txt (like counter.py) so its files and memory can be checked after a restore, or
with MEMHOG_QUIET set only sleeps. Its memory never changes: memsum.start holds its sha256, and
whenever a file memsum.req appears it hashes its memory again into memsum (and removes the
request), so a restored process can show that its memory came back byte for byte."""

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
def memsum() -> str:
    h = hashlib.sha256()
    for b in blocks:
        h.update(b)
    return h.hexdigest()


def publish(name: str) -> None:
    with open(name + ".tmp", "w") as f:
        f.write(memsum())
    os.rename(name + ".tmp", name)


if not os.environ.get("MEMHOG_QUIET"):
    publish("memsum.start")
print(f"holding {mib} MiB", flush=True)
if os.environ.get("MEMHOG_QUIET"):
    # Benchmarks restore raw image sets into a volume that has moved on: keep no file open.
    while True:
        time.sleep(3600)
fd = os.open("counter.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
i = 0
while True:
    i += 1
    os.write(fd, b"%d\n" % i)
    if os.path.exists("memsum.req"):
        publish("memsum")
        os.unlink("memsum.req")
    time.sleep(0.01)
