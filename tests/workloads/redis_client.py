"""Test workload: a Redis client on ONE persistent connection (it never reconnects). It sends
INCR and appends every value Redis answers to redis_values.txt in its cwd.

Redis's counter lives in Redis's memory, the list of answers in a file of the pod's volume and
the request in flight on a TCP connection: after a restore the values go on without a gap or a
repeat only if memory, socket buffers and files were all captured at the same instant."""

import os
import socket
import sys
import time

host = os.environ.get("REDIS_HOST", "127.0.0.1")
port = int(os.environ.get("REDIS_PORT", "6379"))
out = os.environ.get("CLIENT_FILE", "redis_values.txt")
interval = float(os.environ.get("CLIENT_INTERVAL", "0.002"))
deadline = time.monotonic() + 20
while True:
    try:
        conn = socket.create_connection((host, port), timeout=1)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("redis never came up")
        time.sleep(0.05)
conn.settimeout(None)
print(f"connected from port {conn.getsockname()[1]}", flush=True)
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
buf = b""
while True:
    conn.sendall(b"INCR " + out.encode() + b"\r\n")
    while b"\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            sys.exit("connection closed by redis")
        buf += chunk
    line, buf = buf.split(b"\r\n", 1)
    assert line.startswith(b":"), line
    os.write(fd, line[1:] + b"\n")
    time.sleep(interval)
