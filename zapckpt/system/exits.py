"""How pods' init processes end, as they end: the kernel's process events connector (netlink
NETLINK_CONNECTOR, CN_IDX_PROC; root only, in the host's namespaces) reports every process's
exit with its status, whoever its parent is. zap is not the parent of a pod's init (nothing
is after a restore: CRIU's restored tree is reparented to the host's init), so this is how the
supervisor learns a pod's exit code.

The last RECENT exits are kept whatever the pid (a pod can end before the supervisor has
seen it run); only the pids the supervisor names (the running pods' inits) wake it."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections import OrderedDict

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXIT = 0x80000000
_NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp
_EXIT = struct.Struct("=IIII")  # pid, tgid, exit_code, exit_signal
RECENT = 4096


def status_of(raw: int) -> int:
    """A wait status as a shell says it: the exit code, or 128 + N for signal N."""
    return 128 + (raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF


class ExitListener:
    """Collects the exit statuses of processes; on_exit() is called (from the listening
    thread) after one of the pids in `watched` ended. Unavailable (not root, a container without the
    connector): `available` is False and nothing is ever reported."""

    def __init__(self, on_exit=None):
        self._lock = threading.Lock()
        self._watched: set[int] = set()
        self._exits: OrderedDict[int, int] = OrderedDict()
        self._on_exit = on_exit
        self._stop_r, self._stop_w = os.pipe()
        self.available = False
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
            self._sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            self._sock.send(_NLMSG.pack(_NLMSG.size + len(cn), _NLMSG_DONE, 0, 0, 0) + cn)
            self.available = True
        except OSError:
            self._sock = None
            return
        self._thread = threading.Thread(target=self._run, name="exits", daemon=True)
        self._thread.start()

    def watch(self, pids: set[int]) -> None:
        with self._lock:
            self._watched = set(pids)

    def take(self, pid: int) -> int | None:
        """The status pid exited with, if it was seen (and forget it)."""
        with self._lock:
            return self._exits.pop(pid, None)

    def close(self) -> None:
        if self._sock is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(2)
            self._sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = self._sock.recv(65536)
            except OSError:
                continue  # ENOBUFS: events were lost while we were slow; the supervisor polls too
            off = _NLMSG.size + _CN_MSG.size
            if len(data) < off + _EVENT.size + _EXIT.size:
                continue
            what = _EVENT.unpack_from(data, off)[0]
            if what != PROC_EVENT_EXIT:
                continue
            pid, tgid, raw, _sig = _EXIT.unpack_from(data, off + _EVENT.size)
            if pid != tgid:
                continue  # a thread, not the process
            with self._lock:
                self._exits.pop(tgid, None)
                self._exits[tgid] = status_of(raw)
                if len(self._exits) > RECENT:
                    self._exits.popitem(last=False)
                wanted = tgid in self._watched
                self._watched.discard(tgid)
            if wanted and self._on_exit is not None:
                self._on_exit()
