"""Live resources, grouped by who holds them and where they were created.

The census (``diag.census``) lists the gc's objects once; the resource objects among them come
here: open files (``io.FileIO`` and the buffered and text wrappers around it: the fd counts once,
at the outermost wrapper, which is what the user's code holds), sockets with an fd, alive
threads, pending asyncio tasks, child processes (``subprocess.Popen`` not yet waited for, a
zombie when it exited) and ``SharedMemory`` segments still mapped. Each is one of the resources
the agent samples (``resource_usage{resource}``): ``fds``, ``threads``, ``asyncio_tasks``,
``children``, ``shm``.

Files, sockets, Popen and SharedMemory objects are grouped by the same holder search as memory
(``diag.owners.find_holders``: ``svc.POOL._conns[<str>]``); a thread by its name (``thread
'uploader'``: a running thread is its own root); a task by its coroutine and what it awaits
(``pending tasks of poll() awaiting Event.wait()``). A group's ``created_at`` is the most common
creation stack among its instances that have one: tracemalloc's allocation stack of the object
when it was made during a traced window, else the creation recorder's (``probes.creation``).

What the process has that no Python object accounts for is counted too: the fds in
``/proc/self/fd`` (an epoll, a library's own files: ``kind: "native"``, by what they point
to), the threads in ``/proc/self/task``, the children in ``/proc``.

Types are tested with ``issubclass(type(x), ...)``, never ``isinstance`` (see diag.owners).
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diag.owners import find_holders

if TYPE_CHECKING:
    from diag.census import Frame

#: The resources, as the agent's ``resource_usage{resource}`` series name them.
RESOURCES = ("fds", "threads", "asyncio_tasks", "children", "shm")
GROUPS_PER_RESOURCE = 10
#: A coroutine's await chain is followed this deep.
AWAIT_DEPTH = 16

_FILE_WRAPPERS = (io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper)
_TOOLING_ROOTS = ("diag", "probes", "reports")


@dataclass
class ResourceGroup:
    kind: str  # file, pipe, socket, native, thread, task, running, zombie, untracked, shm
    count: int
    holder_path: str | None
    created_at: list[Frame] = field(default_factory=list)  # innermost first
    #: How many of its instances had a creation stack (the recorder samples, tracemalloc sees
    #: only what a window made): ``created_at`` is the most common of those.
    stacks_seen: int = 0
    detail: str | None = None  # what a native fd points to: "pipe", "anon_inode:[eventpoll]"
    growth_per_second: float | None = None
    growth_per_request: float | None = None


@dataclass
class Resource:
    resource: str
    count: int
    limit: float | None
    growth_per_second: float | None
    seconds_to_exhaustion: float | None
    groups: list[ResourceGroup]
    growth_per_request: float | None = None

    def group_counts(self) -> dict[str, int]:
        return {group_key(g): g.count for g in self.groups}


def group_key(group: ResourceGroup) -> str:
    """A group's identity across a window's two censuses."""
    return f"{group.kind}\0{group.holder_path}\0{group.detail}"


def resource_types() -> tuple[type, ...]:
    """The resource classes of the modules the host has loaded (none is imported here)."""
    found: list[type] = [io.FileIO, *_FILE_WRAPPERS]
    for module, name in (
        ("socket", "socket"),
        ("threading", "Thread"),
        ("asyncio", "Task"),
        ("subprocess", "Popen"),
        ("multiprocessing.shared_memory", "SharedMemory"),
    ):
        kind: Any = getattr(sys.modules.get(module), name, None)
        if kind is not None and issubclass(type(kind), type):
            found.append(kind)
    return tuple(found)


def _is(obj: Any, module: str, name: str) -> bool:
    kind = getattr(sys.modules.get(module), name, None)
    return kind is not None and issubclass(type(obj), kind)


def _fd_links() -> dict[int, str] | None:
    """fd -> what it points to, for every fd of the process; None without /proc."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    links = {}
    for name in names:
        try:
            links[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except (OSError, ValueError):
            continue  # the directory's own fd, closed once listed
    return links


def _link_kind(link: str) -> str:
    if link.startswith(("socket:", "pipe:", "anon_inode:")):
        return link.split(":", 1)[0] if not link.startswith("anon_inode:") else link
    return "file"


def _thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def child_processes() -> dict[int, str] | None:
    """pid -> state letter ("Z": a zombie) of each child process; None without /proc."""
    me = os.getpid()
    found = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            found[pid] = fields[0].decode()
    return found


_DEFAULT_THREAD = re.compile(r"^Thread-\d+")


def thread_path(name: str) -> str:
    """``thread 'uploader'``; numbered default names as one: ``thread 'Thread-<n> (work)'``."""
    return f"thread {_DEFAULT_THREAD.sub('Thread-<n>', name)!r}"


def _code_name(obj: Any) -> str | None:
    code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
    qualname = getattr(obj, "__qualname__", None)
    if type(qualname) is str:
        return qualname
    return getattr(code, "co_name", None)


def task_path(task: Any) -> str:
    """``pending tasks of poll() awaiting Event.wait()``: the task's coroutine, and the innermost
    coroutine of its await chain (or the future it waits on)."""
    try:
        coro = task.get_coro()
    except Exception:
        coro = None
    outer = _code_name(coro) or type(coro).__name__
    inner = None
    current = coro
    for _ in range(AWAIT_DEPTH):
        awaited = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
        if awaited is None:
            break
        if not (hasattr(awaited, "cr_code") or hasattr(awaited, "gi_code")):
            inner = inner or type(awaited).__name__  # a Future: the coroutine above says more
            break
        inner = f"{_code_name(awaited)}()"
        current = awaited
    if inner is None:
        waiter = getattr(task, "_fut_waiter", None)
        inner = type(waiter).__name__ if waiter is not None else None
    return f"pending tasks of {outer}()" + (f" awaiting {inner}" if inner else "")


def _is_tooling_path(path: str) -> bool:
    return path.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0] in _TOOLING_ROOTS


