"""Bench workload: CHURN_MIB MiB of resident, non-trivial data (half random, half patterned).
Each SIGUSR1 rewrites CHURN_PCT percent of its pages at random, then appends the round number
to churned.txt, so a benchmark can checkpoint between rounds."""

import os
import random
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
mib = int(os.environ.get("CHURN_MIB", "512"))
pct = float(os.environ.get("CHURN_PCT", "2"))
PAGE = 4096
buf = bytearray(mib << 20)
for off in range(0, len(buf), 1 << 20):
    if (off >> 20) % 2:
        buf[off : off + (1 << 20)] = os.urandom(1 << 20)
    else:
        buf[off : off + (1 << 20)] = (b"zapckpt-%08d-" % (off >> 20)) * ((1 << 20) // 17) + b"\0" * ((1 << 20) % 17)
requests = []
signal.signal(signal.SIGUSR1, lambda *_: requests.append(1))
rng = random.Random(42)
pages = len(buf) // PAGE
rounds = 0
with open("churned.txt", "a") as f:
    f.write("ready\n")
while True:
    if requests:
        requests.pop()
        for p in rng.sample(range(pages), int(pages * pct / 100)):
            o = p * PAGE + rng.randrange(0, PAGE - 64)
            buf[o : o + 64] = os.urandom(64)
        rounds += 1
        with open("churned.txt", "a") as f:
            f.write(f"{rounds}\n")
    time.sleep(0.01)
