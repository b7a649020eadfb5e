"""Test workload for incremental dumps: PAGEWRITER_MIB MiB of memory whose content at step n is a
function of n alone. Every page starts holding its own index; step n writes n into page
(n * 2654435761) % pages and appends n to counter.txt. Every PAGEWRITER_VERIFY steps it replays
steps 1..n and compares every page with what it must hold, appending "n ok" or "n BAD page p"
to verified.txt. A restore that brought back one page from before the dump (a page the dump
should have written but took from its pre-dump) shows up as BAD at the next verification."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
PAGE = 4096
mib = int(os.environ.get("PAGEWRITER_MIB", "32"))
every = int(os.environ.get("PAGEWRITER_VERIFY", "200"))
interval = float(os.environ.get("PAGEWRITER_INTERVAL", "0.002"))
pages = (mib << 20) // PAGE
buf = bytearray(mib << 20)
for p in range(pages):
    buf[p * PAGE : p * PAGE + 8] = (p | 1 << 62).to_bytes(8, "little")


def target(n: int) -> int:
    return (n * 2654435761) % pages


def verify(n: int) -> str:
    want = {target(m): m for m in range(1, n + 1)}
    for p in range(pages):
        value = int.from_bytes(buf[p * PAGE : p * PAGE + 8], "little")
        if value != want.get(p, p | 1 << 62):
            return f"{n} BAD page {p}"
    return f"{n} ok"


fd = os.open("counter.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
n = 0
while True:
    n += 1
    buf[target(n) * PAGE : target(n) * PAGE + 8] = n.to_bytes(8, "little")
    os.write(fd, b"%d\n" % n)
    if n % every == 0:
        with open("verified.txt", "a") as f:
            f.write(verify(n) + "\n")
    time.sleep(interval)
