"""The zap server's wire: where the server of this checkout and virtualenv listens, and its
messages. Spoken by the `zap` command (zapckpt/client.c, and zapckpt/client.py where that is not
built) and by the server (zapckpt/cli/forkserver.py); plain bytes, so the C client needs no JSON.

- request (client to server), one message, with the client's stdin, stdout and stderr attached
  (SCM_RIGHTS): a big-endian u32 length, then NUL-terminated fields: MAGIC, the working
  directory, the umask (octal), the argument count N, the N arguments, and every environment
  entry (KEY=VALUE) to the end;
- signal (client to server): a u32, the number of a signal the client got (Ctrl-C...);
- reply (server to client): two u32, EXIT and the exit status, or SIGNAL and the signal the
  command died of.

The socket's name comes from the checkout and the virtualenv only (key()), so the C client can
compute it; a server whose source files change ends itself (forkserver.py watches them)."""

from __future__ import annotations

import os
import socket
import struct
import sys

RUN_DIR = "/run/zapckpt"
MAGIC = b"ZAP1"
EXIT, SIGNAL = 0, 1
CODE = ("zapckpt", "catalog", "fsbackend")  # the packages whose source files a server runs


def root() -> str:
    """The checkout (or installed tree) these packages are in."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def namespaces() -> bytes:
    """The network and mount namespaces the caller is in: a command runs in its server's, so a
    server serves only callers of the same ones (two hosts of a fleet on one machine each have a
    network namespace of their own)."""
    ids = []
    for ns in ("net", "mnt"):
        try:
            ids.append(str(os.stat(f"/proc/self/ns/{ns}").st_ino))
        except OSError:
            ids.append("0")
    return ":".join(ids).encode()


def key(code_root: str | None = None, prefix: str | None = None) -> str:
    """Names the server of a checkout, a virtualenv and the caller's namespaces (client.c
    computes the same)."""
    data = (os.fsencode(code_root or root()) + b"\0" + os.fsencode(os.path.realpath(prefix or sys.prefix)) + b"\0"
            + namespaces())  # fmt: skip
    return f"{fnv1a64(data):016x}"


def socket_path(k: str) -> str:
    return os.path.join(RUN_DIR, f"server-{k}.sock")


def fingerprint(code_root: str | None = None) -> tuple:
    """The source files a server would run, with their times and sizes (a server compares it
    with the one it started with)."""
    top = code_root or root()
    out = []
    for pkg in CODE:
        for d, dirs, files in os.walk(os.path.join(top, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    st = os.stat(os.path.join(d, f))
                    out.append((d, f, st.st_mtime_ns, st.st_size))
    return tuple(out)


def send_request(sock: socket.socket, argv: list[str], env: dict[str, str], cwd: str, umask: int) -> None:
    import array

    fields = [MAGIC, os.fsencode(cwd), b"%o" % umask, b"%d" % len(argv), *map(os.fsencode, argv),
              *(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items())]  # fmt: skip
    body = b"".join(f + b"\0" for f in fields)
    data = struct.pack(">I", len(body)) + body
    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    if sent < len(data):
        sock.sendall(data[sent:])


def parse_request(body: bytes) -> dict | None:
    fields = body.split(b"\0")
    if len(fields) < 5 or fields[0] != MAGIC or fields[-1] != b"":
        return None
    fields = fields[:-1]
    try:
        n = int(fields[3])
        umask = int(fields[2], 8)
    except ValueError:
        return None
    argv, env_entries = fields[4 : 4 + n], fields[4 + n :]
    if len(argv) != n:
        return None
    env = {}
    for e in env_entries:
        k, sep, v = e.partition(b"=")
        if sep and k:
            env[os.fsdecode(k)] = os.fsdecode(v)
    return {"cwd": os.fsdecode(fields[1]), "umask": umask, "argv": [os.fsdecode(a) for a in argv], "env": env}


def send_signal(sock: socket.socket, sig: int) -> None:
    sock.sendall(struct.pack(">I", sig))


def send_reply(sock: socket.socket, kind: int, value: int) -> None:
    sock.sendall(struct.pack(">II", kind, value))


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


def recv_reply(sock: socket.socket) -> tuple[int, int] | None:
    data = recv_exactly(sock, 8)
    return struct.unpack(">II", data) if data is not None else None


def recv_signal(sock: socket.socket) -> int | None:
    data = recv_exactly(sock, 4)
    return struct.unpack(">I", data)[0] if data is not None else None
