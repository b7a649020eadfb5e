"""Test workload: two processes ping-pong over POSIX named semaphores. `a` makes them with glibc's
sem_open(O_CREAT), which maps a temporary file it then links to /dev/shm/sem.NAME and unlinks
(CRIU needs --link-remap to dump that mapping); `b` waits for them and opens them by name.
`python3 sem_pingpong.py a|b`: each counts its rounds in a.count / b.count (its cwd); after a
restore both go on in step only if they still share the semaphores."""

import ctypes
import os
import sys
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sem_open.restype = ctypes.c_void_p
libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
libc.sem_wait.argtypes = libc.sem_post.argtypes = [ctypes.c_void_p]
role = sys.argv[1]
if role == "b":
    while not os.path.exists("created"):
        time.sleep(0.01)
ping = libc.sem_open(b"/zping", os.O_CREAT if role == "a" else 0, 0o600, 0)
pong = libc.sem_open(b"/zpong", os.O_CREAT if role == "a" else 0, 0o600, 0)
assert ping and pong, os.strerror(ctypes.get_errno())
if role == "a":
    open("created", "w").close()
n = 0
out = os.open(f"{role}.count", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while True:
    if role == "a":
        libc.sem_wait(ping)
        n += 1
        libc.sem_post(pong)
    else:
        libc.sem_post(ping)
        libc.sem_wait(pong)
        n += 1
    os.pwrite(out, b"%12d\n" % n, 0)
    time.sleep(0.001)
