"""Test workload: an HTTP/1.1 client on ONE keep-alive connection (it never reconnects). It
asks /seq, to which nginx answers "$connection $connection_requests" (the connection's serial
number and how many requests it has carried: nginx's memory), and appends every answer to
http_values.txt in its cwd."""

import http.client
import os
import sys
import time

port = int(os.environ.get("HTTP_PORT", "8080"))
deadline = time.monotonic() + 20
while True:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/seq")
        first = conn.getresponse().read()
        break
    except OSError:
        conn.close()
        if time.monotonic() > deadline:
            sys.exit("nginx never came up")
        time.sleep(0.05)
print("connected", flush=True)
fd = os.open("http_values.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, first)
while True:
    conn.request("GET", "/seq")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200 or resp.will_close:
        sys.exit(f"unexpected answer {resp.status}")
    os.write(fd, body)
    time.sleep(0.002)
