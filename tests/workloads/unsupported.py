"""Test workload: holds what CRIU cannot checkpoint. `python3 unsupported.py io_uring|mqueue|
nobody`: an io_uring instance, a POSIX message queue, or runs as user nobody."""

import ctypes
import os
import sys
import time

what = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
if what == "io_uring":
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    assert libc.syscall(425, 4, params) >= 0, os.strerror(ctypes.get_errno())  # io_uring_setup
elif what == "mqueue":
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    assert rt.mq_open(b"/zapq", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0, os.strerror(ctypes.get_errno())
elif what == "nobody":
    os.setgid(65534)
    os.setuid(65534)
open("ready", "w").close() if what != "nobody" else None
while True:
    time.sleep(0.1)