Stack = tuple["Frame", ...]


class ResourceCensus:
    """The resource objects one census found, made into groups.

    ``found``: the gc's objects of ``resource_types()``. ``stacks``: id(object) -> creation
    stack known so far (tracemalloc's, read while it traced); ``created_at`` (the recorder's
    lookup) is asked for the rest."""

    def __init__(
        self,
        found: list[Any],
        stacks: Mapping[int, Stack],
        created_at: Callable[[Any], Stack | None] | None = None,
    ) -> None:
        self.stacks = dict(stacks)
        self.created_at = created_at
        self.held: list[Any] = []  # files, sockets, Popen, SharedMemory: holders searched
        self.kinds: dict[int, str] = {}  # id(held object) -> kind
        self.resource_of: dict[int, str] = {}  # id(held object) -> resource
        self.threads: list[Any] = []
        self.tasks: list[Any] = []
        self.accounted_fds: set[int] = set()
        self.tracked_children: set[int] = set()
        self._sort(found)

    def _sort(self, found: list[Any]) -> None:
        links = _fd_links()
        self.links = links
        inner: set[int] = set()
        for obj in found:
            if issubclass(type(obj), io.TextIOWrapper):
                inner.add(id(getattr(obj, "buffer", None)))
            elif issubclass(type(obj), _FILE_WRAPPERS):
                try:
                    inner.add(id(obj.raw))
                except ValueError:  # detached
                    continue
        children = None
        for obj in found:
            kind = type(obj)
            if issubclass(kind, (io.FileIO, *_FILE_WRAPPERS)):
                if id(obj) in inner:
                    continue
                fd = _fileno(obj)
                if fd is None or fd in self.accounted_fds:
                    continue
                self.accounted_fds.add(fd)
                link = links.get(fd, "") if links is not None else ""
                self._hold(obj, "pipe" if link.startswith("pipe:") else "file", "fds")
            elif _is(obj, "socket", "socket"):
                fd = _fileno(obj)
                if fd is None or fd < 0 or fd in self.accounted_fds:
                    continue
                self.accounted_fds.add(fd)
                self._hold(obj, "socket", "fds")
            elif _is(obj, "threading", "Thread"):
                if obj.is_alive():
                    self.threads.append(obj)
            elif _is(obj, "asyncio", "Task"):
                if not obj.done():
                    self.tasks.append(obj)
            elif _is(obj, "subprocess", "Popen"):
                if obj.returncode is None:
                    if children is None:
                        children = child_processes() or {}
                    self.tracked_children.add(obj.pid)
                    state = children.get(obj.pid)
                    self._hold(obj, "zombie" if state == "Z" else "running", "children")
            elif (
                _is(obj, "multiprocessing.shared_memory", "SharedMemory")
                and getattr(obj, "_mmap", None) is not None
            ):
                self._hold(obj, "shm", "shm")
        self.children = children if children is not None else child_processes()

    def _hold(self, obj: Any, kind: str, resource: str) -> None:
        self.held.append(obj)
        self.kinds[id(obj)] = kind
        self.resource_of[id(obj)] = resource

    def stack_of(self, obj: Any) -> Stack | None:
        stack = self.stacks.get(id(obj))
        if stack is None and issubclass(type(obj), (io.TextIOWrapper, *_FILE_WRAPPERS)):
            raw = _raw_of(obj)
            stack = self.stacks.get(id(raw)) if raw is not None else None
        if stack is None and self.created_at is not None:
            try:
                stack = self.created_at(obj)
            except Exception:
                stack = None
        return stack

    def resources(
        self,
        time_budget: float,
        reveal: bool,
        exclude: Sequence[Any],
        referrers: Sequence[Any] | None = None,
    ) -> tuple[list[Resource], bool]:
        """The resources with their groups (biggest first), and whether the holder search
        finished within ``time_budget``. ``referrers``: every tracked object that refers to
        one of them, where the caller's pass over the heap found them (``find_holders``)."""
        groups: dict[str, list[ResourceGroup]] = defaultdict(list)
        complete = True
        if self.held:
            ownership = find_holders(
                self.held, time_budget, reveal=reveal, exclude=(self, *exclude), referrers=referrers
            )
            complete = ownership.complete
            placed: set[int] = set()
            for holder in ownership.holders:
                by_kind: dict[tuple[str, str], list[Any]] = defaultdict(list)
                for obj in holder.objects:
                    placed.add(id(obj))
                    by_kind[(self.resource_of[id(obj)], self.kinds[id(obj)])].append(obj)
                if _is_tooling_path(holder.path):
                    continue  # diag's own control socket, history file: counted, not listed
                for (resource, kind), objects in by_kind.items():
                    groups[resource].append(self._group(kind, holder.path, objects))
            unplaced: dict[tuple[str, str], list[Any]] = defaultdict(list)
            for obj in self.held:
                if id(obj) not in placed:
                    unplaced[(self.resource_of[id(obj)], self.kinds[id(obj)])].append(obj)
            for (resource, kind), objects in unplaced.items():
                groups[resource].append(self._group(kind, None, objects))
        by_name: dict[str, list[Any]] = defaultdict(list)
        for thread in self.threads:
            name = str(getattr(thread, "name", "?"))
            if not name.startswith("diag-"):
                by_name[thread_path(name)].append(thread)
        for path, threads in by_name.items():
            groups["threads"].append(self._group("thread", path, threads))
        by_coroutine: dict[str, list[Any]] = defaultdict(list)
        for task in self.tasks:
            by_coroutine[task_path(task)].append(task)
        for path, tasks in by_coroutine.items():
            groups["asyncio_tasks"].append(self._group("task", path, tasks))
        counts = self._native(groups)
        out = []
        for resource in RESOURCES:
            found = sorted(groups.get(resource, []), key=lambda g: -g.count)
            count = counts.get(resource)
            if count is None:
                count = sum(g.count for g in found)
            if count == 0 and not found:
                continue
            out.append(Resource(resource, count, None, None, None, found))
        return out, complete

    def _native(self, groups: dict[str, list[ResourceGroup]]) -> dict[str, int]:
        """What the process has beyond its Python objects; the count of each resource."""
        counts: dict[str, int] = {}
        if self.links is not None:
            counts["fds"] = len(self.links)
            native = Counter(
                _link_kind(link) for fd, link in self.links.items() if fd not in self.accounted_fds
            )
            for detail, n in native.items():
                groups["fds"].append(ResourceGroup("native", n, None, detail=detail))
        threads = _thread_count()
        if threads is not None:
            counts["threads"] = threads
            untracked = threads - len(self.threads)
            if untracked > 0:
                groups["threads"].append(ResourceGroup("native", untracked, None))
        if self.children is not None:
            counts["children"] = len(self.children)
            others = [p for p in self.children if p not in self.tracked_children]
            if others:
                groups["children"].append(ResourceGroup("untracked", len(others), None))
        counts["asyncio_tasks"] = len(self.tasks)
        return counts

    def _group(self, kind: str, path: str | None, objects: list[Any]) -> ResourceGroup:
        stacks = Counter(s for s in map(self.stack_of, objects) if s)
        seen = sum(stacks.values())
        top = list(stacks.most_common(1)[0][0]) if stacks else []
        return ResourceGroup(kind, len(objects), path, top, seen)


def _raw_of(obj: Any) -> Any:
    try:
        inner = obj.buffer if issubclass(type(obj), io.TextIOWrapper) else obj
        return inner.raw
    except (AttributeError, ValueError):
        return None


def _fileno(obj: Any) -> int | None:
    try:
        if getattr(obj, "closed", False):
            return None
        fd = obj.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    return fd if type(fd) is int else None
