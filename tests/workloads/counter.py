"""Test workload: counts in memory and appends every value to counter.txt in its cwd.

The in-memory counter and the file agree at every instant the process is frozen, so a
checkpoint whose snapshot was taken outside the frozen window shows up as a duplicated or
missing number once the process is restored and goes on counting."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
interval = float(os.environ.get("COUNTER_INTERVAL", "0.0005"))
fd = os.open("counter.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
# Resume from the file when started afresh (zap start); a restored process resumes from memory.
try:
    with open("counter.txt", "rb") as f:
        lines = f.read().splitlines()
    i = int(lines[-1]) if lines else 0
except (OSError, ValueError):
    i = 0
print(f"counter starting at {i} in {os.getcwd()} (pod {os.environ.get('ZAP_POD')})", flush=True)
while True:
    i += 1
    os.write(fd, b"%d\n" % i)
    if interval:
        time.sleep(interval)
