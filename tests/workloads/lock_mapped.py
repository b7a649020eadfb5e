"""Test workload: holds a POSIX read lock on byte 128 of mapped.dat, which it also maps
MAP_SHARED (as SQLite does with its -shm file), and one on plain.dat, which it does not map;
it writes a counter into the mapping."""

import fcntl
import mmap
import struct
import time

f = open("mapped.dat", "a+b")
f.truncate(4096)
m = mmap.mmap(f.fileno(), 4096, mmap.MAP_SHARED)
fcntl.lockf(f, fcntl.LOCK_SH, 1, 128)
g = open("plain.dat", "a+b")
fcntl.lockf(g, fcntl.LOCK_SH, 1, 0)
open("locked", "w").close()
n = 0
while True:
    n += 1
    m[0:8] = struct.pack("Q", n)
    time.sleep(0.01)
