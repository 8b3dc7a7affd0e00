"""Leak checks for tests: run a body again and again, and fail when every further run leaves
something behind.

A leak is growth that repeats: each run of the same code keeps a little more alive. A body's
first runs fill caches (module-level dicts filled once, ``lru_cache``, compiled regexes,
logging set-up, lazy imports, torch's first-call set-up, thread pools started on demand) and
are not leaks, so the check runs the body ``warmup`` times unmeasured, then ``iterations``
times measuring after each run, after a full garbage collection:

- Python objects (the gc's count) and Python memory (tracemalloc, on during the checked runs
  only: what those runs allocated and still keep, diag's own bookkeeping left out);
- torch tensors (count and CPU bytes, by storage), CUDA memory allocated (only where torch is
  imported and CUDA initialised already: the check never initialises it), numpy arrays (count
  and bytes, from numpy's own tracemalloc domain);
- native memory: what glibc's malloc has handed out (``mallinfo2``) less what Python's
  allocator, numpy and torch account for, so a C extension's or a ctypes ``malloc`` that is
  never freed shows (Linux with glibc 2.33 or later; its tolerance is
  ``native_bytes_per_iteration``, 512 KiB a run by default: native caches keyed by shape fill
  by up to ~180 KiB a run);
- file descriptors, threads, pending asyncio tasks and child processes (zombies included).

A measure leaks when it grew after every checked run by more than its tolerance. Then one
more run is made with the heap's containers noted before it, and what it left behind is
attributed: the containers that existed before and gained entries, and the holders
(``diag.owners``) of the new objects that survived, each with its path from a root
(``mymod._REGISTRY[<str>]``) and where the survivors were allocated, in the user's code
(tracemalloc's stacks); grown resources come with their groups (``diag.resources_census``).

Deliberate growth is declared with the tolerances or with ``allow_growth(owner)``.

Use::

    with diag.check.no_leaks(iterations=3) as check:
        for _ in check:
            handle_request()

which raises ``diag.LeakError`` (its ``report`` is a ``LeakReport``) when the body leaks; the
pytest plugin (``diag.pytest_plugin``) runs test bodies through the same class.

Nothing here imports torch or numpy: they are looked up in ``sys.modules``.
"""

from __future__ import annotations

import array
import collections
import gc
import io
import itertools
import operator
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from diag import OWN_DIRS
from diag.census import Frame, frames_of, is_library, object_traceback
from diag.errors import LeakError, UsageError
from diag.malloc import in_use, mallinfo2
from diag.owners import find_holders, name_objects, shared_roots
from diag.resources_census import ResourceCensus, child_processes, group_key, resource_types

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_WARMUP",
    "RESOURCES",
    "Allowance",
    "Growth",
    "LeakCheck",
    "LeakError",
    "LeakOwner",
    "LeakReport",
    "allow_growth",
    "no_leaks",
]

DEFAULT_ITERATIONS = 3
DEFAULT_WARMUP = 2
#: The default tolerance for memory: the interpreter's own caches (the method cache's names,
#: codec and freelist blocks) keep filling for dozens of runs, ~100-300 B a run, before they
#: stop. Python objects (exact) have no such floor; ``bytes_per_iteration=0`` is strict.
DEFAULT_BYTES_PER_ITERATION = 1024
#: Memory allocated by library code (the standard library, installed packages) is judged
#: against at least this much per run: asyncio's and reprlib's names fill the interpreter's
#: method cache at ~1 KiB a run for hundreds of runs. What libraries keep for the caller
#: also shows as Python objects (exact) or in the caller's own allocations.
LIBRARY_BYTES_FLOOR = 8192
#: Native memory's tolerance per run, by default. On clean code malloc's per-thread caches and
#: the interpreter's raw allocations move by ~1-3 KiB a run, but native caches keyed by shape
#: fill by up to ~180 KiB a run where each run's shapes differ (oneDNN's kernels for each conv
#: or LSTM input size, numpy's cache of small data blocks, BLAS workspaces sized to the
#: largest problem yet) and stop only when full. ``native_bytes_per_iteration`` lowers it to
#: check a C extension of one's own (16 KiB stays clear of the noise).
NATIVE_BYTES_PER_ITERATION = 512 * 1024
#: pymalloc serves requests up to this size from its own arenas (mmapped, not malloc's); a
#: larger traced Python allocation is one of malloc's blocks.
PYMALLOC_MAX_REQUEST = 512
#: What ``resources=`` may name (besides Python objects and memory, always checked).
RESOURCES = (
    "tensors",
    "cuda",
    "arrays",
    "native",
    "fds",
    "threads",
    "asyncio_tasks",
    "children",
)
#: Threads started by the checked runs get this long, in all, to end before the last count.
SETTLE_SECONDS = 1.0
#: Levels of dicts the gc does not track that the holder search looks into for buffers.
UNTRACKED_DEPTH = 3
#: Frames kept per allocation stack while the checked runs trace.
TRACE_FRAMES = 32
#: numpy reports its data buffers to tracemalloc in this domain (numpy.lib.tracemalloc_domain).
NUMPY_DOMAIN = 389047
#: Owners listed in a report, at most.
OWNERS_SHOWN = 5
HOLDER_BUDGET = 2.0

#: measure -> (label, the resource that turns it on (None: always), unit)
MEASURES: dict[str, tuple[str, str | None, str]] = {
    "objects": ("Python objects", None, ""),
    "entries": ("container entries", None, ""),
    "bytes": ("Python memory", None, "B"),
    "library_bytes": ("Python memory (libraries)", None, "B"),
    "tensors": ("torch tensors", "tensors", ""),
    "tensor_bytes": ("tensor memory (CPU)", "tensors", "B"),
    "cuda_bytes": ("CUDA memory allocated", "cuda", "B"),
    "arrays": ("numpy arrays", "arrays", ""),
    "array_bytes": ("numpy memory", "arrays", "B"),
    "native_bytes": ("native memory (malloc, not Python's)", "native", "B"),
    "fds": ("file descriptors", "fds", ""),
    "threads": ("threads", "threads", ""),
    "asyncio_tasks": ("pending asyncio tasks", "asyncio_tasks", ""),
    "children": ("child processes", "children", ""),
}
_PYTHON = (
    "objects",
    "entries",
    "bytes",
    "library_bytes",
    "tensors",
    "tensor_bytes",
    "cuda_bytes",
    "arrays",
    "array_bytes",
)
#: The resource measures and the resource census's name for each.
_CENSUS_RESOURCE = {
    "fds": "fds",
    "threads": "threads",
    "asyncio_tasks": "asyncio_tasks",
    "children": "children",
}
_CONTAINERS: tuple[type, ...] = (dict, list, set, collections.deque)
#: What grows in place by bytes (writes, appends): found by its size. A StringIO's size does
#: not show its buffer.
_BUFFERS: tuple[type, ...] = (bytearray, io.BytesIO, array.array)
#: Measures that count things: a run that kept none leaves them exactly where they were.
_COUNTS = frozenset(m for m, (_, _, unit) in MEASURES.items() if not unit)
_HERE = os.path.abspath(__file__)


# -- what a report says ---------------------------------------------------------------------


@dataclass
class Growth:
    """One measure's values after the warm-up and after each checked run."""

    measure: str
    values: list[float]
    tolerance: float
    leaked: bool = False

    @property
    def per_iteration(self) -> float:
        """Growth per run after the first checked run: that one also replaces, with traced
        objects, the untraced ones the warm-up left (a cache entry refreshed), which is no
        growth."""
        values = self.values[1:] if len(self.values) > 2 else self.values
        runs = len(values) - 1
        return (values[-1] - values[0]) / runs if runs > 0 else 0.0

    @property
    def label(self) -> str:
        return MEASURES[self.measure][0]

    @property
    def unit(self) -> str:
        return MEASURES[self.measure][2]


@dataclass
class LeakOwner:
    """Who keeps what a run left behind: a path from a root, what it gained per run."""

    path: str
    kind: str  # the holder's type ("dict", "list") or a resource group's kind ("socket")
    per_iteration: float  # entries (or resources) gained per run
    bytes_per_iteration: int  # estimated
    what: str  # "Record", "torch.Tensor float32 (cpu)", "fds: socket"
    stack: list[Frame] = field(default_factory=list)  # innermost first, user's frames
    resource: str | None = None  # fds, threads...: a resource group, not a Python holder
    allowed: bool = False
    grew: bool = False  # a container that gained entries (not an object replaced in place)


@dataclass
class LeakReport:
    """What a check measured and, when something grew, who holds it."""

    name: str
    iterations: int
    warmup: int
    growth: list[Growth] = field(default_factory=list)
    owners: list[LeakOwner] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False

    @property
    def leaks(self) -> list[Growth]:
        """The measures that grew past their tolerance and no allow_growth covers."""
        return [g for g in self.growth if g.leaked]

    @property
    def leaked(self) -> bool:
        return bool(self.leaks)

    def format(self) -> str:
        return format_report(self)


# -- allow_growth -----------------------------------------------------------------------------


class Allowance:
    """A declaration that some owners may grow; a context manager that withdraws it on exit.
    Owners are objects (the cache itself) or paths (``"mymod._CACHE"`` also covers
    ``mymod._CACHE[<str>]`` and ``mymod._CACHE.items``)."""

    def __init__(self, owners: tuple[object, ...], reason: str) -> None:
        self.paths = tuple(o for o in owners if type(o) is str)
        self.objects = tuple(o for o in owners if type(o) is not str)
        self.reason = reason

    def covers(self, path: str, ident: int) -> bool:
        if any(id(o) == ident for o in self.objects):
            return True
        return any(path == p or path.startswith((p + ".", p + "[", p + " (")) for p in self.paths)

    def withdraw(self) -> None:
        if self in _ALLOWED:
            _ALLOWED.remove(self)

    def __enter__(self) -> Allowance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.withdraw()


_ALLOWED: list[Allowance] = []


def allow_growth(*owners: object, reason: str = "") -> Allowance:
    """Declare that ``owners`` grow on purpose (a cache without a bound, a log kept for the
    process's life): a leak check does not fail on what they hold. Each owner is the object
    (``allow_growth(mymod._CACHE)``) or its path as a report prints it
    (``allow_growth("mymod._CACHE")``). Lasts for the process, or for a ``with`` block."""
    if not owners:
        raise UsageError("allow_growth() needs the owner: the object or its path")
    allowance = Allowance(owners, reason)
    _ALLOWED.append(allowance)
    return allowance


def _allowed(path: str, ident: int) -> bool:
    return any(a.covers(path, ident) for a in _ALLOWED)


# -- measuring ------------------------------------------------------------------------------


def _count_dir(path: str) -> int | None:
    try:
        return len(os.listdir(path))
    except OSError:
        return None


def _children() -> int | None:
    """Child processes (zombies too) of this process, from /proc."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    found: set[str] = set()
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(f.read().split())
        except OSError:  # no children file (a kernel without it): each process's parent
            scanned = child_processes()
            return None if scanned is None else len(scanned)
    return len(found)


def _pending_tasks() -> int:
    tasks = sys.modules.get("asyncio.tasks")
    if tasks is None:
        return 0
    count = 0
    for attr in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        found = getattr(tasks, attr, None)
        if found is None:
            continue
        for _ in range(100):  # another thread's loop may change the set meanwhile
            try:
                members = list(found)
                break
            except RuntimeError:
                continue
        else:
            members = []
        count += sum(1 for task in members if not task.done())
    return count


def _root_file() -> str:
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
    return frame.f_code.co_filename


def _bytes_text(value: float) -> str:
    size = abs(value)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{value / scale:+.1f} {unit}"
    return f"{value:+.0f} B"


def _tensor_size(obj: Any) -> tuple[str, int, tuple[Any, ...]] | None:
    """(device, storage bytes, storage key) of a tensor."""
    try:
        storage = obj.untyped_storage()
        device = str(obj.device)
        size = int(storage.nbytes())
        return device, size, (device, int(storage.data_ptr()), size)
    except Exception:  # meta tensors, subclasses without storage
        return None


def _weight(obj: Any) -> int:
    """Bytes an object keeps, roughly: its own size and its untracked contents (strings,
    bytes, numbers); a tensor's storage, an array's buffer."""
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(type(obj), torch.Tensor):
        size = _tensor_size(obj)
        return sys.getsizeof(obj) + (size[1] if size else 0)
    numpy = sys.modules.get("numpy")
    if numpy is not None and issubclass(type(obj), numpy.ndarray):
        # An array that owns its data counts it in its own size; a view keeps its base's
        # buffer alive, which is what it holds (a small slice of a big array).
        base = obj
        while issubclass(type(base), numpy.ndarray) and base.base is not None:
            base = base.base
        if base is obj:
            return sys.getsizeof(obj)
        if issubclass(type(base), numpy.ndarray):
            return sys.getsizeof(obj) + sys.getsizeof(base)
        return sys.getsizeof(obj) + (int(getattr(base, "nbytes", 0)) or sys.getsizeof(base))
    try:
        total = sys.getsizeof(obj)
    except Exception:
        return 0
    for inner in gc.get_referents(obj):
        if not gc.is_tracked(inner) and type(inner) is not type:
            try:
                total += sys.getsizeof(inner)
            except Exception:
                continue
    return total


def _describe(obj: Any) -> str:
    kind = type(obj)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(kind, torch.Tensor):
        try:
            return f"torch.Tensor {str(obj.dtype).replace('torch.', '')} ({obj.device})"
        except Exception:
            return "torch.Tensor"
    numpy = sys.modules.get("numpy")
    if numpy is not None and issubclass(kind, numpy.ndarray):
        return f"numpy.ndarray {obj.dtype}"
    return name


class LeakCheck:
    """Runs a body ``warmup`` + ``iterations`` times (iterate it: ``for _ in check: body()``),
    measures after each checked run, and on leaving the ``with`` block raises ``LeakError``
    when something grew with every run. ``report`` holds what was measured."""

    def __init__(
        self,
        iterations: int = DEFAULT_ITERATIONS,
        warmup: int = DEFAULT_WARMUP,
        bytes_per_iteration: int = DEFAULT_BYTES_PER_ITERATION,
        objects_per_iteration: int = 0,
        resources: tuple[str, ...] | list[str] | str | None = None,
        current_thread_only: bool = False,
        name: str = "the checked code",
        settle_seconds: float = SETTLE_SECONDS,
        between_runs: Callable[[], None] | None = None,
        shared: Mapping[str, Any] | None = None,
        native_bytes_per_iteration: int = NATIVE_BYTES_PER_ITERATION,
    ) -> None:
        if type(iterations) is not int or iterations < 2:
            raise UsageError(f"iterations must be an int of at least 2, not {iterations!r}")
        if type(warmup) is not int or warmup < 0:
            raise UsageError(f"warmup must be an int of at least 0, not {warmup!r}")
        for value, what in (
            (bytes_per_iteration, "bytes_per_iteration"),
            (objects_per_iteration, "objects_per_iteration"),
            (native_bytes_per_iteration, "native_bytes_per_iteration"),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{what} must be a number of at least 0, not {value!r}")
        chosen: tuple[str, ...] = RESOURCES
        if resources is not None and resources != "all":
            chosen = (resources,) if isinstance(resources, str) else tuple(resources)
            unknown = [r for r in chosen if r not in RESOURCES]
            if unknown:
                raise UsageError(
                    f"unknown resources {unknown}: choose among {', '.join(RESOURCES)}"
                )
        self.iterations = iterations
        self.warmup = warmup
        self.bytes_per_iteration = float(bytes_per_iteration)
        self.native_bytes_per_iteration = float(native_bytes_per_iteration)
        self.objects_per_iteration = float(objects_per_iteration)
        self.resources = chosen
        self.current_thread_only = current_thread_only
        self.settle_seconds = settle_seconds
        self.between_runs = between_runs
        #: What the runs share, by the text a path from it starts with (a pytest test's
        #: fixtures, ``fixture NAME``, and its instance, ``self``: set up once): what grows in
        #: them is named from them, not from pytest's objects that hold them.
        self.shared = dict(shared or {})
        self.report = LeakReport(name, iterations, warmup)
        self._iterated = False
        self._started_tracing = False
        # malloc cannot tell threads apart: native memory is left out with the other threads'.
        self._mallinfo = None if current_thread_only else mallinfo2()
        self._measures = [
            m
            for m, (_, r, _) in MEASURES.items()
            if (r is None or r in chosen)
            and not (current_thread_only and m == "entries")
            and not (self._mallinfo is None and m == "native_bytes")
        ]
        self._series: dict[str, list[float]] = {}
        self._libraries: dict[str, bool] = {}
        self._ours: set[int] = set()
        self._lengths: dict[type, Callable[[Any], int] | None] = {}
        self._flat: list[dict[Any, Any]] = []  # the dicts the gc does not track
        self._untracked_parents: dict[int, Any] = {}  # id(buffer) -> the untracked dict
        self._ids0: set[int] = set()
        self._threads0: set[int] = set()
        self._root = ""
        self._cuda_ready = False
        self._t0 = 0.0

    # -- the context manager and the loop ----------------------------------------------------

    def __enter__(self) -> LeakCheck:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_tracing()
        if kind is not None:
            return  # the body failed: that is the error to see
        if not self._iterated:
            raise UsageError(
                "a leak check runs its body several times: loop over it "
                "(`for _ in check: body()`) or use check.call(body)"
            )
        if self.report.leaked:
            raise LeakError(self.report)

    def call(self, body: Callable[..., Any], *args: Any, **kwargs: Any) -> LeakReport:
        """Run ``body(*args, **kwargs)`` through the check; the report (not raised here)."""
        for _ in self:
            body(*args, **kwargs)
        return self.report

    def __iter__(self) -> Iterator[int]:
        self._iterated = True
        started = time.perf_counter()
        try:
            for run in range(self.warmup):
                yield run
                self._between()
            self._start()
            n = self.iterations
            for run in range(n):
                yield self.warmup + run
                self._between()
                if run == n - 1:
                    self._settle()
                self._point(run + 1)
            if self._judge(0, n + 1):
                # Grew overall but not after every run: what an earlier test left may be
                # freed meanwhile. A second window of runs decides.
                self.report.growth.clear()
                self.report.notes.append(f"undecided after {n} runs: {n} more runs checked")
                for run in range(n):
                    yield self.warmup + n + run
                    self._between()
                    if run == n - 1:
                        self._settle()
                    self._point(n + run + 1)
                self._judge(n - 1, 2 * n + 1, deciding=True)
                self.report.iterations = 2 * n
            if self.report.growth and any(g.leaked for g in self.report.growth):
                # A leak that skips runs (one object every second run) may skip the one
                # attribution run too: where a leaking count stood still in some run, two.
                skips = any(
                    g.leaked and any(b == a for a, b in itertools.pairwise(g.values[1:]))
                    for g in self.report.growth
                )
                yield from self._attribute(runs=2 if skips else 1)
            self.report.finished = True
        finally:
            self._stop_tracing()
            self._series.clear()
            self._ids0.clear()
            self._flat.clear()
            self.report.seconds = time.perf_counter() - started

    # -- measuring -----------------------------------------------------------------------

    def _between(self) -> None:
        if self.between_runs is not None:
            self.between_runs()

    def _start(self) -> None:
        points = 2 * self.iterations + 1  # room for a second window
        self._series = {m: [0.0] * points for m in self._measures}
        self._threads0 = {t.ident or 0 for t in threading.enumerate()}
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        try:
            self._cuda_ready = bool(cuda is not None and cuda.is_initialized())
        except Exception:
            self._cuda_ready = False
        if self.current_thread_only:
            self._root = _root_file()
            gc.collect()
            self._ids0 = {id(o) for o in gc.get_objects()}
        # What earlier code left may take several collections to go (finalizers that free
        # more, weakref callbacks): freed during the checked runs, it would hide growth.
        for _ in range(4):
            if not gc.collect():
                break
        if not tracemalloc.is_tracing():
            # The checked runs need sizes, not stacks: one frame (cheap), unless the threads
            # that allocated must be told apart by their outermost frame.
            depth = len(_stack_files()) + TRACE_FRAMES if self.current_thread_only else 1
            tracemalloc.start(depth)
            self._started_tracing = True
        report = self.report
        self._ours = {
            id(x)
            for x in (
                self._series,
                *self._series.values(),
                self._libraries,
                self._lengths,
                self._ids0,
                self._threads0,
                report.growth,
                report.owners,
                report.notes,
            )
        }
        self._ours.add(id(self._ours))
        # diag's own caches (a file's "is it a library" answers...) are flat dicts too.
        self._ours.update(
            id(value)
            for name, module in list(sys.modules.items())
            if name.split(".", 1)[0] in ("diag", "probes")
            for value in list(vars(module).values())
            if type(value) is dict
        )
        frozen = gc.get_freeze_count()
        if frozen:
            self.report.notes.append(
                f"gc.freeze() hid {frozen:,} objects from the gc, and so from this check: "
                "what they hold is not counted (gc.unfreeze() before checked tests)"
            )
        self._t0 = time.perf_counter()
        self._point(0)

    def _stop_tracing(self) -> None:
        if self._started_tracing:
            self._started_tracing = False
            tracemalloc.stop()

    def _settle(self) -> None:
        """Give threads the checked runs started a moment to end: a thread that outlives
        its test by a few milliseconds is not a leak."""
        if "threads" not in self.resources:
            return
        deadline = time.monotonic() + self.settle_seconds
        for thread in threading.enumerate():
            if (
                (thread.ident or 0) in self._threads0
                or thread is threading.current_thread()
                or thread.name.startswith("diag-")
            ):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            thread.join(left)

    def _point(self, k: int) -> None:
        series = self._series
        gc.collect()
        objects = gc.get_objects()
        if self.current_thread_only:
            root = self._root
            ids0 = self._ids0
            own = 0
            for obj in objects:
                if id(obj) not in ids0:
                    traceback = object_traceback(obj)
                    if traceback is None or _same_thread(traceback, root):
                        own += 1
            series["objects"][k] = own
        else:
            series["objects"][k] = len(objects)
        if "entries" in series:
            if k == 0:
                # The untracked dicts are looked for once, on the first point's object list.
                ours = self._ours
                self._flat = [d for i, d in _untracked_dicts(objects).items() if i not in ours]
                ours.add(id(self._flat))
            series["entries"][k] = self._entries(objects)
        if "tensors" in series:
            count, nbytes = self._tensors(objects)
            series["tensors"][k] = count
            series["tensor_bytes"][k] = nbytes
        del objects
        snapshot = tracemalloc.take_snapshot()
        # Of malloc's blocks, those tracemalloc sees: Python's larger allocations (diag's own
        # included: they are malloc's too) and numpy's data.
        accounted = 0
        if "native_bytes" in series:
            accounted = sum(
                trace.size
                for trace in snapshot.traces
                if trace.domain == NUMPY_DOMAIN
                or (trace.domain == 0 and trace.size > PYMALLOC_MAX_REQUEST)
            )
        snapshot = snapshot.filter_traces(
            [tracemalloc.Filter(False, _HERE), tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        python = library = arrays = array_bytes = 0
        root = self._root
        libraries = self._libraries
        for trace in snapshot.traces:
            if trace.domain == NUMPY_DOMAIN:
                arrays += 1
                array_bytes += trace.size
            elif trace.domain == 0:
                traceback = trace.traceback
                if root and not _same_thread(traceback, root):
                    continue
                file = traceback[-1].filename if len(traceback) else ""
                known = libraries.get(file)
                if known is None:
                    known = libraries[file] = is_library(file)
                if known:
                    library += trace.size
                else:
                    python += trace.size
        del snapshot
        series["bytes"][k] = python
        series["library_bytes"][k] = library
        if "arrays" in series:
            series["arrays"][k] = arrays
            series["array_bytes"][k] = array_bytes
        if "cuda_bytes" in series:
            series["cuda_bytes"][k] = self._cuda_allocated()
        if "native_bytes" in series and self._mallinfo is not None:
            accounted += tracemalloc.get_tracemalloc_memory()
            if "tensor_bytes" in series:
                accounted += int(series["tensor_bytes"][k])
            series["native_bytes"][k] = in_use(self._mallinfo()) - accounted
        if "fds" in series:
            series["fds"][k] = _count_dir("/proc/self/fd") or 0
        if "threads" in series:
            native = _count_dir("/proc/self/task")
            series["threads"][k] = native if native is not None else threading.active_count()
        if "asyncio_tasks" in series:
            series["asyncio_tasks"][k] = _pending_tasks()
        if "children" in series:
            series["children"][k] = _children() or 0

    def _entries(self, objects: list[Any]) -> int:
        """Entries of every dict, list, set and deque, their subclasses' too (a Counter, a
        registry class), counted by the base's own ``__len__`` (a class's may do anything):
        what a container gains by keeping untracked values (strings, numbers, flat dicts)
        shows here, exactly. The dicts the gc does not track count too: a dict of strings
        and numbers (request id -> status) is one, and ``gc.get_objects()`` never lists it.
        They are looked for once, as the checked runs start (a pass over every object's
        referents costs a heap with torch 70-90 ms): a flat dict that gains entries with each
        run is one of those; a new one replacing it with each run still shows in memory."""
        ours = self._ours
        ours.add(id(objects))
        lengths = self._lengths
        total = 0
        for obj in objects:
            kind = type(obj)
            length = lengths.get(kind, _UNSEEN)
            if length is _UNSEEN:
                length = lengths[kind] = _base_length(kind)
            if length is not None and id(obj) not in ours:
                total += length(obj)
        is_tracked = gc.is_tracked
        total += sum(len(flat) for flat in self._flat if not is_tracked(flat))
        ours.discard(id(objects))
        return total

    def _tensors(self, objects: list[Any]) -> tuple[int, int]:
        torch = sys.modules.get("torch")
        tensor = getattr(torch, "Tensor", None)
        if tensor is None:
            return 0, 0
        count = nbytes = 0
        seen: set[tuple[Any, ...]] = set()
        for obj in objects:
            if not issubclass(type(obj), tensor):
                continue
            count += 1
            size = _tensor_size(obj)
            if size is not None and size[0] == "cpu" and size[2] not in seen:
                seen.add(size[2])
                nbytes += size[1]
        return count, nbytes

    def _cuda_allocated(self) -> float:
        if not self._cuda_ready:
            return 0.0
        torch = sys.modules.get("torch")
        try:
            cuda = torch.cuda  # type: ignore[union-attr]
            return float(sum(cuda.memory_allocated(d) for d in range(cuda.device_count())))
        except Exception:
            return 0.0

    # -- judging -------------------------------------------------------------------------

    def _tolerance(self, measure: str) -> float:
        if measure in ("objects", "entries", "tensors", "arrays"):
            return self.objects_per_iteration
        if measure == "library_bytes":
            return max(self.bytes_per_iteration, LIBRARY_BYTES_FLOOR)
        if measure == "native_bytes":
            return self.native_bytes_per_iteration
        if measure in ("bytes", "tensor_bytes", "array_bytes", "cuda_bytes"):
            return self.bytes_per_iteration
        return 0.0

    def _judge(self, first: int, end: int, deciding: bool = False) -> bool:
        """Judge the points ``first:end``; whether a measure grew overall without growing
        after every run (undecided). ``deciding``: the second window of an undecided check,
        where a count that grew again and never fell is a leak even with runs that kept
        nothing (one object kept every second run): the first window grew too."""
        report = self.report
        undecided = False
        for measure in self._measures:
            values = list(self._series[measure][first:end])
            tolerance = self._tolerance(measure)
            growth = Growth(measure, values, tolerance)
            judged = values[1:] if len(values) > 2 else values
            deltas = [b - a for a, b in itertools.pairwise(judged)]
            counted = deciding and measure in _COUNTS
            growth.leaked = growth.per_iteration > tolerance and all(
                d >= 0 if counted else d > 0 for d in deltas
            )
            # Some run grew past the tolerance, the window did not shrink, yet not every run
            # grew: what an earlier test left may have been freed meanwhile, hiding growth.
            undecided = undecided or (
                not growth.leaked and any(d > tolerance for d in deltas) and judged[-1] >= judged[0]
            )
            report.growth.append(growth)
        return undecided

    # -- attributing ---------------------------------------------------------------------

    def _attribute(self, runs: int = 1) -> Iterator[int]:
        """One more run (or ``runs``), with the heap noted before: what it left, and who keeps it.
        Tracing restarts for that run with deep stacks (so an object with an allocation
        stack is one it made), and what reads the heap afterwards runs on a helper thread:
        with a shallow stack, its own traced allocations cost little."""
        own_tracing = self._started_tracing
        self._stop_tracing()
        kinds = resource_types()
        grown_resources = [
            _CENSUS_RESOURCE[g.measure]
            for g in self.report.growth
            if g.leaked and g.measure in _CENSUS_RESOURCE
        ]
        owners: dict[str, LeakOwner] = {}
        # The helper starts (and waits) before the heap is noted and before tracing starts:
        # its own start is neither growth nor traced.
        scan = _Scan(kinds, bool(grown_resources))
        go = threading.Event()
        helper = threading.Thread(target=scan.run, args=(go,), name="diag-leak-check")
        helper.daemon = True
        helper.start()
        gc.collect()
        objects = gc.get_objects()
        before: set[int] = set() if own_tracing else {id(o) for o in objects}
        ours = {id(scan.__dict__), *map(id, scan.__dict__.values()), id(self._untracked_parents)}
        containers = [o for o in objects if issubclass(type(o), _CONTAINERS) and id(o) not in ours]
        untracked = _untracked_of(objects, (dict, bytearray))
        dicts = [u for u in untracked.values() if type(u) is dict and id(u) not in ours]
        containers += dicts
        lengths = [len(c) for c in containers]
        buffers = [o for o in objects if issubclass(type(o), _BUFFERS) and id(o) not in ours]
        buffers += (u for u in untracked.values() if type(u) is bytearray)
        listed = {id(b) for b in buffers}
        buffers += _bytearrays_within(dicts, listed, self._untracked_parents)
        # ... and a fixture's value, which pytest keeps in a dict and a tuple the gc untracks.
        buffers += (v for v in self.shared.values() if type(v) is bytearray and id(v) not in listed)
        del untracked, listed, dicts
        sizes = [_buffer_size(b) for b in buffers]
        found = [o for o in objects if issubclass(type(o), kinds)] if grown_resources else []
        del objects
        exclude: tuple[Any, ...] = (before, containers, lengths, found, buffers, sizes)
        counts_before = self._resource_groups(found, {}, exclude) if grown_resources else {}
        found.clear()
        scan.before, scan.containers, scan.lengths = before, containers, lengths
        scan.buffers, scan.sizes = buffers, sizes
        try:
            if own_tracing:
                tracemalloc.start(TRACE_FRAMES)
                self._started_tracing = True
            for extra in range(runs):
                yield self.warmup + self.iterations + extra
                self._between()
            self._settle()
        finally:
            go.set()
            helper.join()
        if scan.error is None:
            scan.grown_containers()
        self._stop_tracing()
        unchanged = {id(c) for c, n in zip(containers, lengths, strict=True) if len(c) <= n}
        containers.clear()
        lengths.clear()
        buffers.clear()
        before.clear()
        if scan.error is not None:
            self.report.notes.append(f"the search for holders failed: {scan.error!r}")
            self._conclude([])
            return
        exclude = (scan, scan.__dict__, *scan.__dict__.values(), self._untracked_parents)
        with shared_roots(self.shared, self._untracked_parents):
            if grown_resources:
                self._resource_owners(
                    scan.found, scan.stacks, counts_before, grown_resources, owners, exclude
                )
            self._python_owners(
                scan.new, scan.new_ids, scan.grown, scan.tracebacks, unchanged, owners, exclude
            )
        scan.clear()
        self._untracked_parents.clear()
        for owner in owners.values():  # what the attribution runs gained, per run
            owner.per_iteration /= runs
            owner.bytes_per_iteration = round(owner.bytes_per_iteration / runs)
        self._conclude(list(owners.values()))

    def _resource_groups(
        self,
        found: list[Any],
        stacks: dict[int, tuple[Frame, ...]],
        exclude: tuple[Any, ...],
        keep: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, int]]:
        census = ResourceCensus(found, stacks)
        resources, _ = census.resources(HOLDER_BUDGET, False, (found, *exclude))
        counts = {}
        for resource in resources:
            counts[resource.resource] = resource.group_counts()
            if keep is not None:
                for group in resource.groups:
                    keep[f"{resource.resource}\0{group_key(group)}"] = group
        return counts

    def _resource_owners(
        self,
        found: list[Any],
        stacks: dict[int, tuple[Frame, ...]],
        counts_before: dict[str, dict[str, int]],
        grown_resources: list[str],
        owners: dict[str, LeakOwner],
        exclude: tuple[Any, ...],
    ) -> None:
        groups: dict[str, Any] = {}
        counts_after = self._resource_groups(found, stacks, exclude, groups)
        for resource in grown_resources:
            before = counts_before.get(resource, {})
            for key, count in counts_after.get(resource, {}).items():
                gained = count - before.get(key, 0)
                if gained <= 0:
                    continue
                group = groups[f"{resource}\0{key}"]
                path = group.holder_path or _unheld(resource, group.kind, group.detail)
                owners.setdefault(
                    f"{resource}:{path}",
                    LeakOwner(
                        path=path,
                        kind=group.kind,
                        per_iteration=gained,
                        bytes_per_iteration=0,
                        what=f"{MEASURES[resource][0]}: {group.detail or group.kind}",
                        stack=list(group.created_at),
                        resource=resource,
                        allowed=_allowed(path, 0),
                        grew=True,
                    ),
                )

    def _python_owners(
        self,
        new: list[Any],
        new_ids: set[int],
        grown: list[tuple[Any, int]],
        stacks: dict[int, tracemalloc.Traceback],
        unchanged: set[int],
        owners: dict[str, LeakOwner],
        exclude: tuple[Any, ...],
    ) -> None:
        # The boundary between the old heap and what the run left: old holders of new objects;
        # an old container as long as before replaced an entry (a cache refreshed), no growth.
        exclude = (*exclude, *grown)  # its pairs refer to the containers
        holders = find_holders(new, HOLDER_BUDGET, exclude=exclude).holders if new else []
        claimed: set[int] = set()
        grown_ids = {id(c) for c, _ in grown}
        for holder in holders:
            if holder.ident in new_ids or holder.ident in unchanged or _tooling(holder.path):
                continue
            held = list(holder.objects)
            kinds = Counter(_describe(o) for o in held)
            owner = LeakOwner(
                path=holder.path,
                kind=holder.kind,
                per_iteration=len(held),
                bytes_per_iteration=sum(_subtree_weight(o, new_ids) for o in held),
                what=", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.most_common(3)),
                stack=_common_stack(held, stacks),
                allowed=_allowed(holder.path, holder.ident),
                grew=holder.ident in grown_ids,
            )
            claimed.add(holder.ident)
            owners.setdefault(owner.path, owner)
        # Old containers that gained entries (untracked ones too: strings, numbers, arrays).
        pending = [(c, n) for c, n in grown if id(c) not in claimed]
        if not pending:
            return
        named, _ = name_objects(
            [c for c, _ in pending], HOLDER_BUDGET, exclude=(*exclude, pending, *pending)
        )
        for (container, gained), (path, _links) in zip(pending, named, strict=True):
            if not path or _tooling(path):
                continue
            if issubclass(type(container), _BUFFERS):
                owners.setdefault(
                    path,
                    LeakOwner(
                        path=path,
                        kind=type(container).__name__,
                        per_iteration=0.0,  # no entries: bytes
                        bytes_per_iteration=gained,
                        what="its buffer grew",
                        allowed=_allowed(path, id(container)),
                        grew=True,
                    ),
                )
                continue
            entries = _newest_entries(container, gained)
            kinds = Counter(_describe(o) for o in entries)
            owners.setdefault(
                path,
                LeakOwner(
                    path=path,
                    kind=type(container).__name__,
                    per_iteration=gained,
                    bytes_per_iteration=sum(_subtree_weight(o, new_ids) for o in entries),
                    what=", ".join(k for k, _ in kinds.most_common(3)),
                    stack=_common_stack(entries, stacks),
                    allowed=_allowed(path, id(container)),
                    grew=True,
                ),
            )

    def _conclude(self, owners: list[LeakOwner]) -> None:
        report = self.report
        # Resources first (they run out first), then Python owners by the bytes they gain.
        owners.sort(
            key=lambda o: (o.resource is None, not o.grew, -o.bytes_per_iteration, -o.per_iteration)
        )
        report.owners = owners
        python = [o for o in owners if o.resource is None]
        for growth in report.growth:
            if not growth.leaked:
                continue
            if growth.measure in _PYTHON:
                covered = python and all(o.allowed for o in python)
            else:
                mine = [o for o in owners if o.resource == growth.measure]
                covered = bool(mine) and all(o.allowed for o in mine)
            if covered:
                growth.leaked = False
                report.notes.append(f"{growth.label} grew in owners allow_growth() declares")
        shared = sorted(
            {root for o in python if not o.allowed for root in self.shared if _under(o.path, root)}
        )
        for root in shared:
            report.notes.append(
                f"{root} is set up once for all the runs, so what one run adds to it the next "
                "still sees. What the test itself puts there is the test's state "
                f'(diag.allow_growth("{root}") says so); what the code under test keeps there '
                "is that code's leak"
            )
        native = any(g.leaked and g.measure == "native_bytes" for g in report.growth)
        if native:
            report.notes.append(
                "native memory is what malloc handed out beyond what Python, numpy and torch "
                "account for: a C extension, a native library or ctypes keeps it. Its stacks "
                "are out of tracemalloc's sight: run the test under `memray run --native` "
                "(or heaptrack, or valgrind --leak-check=full) to see where it is allocated"
            )
        if report.leaked and not owners and not (native and len(report.leaks) == 1):
            report.notes.append(
                "no holder was found for what grew: it may be kept by C code, or freed and "
                "made again at a growing size"
            )


_UNSEEN: Any = object()


def _base_length(kind: type) -> Callable[[Any], int] | None:
    """The ``__len__`` of the container type ``kind`` derives from, or None."""
    for base in _CONTAINERS:
        if issubclass(kind, base):
            length: Callable[[Any], int] = getattr(base, "__len__")  # noqa: B009 (a type)
            return length
    return None


def _untracked_dicts(objects: list[Any]) -> dict[int, dict[Any, Any]]:
    """The plain dicts among ``objects``' referents that the gc does not track (it untracks
    a dict holding only atomic values), by id."""
    return _untracked_of(objects, (dict,))


def _untracked_of(objects: list[Any], kinds: tuple[type, ...]) -> dict[int, Any]:
    """The objects of exactly these types among ``objects``' referents that the gc does not
    track (a dict holding only atomic values, every bytearray), by id. Sifted in C: a heap's
    referents are a million objects, of which a few thousand dicts."""
    referents = gc.get_referents(*objects)
    chosen = frozenset(kinds)
    found = list(itertools.compress(referents, map(chosen.__contains__, map(type, referents))))
    del referents
    untracked = itertools.compress(found, map(operator.not_, map(gc.is_tracked, found)))
    return {id(o): o for o in untracked}


def _bytearrays_within(
    dicts: list[dict[Any, Any]], listed: set[int], parents: dict[int, Any]
) -> list[bytearray]:
    """The bytearrays (not in ``listed``, which gains them) that only dicts the gc does not
    track hold (session id -> PCM), down to ``UNTRACKED_DEPTH`` such dicts: no referent of a
    tracked object, and no pass over the gc's objects finds their parents, so each one's
    parent goes into ``parents`` for the path search."""
    found: list[bytearray] = []
    for _ in range(UNTRACKED_DEPTH):
        inner = []
        for holder in dicts:
            for value in list(dict.values(holder)):
                if type(value) is bytearray and id(value) not in listed:
                    listed.add(id(value))
                    found.append(value)
                    parents[id(value)] = holder
                elif type(value) is dict and not gc.is_tracked(value):
                    parents.setdefault(id(value), holder)
                    inner.append(value)
        dicts = inner
    return found


def _buffer_size(buffer: Any) -> int:
    """A buffer's bytes: a BytesIO's allocated buffer (its size moves in steps, 1/8 ahead),
    a bytearray's or an array's length."""
    if issubclass(type(buffer), array.array):
        return int(len(buffer) * buffer.itemsize)
    if issubclass(type(buffer), bytearray):
        return len(buffer)
    return sys.getsizeof(buffer)


class _Scan:
    """What the attribution run left: new objects with their allocation stacks, the old
    containers that gained entries, the resource objects. Runs while tracing is on."""

    def __init__(self, kinds: tuple[type, ...], resources: bool) -> None:
        self.before: set[int] = set()
        self.containers: list[Any] = []
        self.lengths: list[int] = []
        self.buffers: list[Any] = []
        self.sizes: list[int] = []
        self.kinds = kinds
        self.resources = resources
        self.new: list[Any] = []
        self.new_ids: set[int] = set()
        self.grown: list[tuple[Any, int]] = []
        self.found: list[Any] = []
        self.tracebacks: dict[int, tracemalloc.Traceback] = {}
        self.stacks: dict[int, tuple[Frame, ...]] = {}
        self.error: BaseException | None = None

    def run(self, go: threading.Event) -> None:
        go.wait()
        if not tracemalloc.is_tracing() and not self.before:
            return  # the attribution run failed: nothing to scan
        try:
            self._run()
        except Exception as exc:  # reported in the report, never raised into the test
            self.error = exc

    def _run(self) -> None:
        gc.collect()
        objects = gc.get_objects()
        ours = {id(self), id(objects), id(self.__dict__), *map(id, self.__dict__.values())}
        before = self.before
        managed: dict[type, bool] = {}
        ours.add(id(managed))
        for obj in objects:
            if before:
                if id(obj) in before:
                    continue
                traceback = object_traceback(obj)
            else:
                traceback = tracemalloc.get_object_traceback(obj)
                if traceback is None:
                    kind = type(obj)
                    has = managed.get(kind)
                    if has is None:
                        has = managed[kind] = bool(kind.__flags__ & _MANAGED_DICT)
                    if not has:
                        continue
                    traceback = object_traceback(obj)
                if traceback is None:
                    continue
            if id(obj) in ours or (traceback is not None and _made_by_diag(traceback)):
                continue
            self.new.append(obj)
            if traceback is not None and len(self.tracebacks) < 10_000:
                self.tracebacks[id(obj)] = traceback
        self.new_ids = {id(o) for o in self.new}
        if self.resources:
            self.found = [o for o in objects if issubclass(type(o), self.kinds)]
            for obj in self.found:
                if id(obj) in self.tracebacks:
                    self.stacks[id(obj)] = frames_of(self.tracebacks[id(obj)], True)
        del objects

    def grown_containers(self) -> None:
        """The old containers that gained entries (once the helper thread is gone: while it
        runs, threading's own registries hold it)."""
        for container, length in zip(self.containers, self.lengths, strict=True):
            if len(container) > length:
                self.grown.append((container, len(container) - length))
        # Buffers grow in bytes, not entries: what they gained is a size.
        for buffer, size in zip(self.buffers, self.sizes, strict=True):
            gained = _buffer_size(buffer) - size
            if gained > 0:
                self.grown.append((buffer, gained))
        for container, gained in self.grown:
            if issubclass(type(container), _BUFFERS):
                continue
            for entry in _newest_entries(container, gained):
                traceback = object_traceback(entry)
                if traceback is not None:
                    self.tracebacks[id(entry)] = traceback

    def clear(self) -> None:
        for value in (self.new, self.new_ids, self.grown, self.found, self.tracebacks):
            value.clear()


_MANAGED_DICT = 1 << 4


def _unheld(resource: str, kind: str, detail: str | None) -> str:
    if resource == "fds":
        return f"fds no Python object holds ({detail or kind})"
    if resource == "children":
        return "child processes no subprocess.Popen holds (os.fork, os.posix_spawn...)"
    if resource == "threads":
        return "threads started outside the threading module (native)"
    return f"{resource} ({kind})"


def _tooling(path: str) -> bool:
    root = path.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0]
    return root in ("diag", "probes", "tracemalloc", "_pytest", "pluggy", "pytest")


def _stack_files() -> list[str]:
    frame: Any = sys._getframe()
    files = []
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    return files


def _same_thread(traceback: tracemalloc.Traceback, root: str) -> bool:
    """Whether an allocation was made by the thread whose outermost frame is in ``root``
    (an allocation whose stack was cut short counts as the thread's)."""
    if not len(traceback):
        return True
    total = getattr(traceback, "total_nframe", None)
    if total is not None and total > len(traceback):
        return True
    return traceback[0].filename == root


def _newest_entries(container: Any, gained: int) -> list[Any]:
    count = min(gained, 16)
    if issubclass(type(container), dict):
        items = list(dict.items(container))[-count:]
        return [v for _, v in items]
    if issubclass(type(container), list):
        return list(container[-count:])
    return list(container)[:count]


def _subtree_weight(obj: Any, new_ids: set[int], budget: int = 200) -> int:
    """An object's weight plus that of the new objects it holds (a Record's dict, a list's
    items), at most ``budget`` objects."""
    total = 0
    stack = [obj]
    seen: set[int] = set()
    while stack and budget > 0:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        budget -= 1
        total += _weight(item)
        for inner in gc.get_referents(item):
            if id(inner) in new_ids and id(inner) not in seen:
                stack.append(inner)
    return total


def _common_stack(objects: list[Any], tracebacks: dict[int, tracemalloc.Traceback]) -> list[Frame]:
    """The most common allocation stack (the user's frames) among ``objects`` (or, for
    containers made by C code, among the objects they hold directly)."""
    found: Counter[tuple[tuple[str, int], ...]] = Counter()
    kept: dict[tuple[tuple[str, int], ...], tracemalloc.Traceback] = {}
    for obj in objects[:32]:
        traceback = tracebacks.get(id(obj))
        if traceback is None:
            traceback = next(
                (tracebacks[id(i)] for i in gc.get_referents(obj) if id(i) in tracebacks), None
            )
        if traceback is not None:
            key = tuple((f.filename, f.lineno) for f in traceback)
            found[key] += 1
            kept[key] = traceback
    if not found:
        return []
    return list(frames_of(kept[found.most_common(1)[0][0]], True))


_DIAG_DIRS = tuple(d + os.sep for d in OWN_DIRS)


def _made_by_diag(traceback: tracemalloc.Traceback) -> bool:
    """An allocation diag made (its innermost frame outside the libraries, and outside code
    made at run time such as a namedtuple's ``__new__`` in ``<string>``, is diag's), not the
    checked code (the test's own frames come first)."""
    for frame in reversed(traceback):  # innermost first
        if frame.filename.startswith(_DIAG_DIRS):
            return True
        if not frame.filename.startswith("<") and not is_library(frame.filename):
            return False
    return False


def _under(path: str, root: str) -> bool:
    """Whether ``path`` starts from ``root`` (``fixture journal.entries``, ``self[0]``)."""
    return path == root or path.startswith((f"{root}.", f"{root}[", f"{root} ", f"{root}<"))


# -- the text ---------------------------------------------------------------------------


def _where(file: str) -> str:
    try:
        relative = os.path.relpath(file)
    except ValueError:
        return file
    return file if relative.startswith("..") else relative


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        return _bytes_text(value)
    return f"{value:+.0f}" if float(value).is_integer() else f"{value:+.1f}"


_TOLERANCE_OPTION = {
    "objects": "objects_per_iteration",
    "entries": "objects_per_iteration",
    "tensors": "objects_per_iteration",
    "arrays": "objects_per_iteration",
    "bytes": "bytes_per_iteration",
    "library_bytes": "bytes_per_iteration",
    "tensor_bytes": "bytes_per_iteration",
    "array_bytes": "bytes_per_iteration",
    "cuda_bytes": "bytes_per_iteration",
    "native_bytes": "native_bytes_per_iteration",
}


def format_report(report: LeakReport) -> str:
    """The report as the pytest plugin and LeakError print it."""
    leaks = report.leaks
    lines = []
    if leaks:
        # After an undecided window the values are the deciding window's: say so.
        shown = len(leaks[0].values) - 1
        window = f"; values of the last {shown}" if report.iterations > shown else ""
        lines.append(
            f"{report.name} leaks: it keeps more after every run "
            f"({report.iterations} runs checked after {report.warmup} warm-up runs{window})"
        )
    else:
        lines.append(
            f"{report.name}: no leak in {report.iterations} runs after {report.warmup} warm-up"
        )
    if leaks:
        lines.append("")
        lines.append("grew per run:")
        for growth in leaks:
            option = _TOLERANCE_OPTION.get(growth.measure)
            tolerance = (
                f"tolerance {_amount(growth.tolerance, growth.unit).lstrip('+')} ({option})"
                if option
                else "tolerance 0"
            )
            values = ", ".join(
                _amount(v - growth.values[0], growth.unit) for v in growth.values[1:]
            )
            lines.append(
                f"  {growth.label:<24}{_amount(growth.per_iteration, growth.unit):>12}   "
                f"({values} after each run; {tolerance})"
            )
    if report.owners and leaks:
        lines.append("")
        lines.append("held by (first: the likeliest owner):")
        for number, owner in enumerate(report.owners[:OWNERS_SHOWN], 1):
            counted = owner.per_iteration
            amounts = [f"{counted:+.{0 if counted.is_integer() else 1}f}"] if counted else []
            if owner.bytes_per_iteration or not counted:
                amounts.append(_bytes_text(owner.bytes_per_iteration))
            gained = " per run, ".join(amounts) + " per run"
            allowed = "  [allow_growth]" if owner.allowed else ""
            lines.append(
                f"  {number}. {owner.path}  ({owner.kind}) {gained}: {owner.what}{allowed}"
            )
            if owner.stack:
                lines.append(
                    "       allocated at:" if owner.resource is None else "       created at:"
                )
                for frame in owner.stack[:6]:
                    lines.append(f"         {_where(frame.file)}:{frame.line} in {frame.function}")
        hidden = len(report.owners) - OWNERS_SHOWN
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
    for note in report.notes:
        lines.append(f"note: {note}")
    if leaks:
        lines.append("")
        options = sorted(
            {_TOLERANCE_OPTION[g.measure] for g in leaks if g.measure in _TOLERANCE_OPTION}
        )
        lines.append("if this growth is deliberate (a cache), say so:")
        # Every Python owner must be allowed for the growth to be: name them all.
        paths = _covering([o.path for o in report.owners if o.resource is None and not o.allowed])
        if paths:
            named = ", ".join(f'"{path}"' for path in paths[:OWNERS_SHOWN])
            lines.append(f"  diag.allow_growth({named})   (at import, or in a with block)")
        if options:
            suggested = []
            for option in options:
                worst = max(
                    g.per_iteration for g in leaks if _TOLERANCE_OPTION.get(g.measure) == option
                )
                suggested.append(f"{option}={int(worst * 2) + 1}")
            lines.append(f"  @pytest.mark.no_leaks({', '.join(suggested)})   (a tolerance per run)")
        if any(g.measure in ("objects", "entries") for g in leaks):
            lines.append(
                f"  @pytest.mark.no_leaks(warmup={2 * report.warmup + 2})   (a bounded cache "
                "that takes more runs to fill: an lru_cache with a maxsize, a deque with a maxlen)"
            )
        resources = sorted(
            {
                MEASURES[g.measure][1] or ""
                for g in leaks
                if g.measure in _CENSUS_RESOURCE or g.measure == "native_bytes"
            }
        )
        if resources:
            kept = [r for r in RESOURCES if r not in resources]
            not_checked = ", ".join(resources)
            lines.append(
                f"  @pytest.mark.no_leaks(resources={kept!r})   (not checking {not_checked})"
            )
    return "\n".join(lines)


