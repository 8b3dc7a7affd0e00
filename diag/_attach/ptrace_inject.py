"""Make a running Python process run one line, with ptrace alone (x86-64 Linux, no gdb).

Why not gdb everywhere: gdb up to 13 (Debian 12's, Ubuntu 22.04's) cannot call a function in
a process on a CPU with AMX (Intel Sapphire Rapids and later): it writes the extended register
state with a buffer smaller than the kernel's, and every call fails with "Couldn't write
extended state status: Bad address". Here the whole state is saved and written back at the
size the kernel itself reports, and a container needs no gdb.

How one call into the target works (what gdb does for ``call f(x)``), with only the main
thread stopped (the other threads run on):

1. ``PTRACE_SEIZE`` + ``PTRACE_INTERRUPT`` stop the main thread wherever it is; its general
   registers and its whole extended state (``NT_X86_XSTATE``: SSE, AVX, AVX-512, AMX) are saved.
2. One ``int3`` byte is written over the program's entry point (``AT_ENTRY``, ``_start``:
   never run again, so no other thread can step on it) and pushed as the return address.
3. The registers are set for the System V call (``rdi, rsi, rdx, rcx, r8, r9``; the stack
   16-byte aligned below the 128-byte red zone; ``orig_rax`` -1 so that a system call the
   thread was blocked in is not restarted under our feet) and the thread runs until the
   ``int3``: ``rax`` is the result.
4. The saved registers and state go back, the entry byte too, and the thread is released: a
   blocking call it was in restarts as after any signal.

Memory is read and written through ``/proc/PID/mem``, never by dereferencing an address here.
Symbols come from the ``.dynsym`` tables of the files the target has mapped (read through
``/proc/PID/root``, so a container's files are the ones read).

Where the line runs, as the gdb path decides it (``gdb_inject.py``):

- the main thread is blocked in a wait (a futex that is not the GIL's, poll, a sleep, accept,
  read...): it holds none of the interpreter's locks, so the line runs right there between
  ``PyGILState_Ensure`` and ``PyGILState_Release``;
- otherwise (running bytecode, in C code, or waiting for the GIL itself): the line is queued
  with ``Py_AddPendingCall``; the interpreter runs it on the main thread, holding the GIL, at
  its next bytecode boundary.

The line lives in a page ``mmap``-ed in the target (a system call, safe from any stop; nothing
that could call ``malloc`` while the thread may be inside it); the page is left there (4 KiB),
as a queued call reads it later.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from diag.errors import DiagError, ProcessError

PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14  # the legacy 512-byte FXSAVE area: where the kernel has no XSTATE regset
PTRACE_SETFPREGS = 15
PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000  # __WALL: wait for a traced thread as for a child
#: Room for the largest extended state a kernel reports (AMX tile data makes it ~11 KiB).
XSTATE_ROOM = 1 << 16
AT_ENTRY = 9
RED_ZONE = 128
#: The kernel's "restart this system call" codes, as ``rax`` holds them in a stopped call.
RESTART_CODES = frozenset(2**64 - code for code in (512, 513, 514, 516))
#: Blocking system calls (x86-64 numbers): a thread inside one holds no interpreter lock.
WAITING_SYSCALLS = {
    0: "read",
    7: "poll",
    23: "select",
    34: "pause",
    35: "nanosleep",
    43: "accept",
    45: "recvfrom",
    47: "recvmsg",
    61: "wait4",
    128: "rt_sigtimedwait",
    130: "rt_sigsuspend",
    202: "futex",
    230: "clock_nanosleep",
    232: "epoll_wait",
    247: "waitid",
    270: "pselect6",
    271: "ppoll",
    281: "epoll_pwait",
    288: "accept4",
    441: "epoll_pwait2",
}
FUTEX = 202
CALL_TIMEOUT = 60.0

PYTHON_FUNCTIONS = ("PyGILState_Ensure", "PyGILState_Release", "PyRun_SimpleString",
                    "Py_AddPendingCall")  # fmt: skip
REGISTERS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
             "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")  # fmt: skip
ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


class _Registers(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in REGISTERS]  # user_regs_struct


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def supported() -> bool:
    """Whether this machine can inject without gdb."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


# -- symbols ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mapped:
    path: str  # as the target names it
    start: int  # where its first (offset 0) mapping begins


def _mapped_files(pid: int) -> list[_Mapped]:
    """Each file the target maps from offset 0, in the order it appears."""
    seen: dict[str, int] = {}
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/") or int(fields[2], 16) != 0:
                continue
            path = fields[5].rstrip("\n")
            seen.setdefault(path, int(fields[0].split("-")[0], 16))
    return [_Mapped(path, start) for path, start in seen.items()]


