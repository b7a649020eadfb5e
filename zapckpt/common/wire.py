"""The zap server's wire (zapckpt/client.py talks it, zapckpt/cli/server.py serves it): where the
server of this interpreter and this version of the code listens, and its messages, each a
4-byte length and that much JSON (the first one carries the client's stdin, stdout and stderr)."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

RUN_DIR = "/run/zapckpt"
CODE = ("zapckpt", "catalog", "fsbackend")  # the packages whose files make a server's version


def key() -> str:
    """Names the server for this interpreter and these very source files (a changed file, a
    new checkout: a new server; the old one ends when it has been idle a while)."""
    import hashlib

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    h = hashlib.sha256(f"{sys.executable}\0{root}\0{os.geteuid()}".encode())
    for top in CODE:
        for d, _dirs, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    st = os.stat(os.path.join(d, f))
                    h.update(f"{d}/{f}{st.st_mtime_ns}{st.st_size}".encode())
    return h.hexdigest()[:16]


def socket_path(k: str) -> str:
    return os.path.join(RUN_DIR, f"server-{k}.sock")


def send_msg(sock: socket.socket, doc: dict, fds: list[int] = ()) -> None:
    data = json.dumps(doc).encode()
    data = struct.pack(">I", len(data)) + data
    if fds:
        import array

        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def recv_msg(sock: socket.socket) -> dict | None:
    """One message, or None at the end of the stream."""
    head = recv_exactly(sock, 4)
    if head is None:
        return None
    body = recv_exactly(sock, struct.unpack(">I", head)[0])
    return json.loads(body) if body is not None else None


def recv_exactly(sock: socket.socket, n: int, have: bytes = b"") -> bytes | None:
    buf = have
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf
