"""What holds the memory: live tensors, arrays and big containers, grouped by holder.

A census walks the gc's objects once:

- torch tensors (CPU and CUDA) are counted by their storage, so views and tensors sharing a
  storage count once; numpy arrays by the array that owns the buffer;
- a tensor that autograd keeps a graph for (a forgotten ``no_grad``) also retains the tensors
  its graph saved for backward; those have no Python object gc could list, so they are reached
  through ``grad_fn`` and counted to the holder of the output;
- Python containers (dicts, lists, sets, deques) with many entries are measured by deep size
  (pympler, on a sample of entries), so a leak of plain Python objects is seen too.

``diag.owners`` then finds who holds them. Per holder the census reports the bytes it retains,
what it holds (type, dtype, device) and where those objects were allocated, when tracemalloc
was tracing (for a tensor that is where the tensor object was made, even though torch
allocates its bytes outside Python's allocator) or, on CUDA, from torch's allocation history
joined by storage address.

Nothing here imports torch or numpy: they are looked up in ``sys.modules``, as the host left them.
"""

from __future__ import annotations

import ast
import collections
import ctypes
import functools
import gc
import itertools
import os
import sys
import sysconfig
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from diag import OWN_DIRS
from diag.model import Clock
from diag.owners import Holder, Link, find_holders, name_objects
from diag.resources_census import (
    GROUPS_PER_RESOURCE,
    Resource,
    ResourceCensus,
    group_key,
    resource_types,
)

#: A Python container is looked at when it has this many entries, or when it grew by
#: GROWN_ENTRIES (and a quarter) during a window; entries are recorded from RECORDED_ENTRIES up.
BIG_CONTAINER_ENTRIES = 1000
GROWN_ENTRIES = 64
RECORDED_ENTRIES = 32
#: ...and reported when it retains at least this much.
MIN_CONTAINER_BYTES = 1 << 20
#: Entries sampled per container for its deep size and allocation stacks.
ENTRY_SAMPLE = 64
#: Autograd nodes visited per dump, at most: graphs can be long.
MAX_GRAPH_NODES = 100_000
STACKS_PER_OWNER = 3
FRAMES_PER_STACK = 8


@dataclass
class Content:
    type: str  # "torch.Tensor float32", "numpy.ndarray float64", "bytes"
    device: str
    count: int
    bytes: int


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str


@dataclass
class Stack:
    bytes: int
    count: int
    frames: list[Frame]


@dataclass
class Owner:
    path: str
    kind: str
    retained_bytes: int
    objects: int
    growth_bytes_per_second: float | None
    contents: list[Content]
    allocation_stacks: list[Stack] = field(default_factory=list)
    growth_bytes_per_request: float | None = None
    chain: list[Link] = field(default_factory=list)


@dataclass
class Site:
    """An allocation site that grew during a window (tracemalloc's view: Python's allocator)."""

    site: str
    bytes: int
    count: int


@dataclass
class Dump:
    pid: int
    taken_at: float
    pause_seconds: float
    complete: bool
    cause: dict[str, Any]
    owners: list[Owner]
    #: Set when the dump closes a traced window: its length, requests served, sites grown.
    window_seconds: float | None = None
    requests: int | None = None
    allocation_sites: list[Site] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Live resources (fds, threads, asyncio tasks, children, shared memory), growing first.
    resources: list[Resource] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- measuring ---------------------------------------------------------------------------------

_Measure = tuple[str, str, tuple[Any, ...], int]  # (kind, device, storage key, bytes)


def _measure_tensor(obj: Any) -> _Measure | None:
    try:
        storage = obj.untyped_storage()
        size = int(storage.nbytes())
        device = str(obj.device)
        key = (device, int(storage.data_ptr()), size)
    except Exception:  # meta tensors, tensor subclasses without storage
        return None
    dtype = str(obj.dtype).replace("torch.", "")
    return f"torch.Tensor {dtype}", device, key, size


def _measure_array(obj: Any) -> _Measure | None:
    if obj.base is not None:
        return None  # a view: the owning array counts the buffer
    return f"numpy.ndarray {obj.dtype}", "cpu", ("numpy", id(obj)), int(obj.nbytes)


_OTHER, _TENSOR, _CONTAINER, _RESOURCE = range(4)
#: Objects whose referents are listed by one C call: bounds the list that call returns.
_REFERENTS_CHUNK = 4096
#: Untracked containers nested in untracked containers, looked into this deep for arrays.
UNTRACKED_DEPTH = 3


def _arrays(objects: list[Any], ndarray: type) -> tuple[list[Any], dict[int, Any]]:
    """numpy arrays, which the gc does not track, so ``gc.get_objects()`` never lists them:
    found among what tracked objects refer to, a chunk of objects per C call (the referents of
    a million objects are never one list). A dict or list that holds only untracked objects (an
    int-keyed dict of arrays) is not tracked either, and ``gc.get_referrers`` cannot see it:
    such containers are looked into (a whole batch per C call, each alone only when the batch
    held an array), and the arrays inside come with them, id(array) -> container."""
    arrays: list[Any] = []
    parents: dict[int, Any] = {}
    is_tracked = gc.is_tracked
    wanted = {ndarray, dict, list}
    for start in range(0, len(objects), _REFERENTS_CHUNK):
        # One Python pass over the referents (millions): keep the few that may matter.
        kept = [
            r for r in gc.get_referents(*objects[start : start + _REFERENTS_CHUNK])
            if type(r) in wanted
        ]  # fmt: skip
        arrays.extend([r for r in kept if type(r) is ndarray])
        boxes = [r for r in kept if type(r) is not ndarray and not is_tracked(r)]
        del kept
        for _ in range(UNTRACKED_DEPTH):
            if not boxes:
                break
            inside = gc.get_referents(*boxes)
            if any(type(r) is ndarray for r in inside):
                for box in boxes:
                    for found in gc.get_referents(box):
                        if type(found) is ndarray:
                            arrays.append(found)
                            parents.setdefault(id(found), box)
            boxes = [r for r in inside if type(r) in (dict, list)]  # untracked: inside one
    return arrays, parents


def _classifier(torch: Any, resources: tuple[type, ...] = ()) -> Callable[[type], int]:
    """What a type is to the census, decided once per type: a heap has a million objects but
    a few thousand types, and ``issubclass`` against torch.Tensor is not cheap. (numpy arrays
    are never among the gc's objects: ``_arrays`` finds them.)"""
    known: dict[type, int] = {}

    def classify(kind: type) -> int:
        found = known.get(kind)
        if found is None:
            if torch is not None and issubclass(kind, torch.Tensor):
                found = _TENSOR
            elif issubclass(kind, _CONTAINER_TYPES):
                found = _CONTAINER
            elif resources and issubclass(kind, resources):
                found = _RESOURCE
            else:
                found = _OTHER
            known[kind] = found
        return found

    return classify


_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def _saved_names(node_type: type) -> tuple[str, ...]:
    names = _SAVED_NAMES.get(node_type)
    if names is None:
        names = _SAVED_NAMES[node_type] = tuple(
            n for n in dir(node_type) if n.startswith("_saved_")
        )
    return names


def saved_tensors(outputs: list[Any], torch: Any, budget: list[int]) -> Iterator[Any]:
    """Tensors the autograd graphs behind ``outputs`` saved for backward. ``budget`` is the
    number of graph nodes left to visit (shared by the whole dump)."""
    seen: set[int] = set()
    stack = [getattr(t, "grad_fn", None) for t in outputs]
    while stack and budget[0] > 0:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        budget[0] -= 1
        for name in _saved_names(type(node)):
            try:
                value = getattr(node, name)
            except Exception:  # freed by a backward pass, or not a tensor attribute
                continue
            values = value if type(value) in (tuple, list) else (value,)
            yield from (v for v in values if issubclass(type(v), torch.Tensor))
        try:
            stack.extend(next_node for next_node, _ in node.next_functions)
        except Exception:
            continue


# -- allocation stacks ------------------------------------------------------------------------