def elf_symbols(
    data: bytes | mmap.mmap, wanted: set[str]
) -> tuple[dict[str, tuple[int, int]], int, bool]:
    """The ``wanted`` names defined in an ELF64 file's ``.dynsym``: name -> (value, size); the
    virtual address of its first loadable segment, and whether it is position-independent."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}, 0, False  # not a little-endian ELF64
    e_type, = struct.unpack_from("<H", data, 0x10)  # fmt: skip
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 0x36)
    first_load = 0
    for i in range(e_phnum):
        p_type, _, p_offset, p_vaddr = struct.unpack_from("<IIQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1 and p_offset == 0:  # PT_LOAD of the file's start
            first_load = p_vaddr
            break
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)
    ]
    found: dict[str, tuple[int, int]] = {}
    for _, sh_type, _, _, sh_offset, sh_size, sh_link, _, _, sh_entsize in sections:
        if sh_type != 11 or sh_link >= len(sections):  # SHT_DYNSYM
            continue
        strings_at = sections[sh_link][4]
        for at in range(sh_offset, sh_offset + sh_size, sh_entsize or 24):
            st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from(
                "<IBBHQQ", data, at
            )
            if st_shndx == 0 or st_value == 0 or (st_info & 0xF) not in (1, 2):
                continue  # undefined, or neither an object nor a function
            end = data.find(b"\0", strings_at + st_name)
            name = data[strings_at + st_name : end].decode("ascii", "replace")
            if name in wanted and name not in found:
                found[name] = (st_value, st_size)
    return found, first_load, e_type == 3  # ET_DYN


def resolve(pid: int, names: set[str]) -> dict[str, tuple[int, int]]:
    """Each name's (address, size) in the target: the first mapped file that defines it."""
    found: dict[str, tuple[int, int]] = {}
    for mapped in _mapped_files(pid):
        if not names - found.keys():
            break
        base_name = os.path.basename(mapped.path)
        if not ("python" in base_name or base_name.startswith("libc.") or "libc-" in base_name):
            continue  # the interpreter, libpython and libc hold all we call
        try:
            with (
                open(f"/proc/{pid}/root{mapped.path}", "rb") as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
            ):
                symbols, first_load, relocatable = elf_symbols(data, names - found.keys())
        except (OSError, ValueError, struct.error):
            continue  # unreadable, or not the ELF it seemed
        base = mapped.start - first_load if relocatable else 0
        for name, (value, size) in symbols.items():
            found[name] = (base + value, size)
    return found


def entry_point(pid: int) -> int:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read()
    for key, value in struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]):
        if key == AT_ENTRY:
            return int(value)
    raise DiagError(f"pid {pid} has no entry point in its auxiliary vector")


# -- ptrace -----------------------------------------------------------------------------------


