"""Reading another process and the kernel from outside: /proc and the kernel log.

Every reader takes its root (``proc_root``, the kmsg path) so tests can hand it a fixture tree.
The commands (watch, dump, attach, report) and the watcher use these; the renderers never read
the OS themselves.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from collections.abc import Iterable, Iterator
from typing import Any

from diag.errors import UsageError

#: /proc/PID/stat's flags bit for a kernel thread (include/linux/sched.h).
PF_KTHREAD = 0x00200000


def _read_stat(pid: int, proc_root: str) -> tuple[str, list[bytes]]:
    """/proc/PID/stat's command name and its fields from the state on (field 3), or a clear
    ``UsageError`` for a pid that does not exist or may not be read."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            head, rest = f.read().rsplit(b")", 1)
            return head.split(b"(", 1)[-1].decode(errors="replace"), rest.split()
    except FileNotFoundError:
        raise UsageError(f"no process with pid {pid}; check the pid (ps -ef)") from None
    except PermissionError:
        raise UsageError(f"pid {pid}: permission denied; run as its user or root") from None


def command_name(pid: int, proc_root: str = "/proc") -> str:
    """The process's command name (/proc/PID/stat's, 15 characters at most), or "?"."""
    try:
        return _read_stat(pid, proc_root)[0]
    except UsageError:
        return "?"


def process_state(pid: int, proc_root: str = "/proc") -> str:
    """The one-letter state of ``pid`` (R, S, D, Z...), or a clear ``UsageError`` for a pid that
    does not exist or may not be read."""
    return _read_stat(pid, proc_root)[1][0].decode()


#: Linux's PID_MAX_LIMIT (64-bit): no process id is larger.
MAX_PID = 1 << 22


def possible_pid(pid: int) -> bool:
    """Whether ``pid`` could name a process: 0 and negative ids name process groups to
    ``kill``, and one past the C long range makes it raise OverflowError."""
    return 0 < pid <= MAX_PID


def pid_alive(pid: int) -> bool:
    if not possible_pid(pid):
        return False
    try:
        os.kill(pid, 0)  # PermissionError: another user's process, which exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def check_target(pid: int, what: str = "watch", proc_root: str = "/proc") -> None:
    """One clear line for a pid that cannot be watched, dumped or attached to (``what``)."""
    name, fields = _read_stat(pid, proc_root)
    if fields[0] == b"Z":
        raise UsageError(f"pid {pid} has exited (a zombie, not yet reaped); nothing to {what}")
    if fields[0] in (b"T", b"t") and what != "watch":
        # Stopped (SIGSTOP, Ctrl-Z, a debugger): it answers no request, and code injected
        # into it would run only on resume, after the attach gave up and put back its
        # registers (the service would crash then). Watched from outside, it is just idle.
        raise UsageError(
            f"pid {pid} ({name}) is stopped (SIGSTOP, Ctrl-Z or a debugger); resume it "
            f"(kill -CONT {pid}) and try again"
        )
    if len(fields) > 6 and int(fields[6]) & PF_KTHREAD:
        # No memory of its own, no fds, no Python: watched, it read as a process that ended
        # at once ("ended: unknown").
        raise UsageError(f"pid {pid} is a kernel thread ({name}); nothing to {what}")


def zombie_exit(pid: int, proc_root: str = "/proc") -> dict[str, Any] | None:
    """Exit status or signal while the process is a zombie (/proc/PID/stat's exit_code): the
    one moment someone other than its parent can read it."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if not fields or fields[0] != b"Z" or len(fields) < 50:
        return None
    code = int(fields[49])  # field 52 of stat; fields here start at field 3
    if code & 0x7F:
        return {"signal": code & 0x7F, "signal_name": signal.Signals(code & 0x7F).name}
    return {"status": code >> 8}


def command_of(pid: int, proc_root: str = "/proc") -> list[str]:
    """The process's command line; empty when it cannot be read."""
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def is_alive(pid: int, since: float | None, proc_root: str = "/proc") -> bool:
    """``pid`` still runs, and is the process that was there at ``since`` (not a later process
    that reused the pid): neither a zombie nor dead."""
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False  # dying or waiting to be reaped: not running
        return since is None or process.create_time() <= since + 1.0
    except Exception:
        return os.path.exists(f"{proc_root}/{pid}") and since is None


def read_kmsg(path: str = "/dev/kmsg") -> Iterator[str]:
    """The kernel ring buffer, without blocking at its end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record was overwritten while reading; go on
                    continue
                raise
            if not record:
                return
            yield record.decode(errors="replace").split(";", 1)[-1].strip()
    finally:
        os.close(fd)


def oom_lines_for(pid: int, lines: Iterable[str]) -> list[str]:
    """Kernel lines that say the OOM killer chose this pid."""
    patterns = (
        re.compile(rf"Killed process {pid}\b"),
        re.compile(rf"oom-kill:.*\bpid={pid}\b"),
    )
    return [line for line in lines if any(p.search(line) for p in patterns)]


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str | None:
    """This boot of the machine: a history whose start record names another boot ended with
    the machine (power loss, a reboot), not with a signal."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