_HAVE_GC = 1 << 14
_MANAGED_DICT = 1 << 4


def _raw_traceback_reader() -> Any:
    """On 3.11, ``tracemalloc.get_object_traceback`` misses every object with a managed dict
    (torch tensors among them): it does not step over the two pointers stored before the gc
    header. The C function it wraps, given the right address, finds the block. 3.12 fixed it."""
    if sys.version_info[:2] != (3, 11):
        return None
    try:
        reader = ctypes.pythonapi._PyTraceMalloc_GetTraceback
    except AttributeError:
        return None
    reader.restype = ctypes.py_object
    reader.argtypes = [ctypes.c_uint, ctypes.c_size_t]
    return reader


_READ_RAW = _raw_traceback_reader()
_POINTER = ctypes.sizeof(ctypes.c_void_p)


def object_traceback(obj: Any) -> tracemalloc.Traceback | None:
    """Where ``obj`` was allocated, if tracemalloc was tracing then."""
    traceback = tracemalloc.get_object_traceback(obj)
    flags = type(obj).__flags__
    if traceback is not None or _READ_RAW is None or not flags & _MANAGED_DICT:
        return traceback
    header = (2 * _POINTER if flags & _HAVE_GC else 0) + 2 * _POINTER
    raw = _READ_RAW(0, id(obj) - header)
    return tracemalloc.Traceback(raw) if raw else None


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(p + os.sep for p in (*found, *OWN_DIRS) if p)


_LIBRARY = _library_prefixes()


def is_library(path: str) -> bool:
    """Frames of the standard library, installed packages (torch...) and diag itself."""
    return path.startswith(_LIBRARY) or path.startswith("<frozen") or "site-packages" in path


def frames_of(traceback: tracemalloc.Traceback, user_only: bool) -> tuple[Frame, ...]:
    """Innermost first, the user's frames only unless none are. Function names are read from
    the source (tracemalloc keeps file and line only), for the frames kept."""
    return _frames_of(tuple((f.filename, f.lineno) for f in reversed(traceback)), user_only)


@functools.lru_cache(maxsize=4096)
def _frames_of(places: tuple[tuple[str, int], ...], user_only: bool) -> tuple[Frame, ...]:
    if user_only:
        places = tuple(p for p in places if not is_library(p[0])) or places
    return tuple(
        Frame(file, line, function_at(file, line)) for file, line in places[:FRAMES_PER_STACK]
    )


def cuda_block_stacks(snapshot: Mapping[str, Any], user_only: bool) -> dict[int, tuple[Frame, ...]]:
    """Block address -> allocation stack, from ``torch.cuda.memory._snapshot()`` taken while
    ``_record_memory_history(stacks="python")`` was on. Frames there are innermost first."""
    stacks: dict[int, tuple[Frame, ...]] = {}
    for segment in snapshot.get("segments", ()):
        for block in segment.get("blocks", ()):
            if block.get("state") != "active_allocated" or not block.get("frames"):
                continue
            frames = [
                Frame(str(f.get("filename", "?")), int(f.get("line", 0)), str(f.get("name", "?")))
                for f in block["frames"]
            ]
            if user_only:
                frames = [f for f in frames if not is_library(f.file)] or frames
            stacks[int(block["address"])] = tuple(frames[:FRAMES_PER_STACK])
    return stacks


# -- the census -------------------------------------------------------------------------------


@dataclass
class Baseline:
    """What a window's first census saw, for the growth its last one reports."""

    t: float
    retained: dict[str, int]  # owner path -> bytes retained
    entries: dict[int, int]  # id of a container with GROWN_ENTRIES or more -> its entries
    requests: int
    resources: dict[str, int] = field(default_factory=dict)  # resource -> count
    #: resource -> group key -> count
    resource_groups: dict[str, dict[str, int]] = field(default_factory=dict)


_CONTAINER_TYPES = (dict, list, set, collections.deque)


def _newest(entries: Any, container: Any) -> Iterator[Any]:
    """Newest first where the container keeps an order: what grew is at the end."""
    if type(container) is set:
        return iter(entries)
    return reversed(entries)  # type: ignore[no-any-return]