class _Tracer:
    """The target's main thread, seized and stopped; calls functions in it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.restype = ctypes.c_long
        self._libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                      ctypes.c_void_p]  # fmt: skip
        self._mem = -1
        self._entry = 0
        self._entry_byte = b""
        self.saved = _Registers()
        self._xstate = ctypes.create_string_buffer(XSTATE_ROOM)
        self._xstate_size = 0  # 0: the FXSAVE area was saved instead
        self._have_registers = False
        self.signal = 0  # a signal that arrived meanwhile: delivered on release

    def _ptrace(self, request: int, data: int | ctypes.c_void_p | None = None,
                addr: int = 0) -> None:  # fmt: skip
        ctypes.set_errno(0)
        if self._libc.ptrace(request, self.pid, addr, data) == -1 and ctypes.get_errno():
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def seize(self) -> None:
        try:
            self._ptrace(PTRACE_SEIZE)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise ProcessError(
                    f"ptrace of pid {self.pid} is not permitted: run as root; in a container "
                    "add CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE, or the pod's "
                    "securityContext)"
                ) from None
            if exc.errno == errno.ESRCH:
                raise DiagError(f"pid {self.pid} exited while diag was attaching") from None
            raise
        self._ptrace(PTRACE_INTERRUPT)
        self._wait_for_stop()
        self._ptrace(PTRACE_GETREGS, ctypes.addressof(self.saved))
        self._have_registers = True
        iov = _IoVec(ctypes.addressof(self._xstate), XSTATE_ROOM)
        try:
            self._ptrace(PTRACE_GETREGSET, ctypes.addressof(iov), NT_X86_XSTATE)
            self._xstate_size = iov.len  # the kernel's own size: SETREGSET wants exactly it
        except OSError:
            self._ptrace(PTRACE_GETFPREGS, ctypes.addressof(self._xstate))
        self._mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
        self._entry = entry_point(self.pid)
        self._entry_byte = os.pread(self._mem, 1, self._entry)
        os.pwrite(self._mem, b"\xcc", self._entry)  # int3: where every call returns

    def _wait_for_stop(self) -> int:
        """The next stop's status; a signal other than ours is kept for the release."""
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            tid, status = os.waitpid(self.pid, os.WNOHANG | WALL)
            if tid == 0:
                if time.monotonic() > deadline:
                    raise DiagError(
                        f"pid {self.pid} did not come back from a call diag made in it within "
                        f"{CALL_TIMEOUT:.0f} s"
                    )
                time.sleep(0.0005)
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise DiagError(f"pid {self.pid} exited while diag was attaching")
            return status

    def call(self, function: int, *args: int) -> int:
        """``function(*args)`` on the stopped thread; its return value (rax)."""
        regs = _Registers.from_buffer_copy(self.saved)
        stack = (self.saved.rsp - RED_ZONE - 256) & ~0xF
        stack -= 8  # the return address: at the callee's entry rsp is 8 past 16-aligned
        os.pwrite(self._mem, struct.pack("<Q", self._entry), stack)
        regs.rsp = stack
        regs.rip = function
        regs.rax = 0  # no vector registers carry arguments (a varargs callee reads al)
        regs.orig_rax = 2**64 - 1  # not in a system call: nothing to restart
        for name, value in zip(ARGUMENT_REGISTERS, args, strict=False):
            setattr(regs, name, value % 2**64)
        self._ptrace(PTRACE_SETREGS, ctypes.addressof(regs))
        self._ptrace(PTRACE_CONT, 0)
        while True:
            status = self._wait_for_stop()
            self._ptrace(PTRACE_GETREGS, ctypes.addressof(regs))
            stopped_by = os.WSTOPSIG(status) if os.WIFSTOPPED(status) else 0
            if stopped_by == 5 and regs.rip == self._entry + 1:  # SIGTRAP at our int3
                return int(regs.rax)
            if stopped_by and status >> 16 == 0:  # a signal for the process: kept for later
                self.signal = stopped_by
            self._ptrace(PTRACE_CONT, 0)

    def write_string(self, text: str, mmap_function: int) -> int:
        """``text`` in a fresh page of the target (``mmap_function``: libc's mmap there)."""
        data = text.encode() + b"\0"
        size = (len(data) // 4096 + 1) * 4096
        address = self.call(mmap_function, 0, size, 3, 0x22, -1, 0)  # PROT_RW, PRIVATE|ANON
        if address >= 2**64 - 4096 or address == 0:
            raise DiagError(f"mmap in pid {self.pid} failed")
        os.pwrite(self._mem, data, address)
        return address

    def release(self) -> None:
        """Everything as it was: registers, extended state, the entry byte; then detach."""
        try:
            if self._entry_byte:
                os.pwrite(self._mem, self._entry_byte, self._entry)
            if self._have_registers:
                self._ptrace(PTRACE_SETREGS, ctypes.addressof(self.saved))
                if self._xstate_size:
                    iov = _IoVec(ctypes.addressof(self._xstate), self._xstate_size)
                    self._ptrace(PTRACE_SETREGSET, ctypes.addressof(iov), NT_X86_XSTATE)
                else:
                    self._ptrace(PTRACE_SETFPREGS, ctypes.addressof(self._xstate))
        finally:
            if self._mem >= 0:
                os.close(self._mem)
            with contextlib.suppress(OSError):  # it exited: nothing to detach from
                self._ptrace(PTRACE_DETACH, self.signal)


@contextmanager
def _seized(pid: int) -> Iterator[_Tracer]:
    tracer = _Tracer(pid)
    try:
        tracer.seize()
        yield tracer
    finally:
        tracer.release()


def run_line(pid: int, line: str) -> str:
    """Have ``pid``'s interpreter run ``line``; says how (run now, or queued)."""
    functions = resolve(pid, {*PYTHON_FUNCTIONS, "_PyRuntime", "mmap"})
    missing = [name for name in PYTHON_FUNCTIONS if name not in functions]
    if missing:
        raise ProcessError(
            f"pid {pid}'s Python lacks the symbols attach needs ({', '.join(missing)}): a "
            "stripped or static interpreter; use diag run instead"
        )
    if "mmap" not in functions:
        raise ProcessError(f"pid {pid} maps no libc with mmap: diag cannot place its line there")
    with _seized(pid) as tracer:
        address = tracer.write_string(line, functions["mmap"][0])
        saved = tracer.saved
        waiting = saved.rax in RESTART_CODES and saved.orig_rax in WAITING_SYSCALLS
        runtime = functions.get("_PyRuntime")
        if waiting and saved.orig_rax == FUTEX and runtime is not None:
            start, size = runtime
            # A futex inside the runtime's state is the GIL's: the thread wants the GIL, and
            # will run a queued call as soon as it has it.
            waiting = not start <= saved.rdi < start + max(size, 1)
        if waiting:
            state = tracer.call(functions["PyGILState_Ensure"][0])
            result = _as_int(tracer.call(functions["PyRun_SimpleString"][0], address))
            tracer.call(functions["PyGILState_Release"][0], state)
            syscall = WAITING_SYSCALLS[saved.orig_rax]
            return f"main thread waits ({syscall}): ran with PyGILState_Ensure: {result}"
        queued = _as_int(
            tracer.call(
                functions["Py_AddPendingCall"][0], functions["PyRun_SimpleString"][0], address
            )
        )
        if queued != 0:
            raise DiagError(f"pid {pid}'s interpreter refused a pending call (its queue is full)")
        return "main thread busy: pending call queued"


def _as_int(rax: int) -> int:
    """A C ``int`` return value: the low 32 bits of rax, signed."""
    value = rax & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value
