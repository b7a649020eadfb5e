"""Running one system call inside another, stopped process (ptrace), for the little CRIU cannot
give back by itself: a POSIX lock is owned by the process, so only the process can take it
(criu/locks.py).

How (x86_64): seize the task and interrupt it, save its registers, point them at a `syscall`
instruction already mapped in it (none is written), with the call's number and arguments and
any data on its stack below the red zone, single-step over it, read the result, then put the
registers and the stack bytes back and detach. A signal that arrives meanwhile is handed back
on detach, so the process sees nothing of it. Other architectures: InjectError, and the caller
refuses what it needed the call for."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import signal

PTRACE_GETREGS, PTRACE_SETREGS = 12, 13
PTRACE_SINGLESTEP, PTRACE_DETACH = 9, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000
SYSCALL_INSN = b"\x0f\x05"
RED_ZONE = 128


class InjectError(OSError):
    pass


class _Regs(ctypes.Structure):
    # struct user_regs_struct, x86_64
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
        "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
    )]  # fmt: skip


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def supported() -> bool:
    return platform.machine() == "x86_64"


def _ptrace(req: int, pid: int, addr: int = 0, data=None) -> None:
    if _libc.ptrace(req, pid, ctypes.c_void_p(addr), data) == -1:
        err = ctypes.get_errno()
        raise InjectError(err, f"ptrace({req:#x}) of {pid}: {os.strerror(err)}")


def _wait_stop(pid: int) -> int:
    """The signal of tid's next stop (SIGTRAP for a single step, the stop signal for a stop)."""
    while True:
        _, status = os.waitpid(pid, WALL)
        if os.WIFSTOPPED(status):
            return os.WSTOPSIG(status)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise InjectError(f"process {pid} ended while a call was run in it")


def _syscall_address(pid: int, mem: int, rip: int) -> int:
    """An address in pid where the bytes 0f 05 (`syscall`) are: at its instruction pointer
    (a task stopped just before re-entering an interrupted call), just before it (stopped in
    one), else anywhere in its vDSO or its other executable mappings."""
    for at in (rip, rip - 2):
        try:
            if os.pread(mem, 2, at) == SYSCALL_INSN:
                return at
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        maps = [ln.split() for ln in f]
    maps.sort(key=lambda m: m[-1] != "[vdso]")  # the vDSO first: small, and always there
    for m in maps:
        if len(m) < 2 or "x" not in m[1]:
            continue
        lo, hi = (int(x, 16) for x in m[0].split("-"))
        try:
            data = os.pread(mem, min(hi - lo, 1 << 20), lo)
        except OSError:
            continue
        at = data.find(SYSCALL_INSN)
        if at >= 0:
            return lo + at
    raise InjectError(f"no syscall instruction found in process {pid}")


def syscall(pid: int, nr: int, args: list[int], data: bytes = b"") -> tuple[int, int]:
    """Run system call nr in process pid (one of its threads: a tid) with args; if data is
    given, it is copied into the process first and an argument equal to DATA stands for its
    address. Returns (the call's return value, its address of data). The process must be
    stopped (or is stopped here for the call) and is left as it was."""
    if not supported():
        raise InjectError(f"running a call inside a process is not implemented on {platform.machine()}")
    _ptrace(PTRACE_SEIZE, pid)
    pending: list[int] = []
    try:
        _ptrace(PTRACE_INTERRUPT, pid)
        sig = _wait_stop(pid)
        if sig not in (signal.SIGTRAP, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            pending.append(sig)  # a signal it was about to take (stopped for us): handed back on detach
        saved = _Regs()
        _ptrace(PTRACE_GETREGS, pid, 0, ctypes.byref(saved))
        mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            at = _syscall_address(pid, mem, saved.rip)
            where = ((saved.rsp - RED_ZONE - len(data) - 64) & ~0xF) if data else 0
            old = os.pread(mem, len(data), where) if data else b""
            if data and os.pwrite(mem, data, where) != len(data):
                raise InjectError(f"cannot write into process {pid}")
            try:
                regs = _Regs.from_buffer_copy(saved)
                regs.rax, regs.orig_rax, regs.rip = nr, (1 << 64) - 1, at  # orig_rax -1: no restart
                for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
                    setattr(regs, name, (where if value is DATA else value) & ((1 << 64) - 1))
                _ptrace(PTRACE_SETREGS, pid, 0, ctypes.byref(regs))
                while True:
                    _ptrace(PTRACE_SINGLESTEP, pid, 0, None)
                    sig = _wait_stop(pid)
                    _ptrace(PTRACE_GETREGS, pid, 0, ctypes.byref(regs))
                    if regs.rip == at + len(SYSCALL_INSN):
                        break
                    if sig != signal.SIGTRAP and regs.rip == at:
                        pending.append(sig)  # delivered later, not now: the call goes first
                        continue
                    raise InjectError(f"process {pid} did not run the call (stopped at {regs.rip:#x})")
                result = ctypes.c_longlong(regs.rax).value
            finally:
                if data:
                    os.pwrite(mem, old, where)
                _ptrace(PTRACE_SETREGS, pid, 0, ctypes.byref(saved))
        finally:
            os.close(mem)
    finally:
        first = pending[0] if pending else 0
        try:
            _ptrace(PTRACE_DETACH, pid, 0, ctypes.c_void_p(first))
        except InjectError:
            pass
        for sig in pending[1:]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    return result, where


class _Data:
    def __repr__(self) -> str:
        return "DATA"


DATA = _Data()  # an argument standing for the address of syscall()'s data