def _entries_of(container: Any) -> list[Any]:
    if issubclass(type(container), dict):
        pairs = itertools.islice(_newest(dict.items(container), container), ENTRY_SAMPLE)
        return [x for kv in pairs for x in kv]
    return list(itertools.islice(_newest(container, container), ENTRY_SAMPLE))


def _sample_values(container: Any) -> list[Any]:
    if issubclass(type(container), dict):
        return list(itertools.islice(_newest(dict.values(container), container), ENTRY_SAMPLE))
    return list(itertools.islice(_newest(container, container), ENTRY_SAMPLE))


def _deep_size(container: Any) -> int:
    """The container plus its entries, the entries estimated from a sample (pympler)."""
    from pympler import asizeof

    deep_size: Callable[..., int] = asizeof.asizeof
    entries = len(container)
    sample = _entries_of(container)
    if not sample:
        return sys.getsizeof(container)
    per_entry = deep_size(*sample, limit=4) / max(min(entries, ENTRY_SAMPLE), 1)
    return int(sys.getsizeof(container) + per_entry * entries)


def _namespaces() -> set[int]:
    """Module globals and class dicts are roots and code, not data containers."""
    found = {id(vars(m)) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
    found.add(id(sys.modules))
    return found


class Census:
    """One walk of the heap: tensors and arrays by storage, big containers, then holders.
    ``monotonic`` times the walk against ``time_budget``."""

    def __init__(
        self,
        *,
        time_budget: float,
        user_frames_only: bool = True,
        reveal: bool = False,
        cuda_stacks: Mapping[int, tuple[Frame, ...]] | None = None,
        entries_before: Mapping[int, int] | None = None,
        created_at: Callable[[Any], tuple[tuple[str, int], ...] | None] | None = None,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self.created_at = created_at
        self.resources: list[Resource] = []
        self.started = monotonic()
        self.deadline = self.started + time_budget
        self.user_only = user_frames_only
        self.reveal = reveal
        self.cuda_stacks = cuda_stacks or {}
        self.entries_before = entries_before
        self.tracing = tracemalloc.is_tracing()
        self.complete = True
        self.entries: dict[int, int] = {}  # for the next window's baseline
        self.stacks: dict[int, tuple[Frame, ...]] = {}  # id(object) -> where it was allocated

    def run(self, on_collected: Callable[[], None] | None = None) -> list[Owner]:
        """Walk the heap. ``on_collected`` runs once every object's allocation stack is read
        and before the holder search: a window stops tracemalloc there, so the search, which
        allocates an int per id(), runs at full speed."""
        torch = sys.modules.get("torch")
        numpy = sys.modules.get("numpy")
        measured: dict[int, _Measure] = {}
        targets: list[Any] = []
        containers: list[Any] = []
        skip = _namespaces()
        classify = _classifier(torch, resource_types())
        found: list[Any] = []  # resource objects: files, sockets, threads, tasks...
        objects = gc.get_objects()
        for obj in objects:
            what = classify(type(obj))
            if what == _OTHER:
                continue
            if what == _RESOURCE:
                found.append(obj)
                continue
            if what == _CONTAINER:
                entries = len(obj)
                if entries >= RECORDED_ENTRIES and id(obj) not in skip:
                    self.entries[id(obj)] = entries
                    if entries >= BIG_CONTAINER_ENTRIES or self._grew(obj, entries):
                        containers.append(obj)
                continue
            info = _measure_tensor(obj)
            if info is not None:
                measured[id(obj)] = info
                targets.append(obj)
        parents: dict[int, Any] = {}
        if numpy is not None:
            arrays, parents = _arrays(objects, numpy.ndarray)
            for array in arrays:
                if id(array) not in measured:
                    info = _measure_array(array)
                    if info is not None:
                        measured[id(array)] = info
                        targets.append(array)
            del arrays
        del objects
        # Tracebacks are read while tracemalloc still has them; they are turned into frames
        # after on_collected, which may stop tracing: that work need not be traced.
        tracebacks: list[tuple[int, tracemalloc.Traceback]] = []
        for obj in targets:
            _, device, key, _ = measured[id(obj)]
            stack = self.cuda_stacks.get(key[1]) if device.startswith("cuda") else None
            if stack is not None:
                self.stacks[id(obj)] = stack
            elif self.tracing:
                traceback = object_traceback(obj)
                if traceback is not None:
                    tracebacks.append((id(obj), traceback))
        if self.tracing:
            for container in containers:
                for value in _sample_values(container):
                    traceback = object_traceback(value)
                    if traceback is not None:
                        tracebacks.append((id(value), traceback))
            for obj in found:  # where each resource was created, if during the window
                traceback = object_traceback(obj)
                if traceback is not None:
                    tracebacks.append((id(obj), traceback))
        if on_collected is not None:
            on_collected()
        for ident, traceback in tracebacks:
            self.stacks[ident] = frames_of(traceback, self.user_only)
        del tracebacks
        ownership = find_holders(
            targets,
            self._left(),
            reveal=self.reveal,
            exclude=(containers, parents),
            parents=parents,
        )
        self.complete = ownership.complete
        del targets
        counted = {measured[id(o)][2] for h in ownership.holders for o in h.objects}
        graph_budget = [MAX_GRAPH_NODES]
        owners = [
            self._tensor_owner(h, measured, counted, torch, graph_budget) for h in ownership.holders
        ]
        holding_tensors = {h.ident for h in ownership.holders}
        owners.extend(self._container_owners(containers, holding_tensors))
        containers.clear()
        self._resources(found, exclude=(parents,))
        return owners

    def _resources(self, found: list[Any], exclude: tuple[Any, ...]) -> None:
        """Live resources grouped by holder and creation stack (diag.resources_census)."""
        recorded = self.created_at
        user_only = self.user_only

        def created_at(obj: Any) -> tuple[Frame, ...] | None:
            places = recorded(obj) if recorded is not None else None
            return _frames_of(places, user_only) if places else None

        census = ResourceCensus(found, self.stacks, created_at)
        found.clear()
        self.resources, complete = census.resources(self._left(), self.reveal, exclude)
        self.complete = self.complete and complete

    def _left(self) -> float:
        return max(self.deadline - self._monotonic(), 0.1)

    def _grew(self, container: Any, entries: int) -> bool:
        if self.entries_before is None:
            return False
        grown = entries - self.entries_before.get(id(container), 0)
        return grown >= GROWN_ENTRIES and grown >= entries // 4

    def _tensor_owner(
        self,
        holder: Holder,
        measured: dict[int, _Measure],
        counted: set[tuple[Any, ...]],
        torch: Any,
        graph_budget: list[int],
    ) -> Owner:
        seen: set[tuple[Any, ...]] = set()
        contents: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        stacks: dict[tuple[Frame, ...], list[int]] = defaultdict(lambda: [0, 0])
        retained = 0
        with_graph = []
        for obj in holder.objects:
            kind_of, device, key, size = measured[id(obj)]
            size = 0 if key in seen else size  # shared storages and views count once
            seen.add(key)
            retained += size
            entry = contents[(kind_of, device)]
            entry[0] += 1
            entry[1] += size
            stack = self.stacks.get(id(obj))
            if stack is not None:
                stacks[stack][0] += size
                stacks[stack][1] += 1
            if torch is not None and getattr(obj, "grad_fn", None) is not None:
                with_graph.append(obj)
        if with_graph:
            for saved in saved_tensors(with_graph, torch, graph_budget):
                info = _measure_tensor(saved)  # saved_tensors yields tensors only
                if info is None or info[2] in counted or info[2] in seen:
                    continue  # a parameter or another holder's tensor: not this graph's
                seen.add(info[2])
                retained += info[3]
                entry = contents[(f"{info[0]} (saved by autograd)", info[1])]
                entry[0] += 1
                entry[1] += info[3]
        return Owner(
            path=holder.path,
            kind=holder.kind,
            retained_bytes=retained,
            objects=holder.count,
            growth_bytes_per_second=None,
            contents=_contents(contents),
            allocation_stacks=_stacks(stacks),
            chain=holder.chain,
        )

    def _container_owners(self, containers: list[Any], holding_tensors: set[int]) -> list[Owner]:
        """Big Python containers that hold no tensors: deep size, contents, stacks, path."""
        # Parallel lists, no tuples: a tuple holding a container would be named its holder.
        chosen: list[Any] = []
        sizes: list[int] = []
        for container in containers:
            if id(container) in holding_tensors:
                continue
            if self._monotonic() > self.deadline:
                self.complete = False  # the rest are not weighed
                break
            retained = _deep_size(container)
            if retained >= MIN_CONTAINER_BYTES or self._grew(container, len(container)):
                chosen.append(container)
                sizes.append(retained)
        names, in_time = name_objects(
            chosen, self._left(), reveal=self.reveal, exclude=(containers,)
        )
        self.complete = self.complete and in_time
        owners = []
        for container, retained, (path, chain) in zip(chosen, sizes, names, strict=True):
            if path.startswith("<unreachable") or _is_tooling(path):
                continue  # garbage to be, or the search's own
            if _in_library(path) and not self._grew(container, len(container)):
                continue  # torch's op tables and the like: big, but nobody's leak
            entries = len(container)
            values = _sample_values(container)
            per_value = retained / max(entries, 1)
            scale = entries / max(len(values), 1)
            # Counts of the sampled values, scaled to the whole container below.
            by_type: dict[str, int] = defaultdict(int)
            by_stack: dict[tuple[Frame, ...], int] = defaultdict(int)
            for value in values:
                by_type[_type_name(value)] += 1
                stack = self.stacks.get(id(value))
                if stack is not None:
                    by_stack[stack] += 1
            contents = {
                (name, "cpu"): [round(n * scale), round(n * scale * per_value)]
                for name, n in by_type.items()
            }
            stacks = {
                s: [round(n * scale * per_value), round(n * scale)] for s, n in by_stack.items()
            }
            owners.append(
                Owner(
                    path=path,
                    kind=type(container).__name__,
                    retained_bytes=retained,
                    objects=entries,
                    growth_bytes_per_second=None,
                    contents=_contents(contents),
                    allocation_stacks=_stacks(stacks),
                    chain=chain,
                )
            )
        return owners


_TOOLING = ("diag", "probes", "reports", "pympler", "objgraph", "tracemalloc")


def _root_module(path: str) -> str:
    return path.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0]


def _is_tooling(path: str) -> bool:
    """Containers of diag itself and of the tools it uses while it looks."""
    return _root_module(path) in _TOOLING


def _in_library(path: str) -> bool:
    """A path rooted in an installed package or the standard library."""
    name = path.split(" ", 1)[0]
    module = None
    while name and module is None:  # the longest module name the path starts with
        module = sys.modules.get(name)
        name = name.rpartition(".")[0]
    filename = getattr(module, "__file__", None)
    return module is not None and (filename is None or is_library(str(filename)))


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def _contents(contents: Mapping[tuple[str, str], list[int]]) -> list[Content]:
    return [
        Content(kind, device, count, size)
        for (kind, device), (count, size) in sorted(contents.items(), key=lambda kv: -kv[1][1])
    ]


def _stacks(stacks: Mapping[tuple[Frame, ...], list[int]]) -> list[Stack]:
    ranked = sorted(stacks.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
    return [Stack(size, count, list(frames)) for frames, (size, count) in ranked[:STACKS_PER_OWNER]]


def take_dump(
    top: int = 10,
    time_budget: float = 10.0,
    user_frames_only: bool = True,
    reveal: bool = False,
    cuda_stacks: Mapping[int, tuple[Frame, ...]] | None = None,
    baseline: Baseline | None = None,
    requests: int | None = None,
    on_collected: Callable[[], None] | None = None,
    clock: Clock = time.time,
    monotonic: Clock = time.monotonic,
    created_at: Callable[[Any], tuple[tuple[str, int], ...] | None] | None = None,
) -> tuple[Dump, Baseline]:
    """Who holds the process's memory, biggest first; with a ``baseline`` (a window's start)
    each owner's growth since then. Also returns this census as the next window's baseline.

    ``clock`` is wall time: the dump's ``taken_at`` and the baseline's start, so a window's
    length is measured on it (give both censuses of a window the same clock). ``monotonic``
    times the pause against ``time_budget``. ``created_at``: where a resource object was created
    (file and line, innermost first), as the creation recorder saw it."""
    census = Census(
        time_budget=time_budget,
        user_frames_only=user_frames_only,
        reveal=reveal,
        cuda_stacks=cuda_stacks,
        entries_before=baseline.entries if baseline is not None else None,
        created_at=created_at,
        monotonic=monotonic,
    )
    # The census holds the GIL from start to end: the host's threads wait (the pause we
    # report) instead of changing the heap under the walk, and the walk ends sooner.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(max(time_budget, switch))
    try:
        owners = census.run(on_collected)
    finally:
        sys.setswitchinterval(switch)
        # Walking running frames leaves reference cycles through frame objects, and a dead
        # frame keeps its locals (every object the census listed) alive until the next
        # collection. Collect the young generations now: only what the census created.
        gc.collect(1)
    now = clock()
    dump = Dump(
        pid=os.getpid(),
        taken_at=now,
        pause_seconds=monotonic() - census.started,
        complete=census.complete,
        cause={},
        owners=owners,
        resources=census.resources,
    )
    if baseline is not None:
        dump.window_seconds = max(now - baseline.t, 1e-9)
        if requests is not None:
            dump.requests = max(requests - baseline.requests, 0)
        for owner in owners:
            growth = owner.retained_bytes - baseline.retained.get(owner.path, 0)
            owner.growth_bytes_per_second = growth / dump.window_seconds
            if dump.requests:
                owner.growth_bytes_per_request = growth / dump.requests
        _resource_growth(dump, baseline)
    owners.sort(key=lambda o: -o.retained_bytes)
    next_baseline = Baseline(
        t=now,
        retained={o.path: o.retained_bytes for o in owners},
        entries=census.entries,
        requests=requests or 0,
        resources={r.resource: r.count for r in dump.resources},
        resource_groups={r.resource: r.group_counts() for r in dump.resources},
    )
    dump.resources.sort(key=lambda r: (-(r.growth_per_second or 0.0), -r.count))
    for resource in dump.resources:
        resource.groups.sort(key=lambda g: (-(g.growth_per_second or 0.0), -g.count))
        del resource.groups[GROUPS_PER_RESOURCE:]
    dump.owners = owners[:top]
    return dump, next_baseline


def _resource_growth(dump: Dump, baseline: Baseline) -> None:
    """Each resource's and group's growth since the window's first census."""
    seconds = dump.window_seconds or 1e-9
    for resource in dump.resources:
        growth = resource.count - baseline.resources.get(resource.resource, 0)
        resource.growth_per_second = growth / seconds
        if dump.requests:
            resource.growth_per_request = growth / dump.requests
        before = baseline.resource_groups.get(resource.resource, {})
        for group in resource.groups:
            grown = group.count - before.get(group_key(group), 0)
            group.growth_per_second = grown / seconds
            if dump.requests:
                group.growth_per_request = grown / dump.requests


@functools.lru_cache(maxsize=256)
def _functions_of(path: str) -> tuple[tuple[int, int, str], ...]:
    """(first line, last line, name) of every function defined in a source file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple(
        (node.lineno, node.end_lineno or node.lineno, getattr(node, "name", "<lambda>"))
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    )


@functools.lru_cache(maxsize=4096)
def function_at(path: str, line: int) -> str:
    """The innermost function around ``line`` of ``path``, or "<module>"."""
    enclosing = [
        (first, name) for first, last, name in _functions_of(path) if first <= line <= last
    ]
    return max(enclosing)[1] if enclosing else "<module>"
