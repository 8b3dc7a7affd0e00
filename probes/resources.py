"""Resources other than memory: file descriptors, sockets, threads, children, memory maps,
shared memory and asyncio tasks, each a judged total (``resource_usage{resource}`` against
``resource_limit{resource}``) with a breakdown beside it.

Every tick (a few microseconds, whatever the process holds):

- the open-fd count from ``stat("/proc/PID/fd").st_size``, which the kernel (6.2+) fills with
  the count in constant time; where it does not (0, or a fixture tree), the count of the last
  listing is used and the listing is refreshed on its budget;
- the OS thread count (``Threads:`` of ``/proc/PID/status``, or the link count of
  ``/proc/PID/task`` where that reading confirmed it), inside also ``threading``'s;
- ``/dev/shm``'s used and total bytes (one ``statvfs``; system-wide, not this process's).

The fd, task and /dev/shm directories are held open and read with ``fstat``/``fstatvfs`` (no
path walk; reopened in a forked child, whose /proc/self is another directory). One clock
reading tells whether any budgeted pass may be due. While none of these readings moves and no
pass ran, the samples of the last tick are handed out again rather than rebuilt.

On budgeted cadences (``Cadence``: as often as every tick while cheap, never more often than
keeps their amortized cost per tick within ``tick_budget`` at the agent's ``interval``): the fds
by kind (inside, one fstat per fd: 13 ms for 10k fds here; outside, one readlink per fd: 33 ms)
with the sockets by type and state (``/proc/PID/net/*``), the memory map count (a line count of
``/proc/PID/maps``), the children by state (``/proc/PID/task/*/children``), and, inside a
process that imported asyncio, its tasks by coroutine (their count, tasks not yet
garbage-collected, is read every tick: one ``len``). Between passes the last reading is
repeated. The limits (RLIMIT_NOFILE, the pids
cgroup and ``kernel.threads-max``, ``vm.max_map_count``) are re-read every ``limits_interval``.

Every parser is a pure function over bytes and every root is a parameter, so the tests feed
fixture trees. A reading that cannot be taken is left out and explained once in ``notes``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from diag.model import Labels, Sample, labels_of
from diag.settings import DEFAULT_INTERVAL
from probes.base import Cadence, ProbeUnavailable, ProcFile, read_text
from probes.limits import MemoryCgroup, locate_cgroup, parse_limit

FD_KINDS = ("file", "socket", "pipe", "anon", "device", "other")
#: The judged resources, in the order they are shown.
RESOURCES = ("fds", "threads", "memory_maps", "shm", "children", "asyncio_tasks")
#: Kernel TCP states (include/net/tcp_states.h); UDP reports its sockets in the same numbers.
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
#: /proc/net/unix's St column (socket_state); a listening socket carries __SO_ACCEPTCON.
UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
UNIX_ACCEPTCON = 0x10000
NET_TABLES = ("tcp", "tcp6", "udp", "udp6", "unix")
#: /proc/PID/stat's state letters.
PROCESS_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk_sleep",
    "T": "stopped",
    "t": "tracing_stop",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
    "P": "parked",
}
#: Shown even at 0, so an alert on zombies has a series before the first one.
CHILD_STATES_SHOWN = ("running", "sleeping", "zombie")
#: Children whose state (a read of their stat) a pass reads at most; the rest keep the state
#: read last time (a zombie stays one until reaped) or, never read yet, count as ``unknown``.
CHILD_STATS_PER_PASS = 64
#: The readings on cadences and their share of ``tick_budget``.
SHARES = {"fds": 0.55, "maps": 0.2, "children": 0.15, "asyncio": 0.1}
#: The amortized cost per tick that all budgeted readings together may add (the issue's 30 µs
#: for the whole probe, less the every-tick part measured by ``python -m benchmarks resources``,
#: about 18 µs here, with room for a shared machine's noise).
TICK_BUDGET = 8e-6


# -- parsers: pure functions over what /proc gives --------------------------------------------


#: Directories under /dev whose files (and themselves) are no devices.
NOT_DEVICES = ("/dev/shm", "/dev/mqueue")


def fd_kind(target: str) -> str:
    """The kind of an fd from its /proc/PID/fd link target."""
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon"
    if target.startswith("/dev/") and not any(
        target == top or target.startswith(top + "/") for top in NOT_DEVICES
    ):
        return "device"  # by its path: a guess outside the process (inside, fstat knows)
    if target.startswith("/"):
        return "file"  # also "(deleted)" files and memfds ("/memfd:name (deleted)")
    return "other"  # namespaces ("net:[...]"), and whatever a kernel adds


def fd_kind_of_mode(mode: int) -> str:
    """The kind of an fd from its ``fstat`` mode: as ``fd_kind`` tells it from the link, but
    a namespace (a regular file to fstat) counts as a file, and so does a regular file
    under /dev. Anonymous inodes (eventfd, epoll, timerfd) have no file type."""
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFSOCK:
        return "socket"
    if kind == stat.S_IFIFO:
        return "pipe"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "device"
    if kind == 0:
        return "anon"
    return "file"


def socket_inode(target: str) -> int | None:
    """The inode of a ``socket:[123]`` link target."""
    if target.startswith("socket:[") and target.endswith("]"):
        try:
            return int(target[8:-1])
        except ValueError:
            return None
    return None


def parse_net_inet(text: bytes) -> dict[int, str]:
    """{inode: state} from /proc/net/tcp, tcp6, udp or udp6."""
    out: dict[int, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            state, inode = int(fields[3], 16), int(fields[9])
        except ValueError:
            continue
        out[inode] = TCP_STATES.get(state, "none")
    return out


def parse_net_unix(text: bytes) -> dict[int, str]:
    """{inode: state} from /proc/net/unix (LISTEN for a listening socket)."""
    out: dict[int, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 7:
            continue
        try:
            flags, state, inode = int(fields[3], 16), int(fields[5], 16), int(fields[6])
        except ValueError:
            continue
        out[inode] = "LISTEN" if flags & UNIX_ACCEPTCON else UNIX_STATES.get(state, "none")
    return out


def parse_limits_file(text: bytes, name: bytes = b"Max open files") -> int | None:
    """The soft limit of ``name`` in /proc/PID/limits; None for unlimited."""
    for line in text.splitlines():
        if line.startswith(name):
            soft = line[len(name) :].split()[0]
            return None if soft == b"unlimited" else int(soft)
    raise ValueError(f"no {name.decode()!r} line")


def parse_threads(status: bytes) -> int:
    """``Threads:`` of /proc/PID/status."""
    at = status.find(b"\nThreads:")
    if at < 0:
        raise ValueError("no Threads line in status")
    return int(status[at + 9 : status.find(b"\n", at + 9)].split()[0])


def parse_stat_state(stat: bytes) -> str:
    """The state of /proc/PID/stat, named (``zombie``...)."""
    letter = stat.rsplit(b")", 1)[1].split()[0].decode()
    return PROCESS_STATES.get(letter, "other")


def parse_children(text: bytes) -> list[int]:
    return [int(part) for part in text.split()]


def top_with_other(counts: Counter[str], top: int) -> dict[str, int]:
    """The ``top`` most common keys, the rest summed as ``other``."""
    out = dict(counts.most_common(top))
    rest = sum(counts.values()) - sum(out.values())
    if rest:
        out["other"] = out.get("other", 0) + rest
    return out


def coroutine_name(task: Any) -> str:
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else None
    if coro is None:
        return "other"
    return str(getattr(coro, "__qualname__", None) or type(coro).__name__)


def shm_usage(st: os.statvfs_result) -> tuple[int, int]:
    """Bytes used and the size of the file system ``st`` describes (``/dev/shm``)."""
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def asyncio_task_sets() -> list[Collection[Any]] | None:
    """The sets asyncio keeps its tasks in, without importing it: None when the host has not
    imported asyncio; an empty list on a Python whose asyncio keeps them elsewhere."""
    tasks = sys.modules.get("asyncio.tasks")
    if tasks is None:
        return None
    found = []
    for attr in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):  # 3.10-3.11; 3.12-3.13
        value = getattr(tasks, attr, None)
        if value is not None:
            found.append(value)
    return found


def snapshot(items: Iterable[Any]) -> list[Any]:
    """A list of a (weak) set another thread may change meanwhile: retried, as asyncio does."""
    for _ in range(100):
        try:
            return list(items)
        except RuntimeError:
            continue
    return []


# -- the probe ----------------------------------------------------------------------------


class ResourceProbe:
    name = "resources"

    def __init__(
        self,
        pid: int | None = None,
        *,
        proc_root: str = "/proc",
        fs_root: str = "",
        shm_path: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        tick_budget: float = TICK_BUDGET,
        limits_interval: float = 30.0,
        top: int = 10,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pid = pid
        self.inside = pid is None
        # This process's own fds, under the real /proc: classified by fstat, not by link.
        self._own_fds = self.inside and proc_root == "/proc"
        where = "self" if pid is None else str(pid)
        self._proc_root = proc_root
        self._fs_root = fs_root
        self._dir = f"{proc_root}/{where}"
        self._fd_dir = f"{self._dir}/fd"
        self._task_dir = f"{self._dir}/task"
        # Read at most every few seconds, and the process probe keeps its own status open:
        # opened for each reading, not held (one file per process, not two).
        self._status_path = f"{self._dir}/status"
        self._maps = ProcFile(f"{self._dir}/maps", 1 << 16)
        self._limits_file = ProcFile(f"{self._dir}/limits")
        self._threads_max = ProcFile(f"{proc_root}/sys/kernel/threads-max", 64)
        self._max_map_count = ProcFile(f"{proc_root}/sys/vm/max_map_count", 64)
        if shm_path is None:
            shm_path = "/dev/shm" if pid is None else f"{self._dir}/root/dev/shm"
        self._shm_path = shm_path
        self._top = top
        # The budget is per tick; a Cadence budgets wall time: divide by the tick interval.
        per_second = tick_budget / max(interval, 1e-3)
        self._cadences = {
            name: Cadence(0.0, budget=per_second * share, monotonic=monotonic)
            for name, share in SHARES.items()
        }
        self._limits_cadence = Cadence(limits_interval, budget=1e-3, monotonic=monotonic)
        self._monotonic = monotonic
        self._next_due = -math.inf  # the earliest a cadence comes due (``_plan_next_pass``)
        self._tasks_read = False  # whether asyncio's tasks were ever broken down
        self._pids_max: list[ProcFile] | None = None
        # Readings, repeated between passes.
        self._fd_count_trusted: bool | None = None  # st_size is the count (checked on listing)
        self._fds_listed: int | None = None
        self._fd_kinds: dict[str, int] = {}
        self._sockets: dict[tuple[str, str], int] = {}
        self._maps_count: int | None = None
        self._children: dict[str, int] | None = None
        self._child_states: dict[int, str] = {}  # pid -> its state as last read
        self._child_turn = 0  # where the next pass's reads of known children begin
        self._tasks: dict[str, int] | None = None
        self._limits: dict[str, float] = {}
        self._notes: dict[str, str] = {}
        self._labels: dict[tuple[str, str], Labels] = {}
        self._nlink_trusted = False
        self._cached: list[Sample] | None = None  # the samples that change only with a pass
        # The last every-tick readings and all the samples made of them with ``_cached``.
        self._readings: tuple[int | None, ...] = ()
        self._out: tuple[Sample, ...] = ()
        # The fd and task directories, held open: fstat on an open /proc directory answers as
        # stat on its path does, without the path walk (1 µs against 3.5 µs here).
        self._held: dict[str, int] = {}
        self._held_pid = -1
        # The shortest way through a tick (``_quick_readings``): the three held descriptors
        # it reads, and the readings for which the last samples stand.
        self._quick: tuple[int, int, int] | None = None
        self._quick_key: tuple[int | None, ...] | None = None

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._notes.values())

    def _note(self, what: str, text: str) -> None:
        self._notes[what] = f"{what}: {text}"

    def _label(self, key: str, value: str) -> Labels:
        labels = self._labels.get((key, value))
        if labels is None:
            labels = self._labels[(key, value)] = ((key, value),)
        return labels

    # -- the tick ----------------------------------------------------------------------

    def sample(self) -> Sequence[Sample]:
        # Most ticks: no pass due, the same readings: the same samples, from three system
        # calls on descriptors held open.
        if self._quick is not None and self._quick_readings() == self._quick_key:
            return self._out
        return self._sample()

    def _quick_readings(self) -> tuple[int | None, ...] | None:
        """The every-tick readings by the shortest way, where it is known to give what
        ``_sample`` would (the fd count and thread count trusted from fstat, the held
        descriptors this process's own); None when a pass may be due or anything is off."""
        quick = self._quick
        if quick is None or self._monotonic() >= self._next_due or os.getpid() != self._held_pid:
            return None
        tasks: int | None = None
        if self.inside:
            sets = asyncio_task_sets()
            if sets is not None:
                if not sets or not self._tasks_read:
                    return None  # a first breakdown or a note to make: the long way
                tasks = sum(len(each) for each in sets)
        fd_dir, task_dir, shm_dir = quick
        try:
            fds = os.fstat(fd_dir).st_size
            threads = os.fstat(task_dir).st_nlink - 2
            shm = os.fstatvfs(shm_dir)
        except OSError:
            return None  # the long way says what happened
        if threads <= 0:
            return None  # the process has ended: the long way looks again
        python_threads = threading.active_count() if self.inside else None
        return threads, python_threads, fds, tasks, *shm_usage(shm)

    def _sample(self) -> Sequence[Sample]:
        # One clock reading decides whether any pass may be due: most ticks run none.
        due = self._monotonic() >= self._next_due
        if due and self._limits_cadence.due():
            self._limits_cadence.run(self._refresh_limits)  # also checks the process is there
        if self._held and self._held_pid != os.getpid():
            self._close_held()  # forked: /proc/self, resolved at open, names the parent
        threads = self._thread_count()
        python_threads = threading.active_count() if self.inside else None
        fds = self._fd_count(due)
        if due:
            self._run("maps", self._refresh_maps)
            self._run("children", self._refresh_children)
        tasks: int | None = None
        if self.inside:
            sets = asyncio_task_sets()
            if sets:  # the count every tick (len of a set), the breakdown on its budget
                tasks = sum(len(each) for each in sets)
                if due or not self._tasks_read:
                    due = True  # the first breakdown: the cadence joins the plan
                    self._tasks_read = True
                    self._run("asyncio", self._refresh_tasks)
            elif sets is not None and "asyncio_tasks" not in self._notes:
                self._note("asyncio_tasks", "this Python's asyncio keeps its tasks out of reach")
        if due:
            self._plan_next_pass()
        shm = self._shm()
        if shm is not None and self._limits.get("shm") != shm[1]:
            self._limits["shm"] = shm[1]
            self._cached = None
        readings = (threads, python_threads, fds, tasks, None if shm is None else shm[0])
        self._quick, self._quick_key = self._quick_way(readings, shm)
        if self._cached is not None and readings == self._readings:
            return self._out  # nothing moved: the same samples
        self._readings = readings
        if self._cached is None:
            self._cached = self._slow_samples()
        self._out = (*self._tick_samples(readings), *self._cached)
        return self._out

    def _quick_way(
        self, readings: tuple[int | None, ...], shm: tuple[int, int] | None
    ) -> tuple[tuple[int, int, int] | None, tuple[int | None, ...] | None]:
        """The held descriptors ``_quick_readings`` reads, and what it must find there for
        this tick's samples to stand; (None, None) where it cannot stand in for ``_sample``."""
        held = self._held
        paths = (self._fd_dir, self._task_dir, self._shm_path)
        if not (self._fd_count_trusted and self._nlink_trusted and shm is not None) or any(
            path not in held for path in paths
        ):
            return None, None
        fds = (held[self._fd_dir], held[self._task_dir], held[self._shm_path])
        return fds, (*readings, shm[1])

    def _plan_next_pass(self) -> None:
        """The earliest time a cadence comes due: the asyncio one only once tasks were read
        (before, it has never run and would be due on every tick)."""
        cadences = [self._limits_cadence, self._cadences["maps"], self._cadences["children"]]
        if self._fd_count_trusted is not None or self._fds_listed is not None:
            cadences.append(self._cadences["fds"])
        if self._tasks_read:
            cadences.append(self._cadences["asyncio"])
        self._next_due = min(cadence.next_due() for cadence in cadences)

    def _tick_samples(
        self, readings: tuple[int | None, int | None, int | None, int | None, int | None]
    ) -> list[Sample]:
        """The every-tick readings' samples, in the order they have always come."""
        threads, python_threads, fds, tasks, shm = readings
        label = self._label
        out: list[Sample] = []
        usage: list[tuple[str, float]] = []
        if threads is not None:
            usage.append(("threads", threads))
            out.append(Sample("threads", float(threads), label("kind", "os")))
        if python_threads is not None:
            out.append(Sample("threads", float(python_threads), label("kind", "python")))
        if fds is not None:
            usage.append(("fds", fds))
        if tasks is not None:
            usage.append(("asyncio_tasks", tasks))
        if shm is not None:
            usage.append(("shm", shm))
            out.append(Sample("shm_bytes", float(shm)))
        for resource, value in usage:
            out.append(Sample("resource_usage", float(value), label("resource", resource)))
        return out

    def _slow_samples(self) -> list[Sample]:
        """What changes only with a pass or a limit: built once, repeated until then."""
        label = self._label
        out: list[Sample] = []
        if self._fd_kinds or self._fds_listed is not None:
            for kind in FD_KINDS:
                n = self._fd_kinds.get(kind, 0)
                out.append(Sample("open_fds", float(n), label("kind", kind)))
            for (kind, state), n in self._sockets.items():
                out.append(Sample("sockets", float(n), labels_of(type=kind, state=state)))
        if self._maps_count is not None:
            out.append(Sample("memory_maps", float(self._maps_count)))
            out.append(
                Sample("resource_usage", float(self._maps_count), label("resource", "memory_maps"))
            )
        if self._children is not None:
            for state, n in self._children.items():
                out.append(Sample("child_processes", float(n), label("state", state)))
            total = float(sum(self._children.values()))
            out.append(Sample("resource_usage", total, label("resource", "children")))
        for name, n in (self._tasks or {}).items():
            out.append(Sample("asyncio_tasks", float(n), label("coroutine", name)))
        for resource in RESOURCES:
            limit = self._limits.get(resource)
            if limit is not None:
                out.append(Sample("resource_limit", float(limit), label("resource", resource)))
        return out

    def _thread_count(self) -> int | None:
        """The kernel's thread count: the task directory's link count (2 + threads, one stat)
        where a reading of status's ``Threads:`` confirmed it, else ``Threads:`` itself."""
        if self._nlink_trusted:
            try:
                threads = self._fstat(self._task_dir).st_nlink - 2
                if threads <= 0:  # the process has ended: its held directory counts none
                    threads = os.stat(self._task_dir).st_nlink - 2
                return threads
            except FileNotFoundError as exc:
                raise ProbeUnavailable(f"process {self.pid} has exited", permanent=True) from exc
        try:
            return parse_threads(self._read_status())
        except ValueError:
            return None  # a fixture's status may lack it

    def _read_status(self) -> bytes:
        try:
            with open(self._status_path, "rb") as f:
                return f.read()
        except ProcessLookupError as exc:
            raise ProbeUnavailable(f"process {self.pid} has exited", permanent=True) from exc
        except FileNotFoundError as exc:
            raise ProbeUnavailable(f"no such process: {self.pid}", permanent=True) from exc
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProbeUnavailable(f"process {self.pid} has exited", permanent=True) from exc
            raise

    def _run(self, name: str, reading: Callable[[], None]) -> None:
        cadence = self._cadences[name]
        if cadence.due():
            cadence.run(reading)
            self._cached = None

    # -- fds and sockets ---------------------------------------------------------------

    def _fd_count(self, due: bool = True) -> int | None:
        """Every tick: st_size where the kernel gives the count, else the last listing's;
        the listing when ``due`` and its cadence says so."""
        if self._fd_count_trusted is not False:
            try:
                size = self._fstat(self._fd_dir).st_size
            except PermissionError:
                self._fd_denied()
                return None
            except FileNotFoundError:
                self._fd_hidden()
                return None
            if self._fd_count_trusted is None or (due and self._cadences["fds"].due()):
                self._cadences["fds"].run(lambda: self._list_fds(size))
                self._cached = None
            if self._fd_count_trusted:
                return size
        elif due and self._cadences["fds"].due():
            self._cadences["fds"].run(lambda: self._list_fds(None))
            self._cached = None
        return self._fds_listed

    def _fstat(self, path: str) -> os.stat_result:
        """``os.stat(path)`` of a /proc directory, through a descriptor held open on it."""
        try:
            return os.fstat(self._held_fd(path))
        except OSError:
            self._close_held()  # reopened next time: its answer is the path's again
            raise

    def _held_fd(self, path: str) -> int:
        """A descriptor held open on the directory ``path``, opened on first use."""
        fd = self._held.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._held[path] = fd
            self._held_pid = os.getpid()
        return fd

    def _close_held(self) -> None:
        self._quick = self._quick_key = None
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()

    def _fd_denied(self) -> None:
        self._notes.pop("fd links", None)  # the whole directory says more
        self._note(
            "fds",
            f"permission denied reading {self._fd_dir}: run as the process's user or root",
        )
        self._fd_kinds = {}
        self._sockets = {}
        self._fds_listed = None
        self._cached = None

    def _fd_hidden(self) -> None:
        self._notes.pop("fd links", None)  # the whole directory says more
        self._note("fds", f"{self._fd_dir} is not shown by this /proc (hidepid, or a sandbox)")
        self._fd_kinds = {}
        self._sockets = {}
        self._fds_listed = None
        self._cached = None

    def _list_fds(self, size: int | None) -> None:
        """The kinds, the socket inodes and the count of the open fds; and whether the
        directory's st_size (read just before, ``size``) is the count. Inside the process,
        one fstat per fd (its mode and inode: 1.3 µs for each here); outside, one readlink
        per fd (3.3 µs)."""
        try:
            dir_fd = os.open(self._fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            self._fd_denied()
            return
        except FileNotFoundError:
            self._fd_hidden()
            return
        unread = 0
        try:
            names = os.listdir(dir_fd)
            if self._own_fds:
                kinds, inodes = self._kinds_by_fstat(names, dir_fd)
            else:
                kinds, inodes, unread = self._kinds_by_readlink(names, dir_fd)
        finally:
            os.close(dir_fd)
        count = sum(kinds.values()) + unread
        self._fds_listed = count
        self._fd_kinds = dict(kinds)
        self._notes.pop("fds", None)
        self._notes.pop("fd links", None)
        if unread:
            self._note(
                "fd links",
                f"{unread} of the {count} fds in {self._fd_dir} cannot be read (permission "
                "denied: run as the process's user, or with ptrace access): counted, their "
                "kinds unknown",
            )
        if size is not None:
            # A fixture tree's (or an old kernel's) st_size is no count: trust it only when it
            # matches a listing (the count may move meanwhile in another process).
            self._fd_count_trusted = size > 0 and abs(size - count) <= max(2, count // 20)
            if not self._fd_count_trusted:
                self._note("fds", "this kernel gives no fd count in stat(); counted by listing")
        self._sockets = self._socket_states(inodes) if inodes else {}

    @staticmethod
    def _kinds_by_fstat(names: list[str], dir_fd: int) -> tuple[Counter[str], list[int]]:
        kinds: Counter[str] = Counter()
        inodes: list[int] = []
        for name in names:
            try:
                fd = int(name)
                if fd == dir_fd:
                    continue
                st = os.fstat(fd)
            except (OSError, ValueError):
                continue  # closed meanwhile
            kind = fd_kind_of_mode(st.st_mode)
            kinds[kind] += 1
            if kind == "socket":
                inodes.append(st.st_ino)
        return kinds, inodes

    def _kinds_by_readlink(
        self, names: list[str], dir_fd: int
    ) -> tuple[Counter[str], list[int], int]:
        """The kinds and socket inodes of the fds whose links can be read, and how many
        cannot: listed, so open, but their links are the process's to show (ptrace access:
        another user's process, a sandbox's init). Left out, they read as no fds at all."""
        kinds: Counter[str] = Counter()
        inodes: list[int] = []
        unread = 0
        for name in names:
            try:
                if self.inside and int(name) == dir_fd:
                    continue
                target = os.readlink(name, dir_fd=dir_fd)
            except PermissionError:
                unread += 1
                continue
            except (OSError, ValueError):
                continue  # closed meanwhile (listdir's own descriptor among them)
            kind = fd_kind(target)
            kinds[kind] += 1
            if kind == "socket":
                inode = socket_inode(target)
                if inode is not None:
                    inodes.append(inode)
        return kinds, inodes, unread

    def _socket_states(self, inodes: list[int]) -> dict[tuple[str, str], int]:
        wanted = set(inodes)
        found: Counter[tuple[str, str]] = Counter()
        for table in NET_TABLES:
            if not wanted:
                break
            try:
                with open(f"{self._dir}/net/{table}", "rb") as f:
                    text = f.read()
            except OSError:
                continue  # no IPv6, or a kernel without the table
            states = parse_net_unix(text) if table == "unix" else parse_net_inet(text)
            for inode in wanted & states.keys():
                found[(table, states[inode])] += 1
            wanted -= states.keys()
        return dict(found)

    # -- maps, children, asyncio tasks -------------------------------------------------

    def _refresh_maps(self) -> None:
        try:
            self._maps_count = self._maps.read().count(b"\n")
        except PermissionError:
            self._note("memory_maps", f"permission denied reading {self._dir}/maps")
            self._maps_count = None
        except OSError as exc:
            self._note("memory_maps", f"cannot read {self._dir}/maps ({exc.strerror})")
            self._maps_count = None

    def _refresh_children(self) -> None:
        """The children, each thread's (``task/TID/children``), and their states. A state
        costs a read of the child's stat: at most ``CHILD_STATS_PER_PASS`` are read a pass,
        the children never read first, then in turn, so that a pile of zombies does not make
        the pass (and so its spacing) grow with it; one not read yet counts as ``unknown``."""
        try:
            tids = os.listdir(f"{self._dir}/task")
        except OSError as exc:
            self._note("children", f"cannot list {self._dir}/task ({exc.strerror})")
            self._children = None
            return
        missing = 0
        pids: list[int] = []
        for tid in tids:
            try:
                with open(f"{self._dir}/task/{tid}/children", "rb") as f:
                    pids += parse_children(f.read())
            except FileNotFoundError:
                missing += 1  # the thread ended, or a kernel without CONFIG_PROC_CHILDREN
            except OSError:
                continue
        if tids and missing == len(tids):
            self._note("children", "this kernel has no /proc/PID/task/TID/children")
            self._children = None
            return
        known = self._child_states
        known = self._child_states = {pid: known.get(pid, "unknown") for pid in pids}
        unread = [pid for pid, state in known.items() if state == "unknown"]
        turn = self._child_turn
        rest = [pid for pid in known if known[pid] != "unknown"]
        rest = rest[turn % len(rest) :] + rest[: turn % len(rest)] if rest else []
        for pid in (unread + rest)[:CHILD_STATS_PER_PASS]:
            try:
                with open(f"{self._proc_root}/{pid}/stat", "rb") as f:
                    known[pid] = parse_stat_state(f.read())
            except (OSError, IndexError):
                known[pid] = "gone"  # reaped meanwhile: not counted
        self._child_turn = turn + max(CHILD_STATS_PER_PASS - len(unread), 0)
        states: Counter[str] = Counter({state: 0 for state in CHILD_STATES_SHOWN})
        states.update(state for state in known.values() if state != "gone")
        self._children = dict(states)

    def _refresh_tasks(self) -> None:
        sets = asyncio_task_sets() or []
        names: Counter[str] = Counter()
        for tasks in sets:
            for task in snapshot(tasks):
                try:
                    if not task.done():
                        names[coroutine_name(task)] += 1
                except Exception:
                    continue
        self._tasks = top_with_other(names, self._top)

    # -- shared memory and the limits ----------------------------------------------------

    def _shm(self) -> tuple[int, int] | None:
        try:
            st = os.fstatvfs(self._held_fd(self._shm_path))
        except OSError as exc:
            self._note("shm", f"cannot stat {self._shm_path} ({exc.strerror})")
            return None
        return shm_usage(st)

    def _refresh_limits(self) -> None:
        status = self._read_status()  # raises ProbeUnavailable for a process that is gone
        try:
            nlink = os.stat(self._task_dir).st_nlink
            self._nlink_trusted = nlink - 2 == parse_threads(status)
        except (OSError, ValueError):
            self._nlink_trusted = False
        self._cached = None
        limits = self._limits
        try:
            nofile = parse_limits_file(self._limits_file.read())
            if nofile is None:
                limits.pop("fds", None)
            else:
                limits["fds"] = nofile
        except (OSError, ValueError) as exc:
            self._note("fds limit", f"cannot read {self._dir}/limits ({exc})")
        threads = self._read_number(self._threads_max)
        for value in self._pids_limits():
            threads = value if threads is None else min(threads, value)
        if threads is None:
            limits.pop("threads", None)
        else:
            limits["threads"] = threads
        maps = self._read_number(self._max_map_count)
        if maps is None:
            limits.pop("memory_maps", None)
        else:
            limits["memory_maps"] = maps

    @staticmethod
    def _read_number(file: ProcFile) -> int | None:
        try:
            return int(file.read())
        except (OSError, ValueError):
            return None

    def _pids_limits(self) -> list[int]:
        """pids.max of the process's pids cgroup and each ancestor (limits are hierarchical)."""
        if self._pids_max is None:
            self._pids_max = []
            try:
                cgroup: MemoryCgroup | None = locate_cgroup(
                    read_text(f"{self._dir}/cgroup"),
                    read_text(f"{self._dir}/mountinfo"),
                    self._fs_root,
                    "pids",
                    ("pids.max", "pids.max"),
                )
            except OSError:
                cgroup = None
            if cgroup is not None:
                for directory in cgroup.directories:
                    path = os.path.join(directory, "pids.max")
                    if os.path.exists(path):
                        self._pids_max.append(ProcFile(path, 64))
        out = []
        for file in self._pids_max:
            try:
                value = parse_limit(file.read())
            except (OSError, ValueError):
                continue
            if value is not None:
                out.append(value)
        return out

    # -- life cycle ----------------------------------------------------------------------

    def reset_after_fork(self) -> None:
        for cadence in (*self._cadences.values(), self._limits_cadence):
            cadence.reset()
        self._next_due = -math.inf
        self._tasks_read = False
        self._fd_kinds, self._sockets = {}, {}
        self._children = self._tasks = None
        self._child_states, self._child_turn = {}, 0
        self._maps_count = self._fds_listed = None
        self._fd_count_trusted = None
        self._cached = None
        self._readings = ()
        self.close()

    def close(self) -> None:
        self._close_held()
        for file in (
            self._maps,
            self._limits_file,
            self._threads_max,
            self._max_map_count,
            *(self._pids_max or ()),
        ):
            file.close()
        self._pids_max = None