def _covering(paths: list[str]) -> list[str]:
    """The fewest paths whose allowance covers ``paths``: an lru_cache's dict, ``f (its
    functools.lru_cache)``, and its wrapper ``f`` are both covered by ``f``."""
    covering: list[str] = []
    for path in sorted({p.split(" (", 1)[0] for p in paths}, key=len):
        if not any(path == c or path.startswith((c + ".", c + "[")) for c in covering):
            covering.append(path)
    order = {p.split(" (", 1)[0]: i for i, p in reversed(list(enumerate(paths)))}
    return sorted(covering, key=lambda p: order.get(p, len(paths)))


def no_leaks(
    iterations: int = DEFAULT_ITERATIONS,
    warmup: int = DEFAULT_WARMUP,
    bytes_per_iteration: int = DEFAULT_BYTES_PER_ITERATION,
    objects_per_iteration: int = 0,
    resources: tuple[str, ...] | list[str] | str | None = None,
    current_thread_only: bool = False,
    name: str = "the checked code",
    native_bytes_per_iteration: int = NATIVE_BYTES_PER_ITERATION,
) -> LeakCheck:
    """A leak check for unittest and scripts::

        with diag.check.no_leaks(iterations=5) as check:
            for _ in check:
                handle_request()

    The loop runs ``warmup + iterations`` times (once more when something grew, to find who
    holds it); leaving the block raises ``diag.LeakError`` with ``check.report`` when a
    measure grew after every checked run by more than its tolerance. ``resources``: which of
    ``RESOURCES`` to check besides Python objects and memory (default: all).
    ``current_thread_only``: Python objects and memory allocated by other threads do not count.
    ``native_bytes_per_iteration``: the tolerance for native memory (malloc's, beyond what
    Python, numpy and torch account for).
    """
    return LeakCheck(
        iterations=iterations,
        warmup=warmup,
        bytes_per_iteration=bytes_per_iteration,
        objects_per_iteration=objects_per_iteration,
        resources=resources,
        current_thread_only=current_thread_only,
        name=name,
        native_bytes_per_iteration=native_bytes_per_iteration,
    )
