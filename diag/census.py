"""What holds the memory: live tensors and arrays by holder, every other object by its root.

A census walks the gc's objects once:

- torch tensors (CPU and CUDA) are counted by their storage, so views and tensors sharing a
  storage count once; numpy arrays by the array that owns the buffer;
- a tensor that autograd keeps a graph for (a forgotten ``no_grad``) also retains the tensors
  its graph saved for backward; those have no Python object gc could list, so they are reached
  through ``grad_fn`` and counted to the holder of the output;
- every other object (str, bytes, dicts, lists, sets, tuples, instances, ``__slots__``
  objects, buffers) is weighed by the root that dominates it (``diag.dominators``): a module's
  global, a class's attribute, a running frame's local, or the entry of a region two of them
  share. A dict of lists of bytes is one owner at its global; a linked list, one at its head;
- with a traced window, the objects allocated in it and alive at its end (its *survivors*) are
  found while tracemalloc knows them, and counted to their owners and allocation stacks.

``diag.owners`` then finds who holds the tensors and arrays. Per owner the census reports the
bytes it retains, what it holds (type, dtype, device) and where those objects were allocated,
when tracemalloc was tracing (for a tensor that is where the tensor object was made, even
though torch allocates its bytes outside Python's allocator) or, on CUDA, from torch's
allocation history joined by storage address. With a window, owners that grew come first.

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
import types
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from diag import OWN_DIRS, c_roots, dominators
from diag.model import Clock
from diag.owners import TOOLING_DIRS, Holder, Link, find_holders, is_own_type, locate
from diag.resources_census import (
    GROUPS_PER_RESOURCE,
    Resource,
    ResourceCensus,
    group_key,
    resource_types,
)

#: An owner found by the dominator walk is reported when it retains this much, or when it
#: grew (or holds survivors of the window) by GREW_BYTES: an owner grew when it did by that much.
MIN_OWNER_BYTES = 1 << 20
GREW_BYTES = 64 << 10
#: Owners are kept in the baseline from this size up (a smaller one's growth is overstated
#: by less than this).
BASELINE_BYTES = 16 << 10
#: Survivors whose allocation stacks are read (evenly spaced among all of them).
SURVIVOR_SAMPLE = 4096
#: Shared regions' entries named per dump, at most (each costs a path search).
MAX_ENTRIES_NAMED = 8
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
    #: Where these lie beneath the owner, keys and indexes by type: "[<str>][<int>]" for the
    #: bytes in the lists of a dict keyed by strings ("" where not looked into).
    beneath: str = ""


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
    #: What names the chain's first step: "module" (a module's global), "class" (a class
    #: attribute), "thread" (a running frame's local), "c" (no Python referrer: held from C).
    root: str = "module"
    #: Objects allocated during the traced window and alive at its end that this owner retains
    #: (null without a window).
    survivors: int | None = None
    survivor_bytes: int | None = None


@dataclass
class SurvivorOwner:
    path: str
    root: str
    count: int
    bytes: int


@dataclass
class Survivors:
    """The objects allocated during a traced window that are still alive at its end: the
    leak's best witness, by the owner that retains them and by allocation stack (stacks read
    from a sample of each owner's survivors, scaled to the owner's count)."""

    count: int
    bytes: int
    by_owner: list[SurvivorOwner] = field(default_factory=list)
    by_stack: list[Stack] = field(default_factory=list)


@dataclass
class Site:
    """An allocation site that grew during a window (tracemalloc's view: Python's allocator)."""

    site: str
    bytes: int
    count: int


#: Unreachable objects a dump's own collection frees, past which (with the host's gc
#: disabled) they are the host's pile of reference cycles, not the census's few.
GC_PILE_OBJECTS = 10_000


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
    #: Set when the dump closes a traced window: what was allocated in it and is still alive.
    survivors: Survivors | None = None
    #: Set where the host disabled the gc and this dump's collection freed a pile of
    #: unreachable objects (GC_PILE_OBJECTS or more): how many.
    gc_disabled_freed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- measuring ---------------------------------------------------------------------------------

_Measure = tuple[str, str, tuple[Any, ...], int]  # (kind, device, storage key, bytes)
_Sampled = tuple[int, tracemalloc.Traceback, int]  # a sampled survivor: (id, where, bytes)


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
    """An array weighs the buffer it keeps alive. An owning array, its own; a view (a slice,
    a reshape, ``np.frombuffer``), the whole buffer of what it is a view of, once per buffer:
    a kept slice pins all of it, and the gc sees neither the link (``.base``) nor the
    buffer's owner, so no one else can weigh it."""
    if obj.base is None:
        return f"numpy.ndarray {obj.dtype}", "cpu", ("numpy", id(obj)), int(obj.nbytes)
    base = obj.base
    while _is_array(base) and base.base is not None:
        base = base.base
    kind = f"numpy.ndarray {obj.dtype} view"
    if _is_array(base):
        return kind, "cpu", ("numpy", id(base)), int(base.nbytes)
    if isinstance(base, (bytes, bytearray)):
        return kind, "cpu", ("numpy", id(base)), sys.getsizeof(base)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(base, torch.Tensor):  # Tensor.numpy(): its storage
        measured = _measure_tensor(base)
        return None if measured is None else (kind, *measured[1:])
    return None  # an mmap, a foreign buffer: its own object is weighed where it is held


def _is_array(obj: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


#: Objects looked at per chunk (and whose referents are listed by one C call): bounds the
#: lists one chunk needs.
_CHUNK = 4096
#: Untracked containers nested in untracked containers, looked into this deep for arrays.
UNTRACKED_DEPTH = 3


@dataclass
class _Sifted:
    tensors: list[Any] = field(default_factory=list)
    resources: list[Any] = field(default_factory=list)  # files, sockets, threads, tasks...
    arrays: list[Any] = field(default_factory=list)  # numpy arrays, a few more than once
    parents: dict[int, Any] = field(default_factory=dict)  # id(array) -> untracked container
    #: Every tracked object that refers to a tensor, an array or a resource object directly,
    #: in the gc's order.
    holders: list[Any] = field(default_factory=list)


def _sift(objects: list[Any], torch: Any, ndarray: type | None) -> _Sifted:
    """One pass over the gc's objects, a chunk at a time: the tensors and the resource
    objects among them, the numpy arrays they refer to, and the objects that hold tensors or
    arrays (so the holder search needs no pass of its own).

    A heap has a million objects but a few thousand types: each type is classified once, and
    a chunk is looked through only when it holds a wanted type. The chunk's referents are
    listed while the chunk is still in the CPU's cache (a second pass over a million objects
    costs about as much as the first) and sifted in one comprehension: the numpy arrays, the
    untracked dicts that may hold more, and whether the chunk refers to a tensor or an array
    at all; only then is it looked into object by object, for the holders."""
    sifted = _Sifted()
    tensors = _subclasses(torch.Tensor) if torch is not None else set()
    resources = resource_types()
    into: dict[type, list[Any] | None] = {}  # type -> the list its objects go to
    picked: set[type] = set()
    # What holders are wanted of: tensors, arrays and resources (files, sockets, threads...),
    # each by its exact type (a C set lookup per referent).
    held = tensors | {ndarray} if ndarray is not None else set(tensors)
    held.update(*(_subclasses(kind) for kind in resources))
    wanted = held | {dict} if ndarray is not None else held
    is_tracked = gc.is_tracked
    for start in range(0, len(objects), _CHUNK):
        chunk = objects[start : start + _CHUNK]
        kinds = set(map(type, chunk))
        for kind in kinds.difference(into):
            if kind in tensors:
                into[kind] = sifted.tensors
            elif issubclass(kind, resources):
                into[kind] = sifted.resources
            else:
                into[kind] = None
                continue
            picked.add(kind)
        if not kinds.isdisjoint(picked):
            for obj in chunk:
                found = into[type(obj)]
                if found is not None:
                    found.append(obj)
        if not wanted:
            continue
        kept = [r for r in gc.get_referents(*chunk) if type(r) in wanted]
        if not held.isdisjoint(map(type, kept)):
            sifted.arrays.extend([r for r in kept if type(r) is ndarray])
            _holders(chunk, held, sifted.holders)
        if ndarray is not None:
            boxes = [r for r in kept if type(r) is dict and not is_tracked(r)]
            if boxes:
                _untracked_arrays(boxes, ndarray, sifted)
    return sifted


def _holders(chunk: list[Any], held: set[type], out: list[Any]) -> None:
    """The objects of ``chunk`` that refer to an object of a ``held`` type, in order: found
    by halving the chunk (a C call per half), not by a call per object, which would allocate a
    list per object (traced, in a window)."""
    parts = [chunk]
    while parts:
        part = parts.pop()
        if held.isdisjoint(map(type, gc.get_referents(*part))):
            continue
        if len(part) == 1:
            out.append(part[0])
            continue
        half = len(part) // 2
        parts += (part[half:], part[:half])  # the first half next


def _subclasses(cls: type) -> set[type]:
    """``cls`` and every class derived from it (C calls, one per class)."""
    found = {cls}
    stack = [cls]
    while stack:
        subclasses: list[type] = type.__subclasses__(stack.pop())
        for sub in subclasses:
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def _untracked_arrays(boxes: list[Any], ndarray: type, sifted: _Sifted) -> None:
    """numpy arrays, which the gc does not track, so ``gc.get_objects()`` never lists them,
    in dicts the gc does not track either: a dict that holds only untracked objects (an
    int-keyed dict of arrays) is untracked (the gc never untracks a list), and
    ``gc.get_referrers`` cannot see it. Such dicts are looked into (a whole batch per C call,
    each alone only when the batch held an array), and the arrays inside come with them, in
    ``parents``."""
    for _ in range(UNTRACKED_DEPTH):
        if not boxes:
            break
        inside = gc.get_referents(*boxes)
        if ndarray in set(map(type, inside)):
            for box in boxes:
                for found in gc.get_referents(box):
                    if type(found) is ndarray:
                        sifted.arrays.append(found)
                        sifted.parents.setdefault(id(found), box)
        boxes = [r for r in inside if type(r) is dict]  # untracked: inside one


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
    requests: int
    resources: dict[str, int] = field(default_factory=dict)  # resource -> count
    #: resource -> group key -> count
    resource_groups: dict[str, dict[str, int]] = field(default_factory=dict)


_CONTAINER_TYPES = (dict, list, set, collections.deque)
#: An instance's attributes looked through for the one that holds the most entries.
MAX_ATTRIBUTES = 64
#: Owners whose ``objects`` is their number of entries (else: the objects they retain).
_SIZED = (dict, list, set, frozenset, tuple, collections.deque)


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


#: How deep ``_shape_beneath`` looks through containers that hold only containers.
SHAPE_DEPTH = 4


def _step_of(container: Any) -> str:
    """One step into ``container`` as a path names it, keys by type: ``[<str>]``, ``[<int>]``."""
    if issubclass(type(container), dict):
        keys = list(itertools.islice(_newest(dict.keys(container), container), 1))
        return f"[<{type(keys[0]).__name__}>]" if keys else "[]"
    if issubclass(type(container), (set, frozenset)):
        return "{…}"
    return "[<int>]"


def _shape_beneath(container: Any) -> tuple[str, list[Any], int]:
    """Where an owner's weight lies beneath it, from a sample: through containers that hold
    only containers of one kind (a dict of lists, a list of dicts of lists), down to the
    first level that holds anything else. Returns the steps (``[<str>][<int>]``), the sampled
    values at that level and their estimated count (each level's mean length over its sample,
    times the count above it)."""
    steps, level, count = "", [container], 1.0
    found: tuple[str, list[Any], int] = ("", [], len(container))
    for _ in range(SHAPE_DEPTH):
        try:  # a subclass's own __len__ or __reversed__ runs here: it may raise
            values = [v for each in level for v in _sample_values(each)]
            count *= sum(len(each) for each in level) / len(level)
            steps += _step_of(level[0])
        except Exception:
            break
        found = (steps, values, round(count))
        kinds = {type(v) for v in values}
        if len(kinds) != 1 or not issubclass(kinds.pop(), _SHAPE_CONTAINERS):
            break
        # Another level of containers: sample across them (a bounded number in all).
        level = values[:ENTRY_SAMPLE]
    return found


_SHAPE_CONTAINERS = (dict, list, tuple, set, frozenset, collections.deque)


def _shape_of_owner(value: Any) -> tuple[str, list[Any], int] | None:
    """``_shape_beneath`` of a container owner; of an instance, beneath the attribute that
    holds the most entries (``.by_user[<str>][<int>]``: a store's dict, an event loop's
    scheduled timers), where its weight most likely lies; None for anything else."""
    if issubclass(type(value), _CONTAINER_TYPES):
        return _shape_beneath(value)
    if isinstance(value, (type, types.ModuleType)):
        return None
    try:  # the instance's own dict, without running a __getattr__ of the host's
        attributes = object.__getattribute__(value, "__dict__")
    except Exception:
        return None
    if type(attributes) is not dict:
        return None
    biggest, most = None, 1
    for name, attribute in itertools.islice(attributes.items(), MAX_ATTRIBUTES):
        if issubclass(type(attribute), _CONTAINER_TYPES):
            try:
                entries = len(attribute)
            except Exception:  # a subclass's own __len__
                continue
            if entries > most:
                biggest, most = (name, attribute), entries
    if biggest is None:
        return None
    steps, leaves, count = _shape_beneath(biggest[1])
    return f".{biggest[0]}{steps}", leaves, count


def _sample_values(container: Any) -> list[Any]:
    if issubclass(type(container), dict):
        return list(itertools.islice(_newest(dict.values(container), container), ENTRY_SAMPLE))
    return list(itertools.islice(_newest(container, container), ENTRY_SAMPLE))


class Census:
    """One census of the heap: tensors and arrays by storage and their holders, resources,
    then every other object by its root. ``monotonic`` times the walk against
    ``time_budget``."""

    def __init__(
        self,
        *,
        time_budget: float,
        user_frames_only: bool = True,
        reveal: bool = False,
        cuda_stacks: Mapping[int, tuple[Frame, ...]] | None = None,
        created_at: Callable[[Any], tuple[tuple[str, int], ...] | None] | None = None,
        monotonic: Clock = time.monotonic,
        retained_before: Mapping[str, int] | None = None,
    ) -> None:
        self._monotonic = monotonic
        self.created_at = created_at
        self.resources: list[Resource] = []
        self.started = monotonic()
        self.deadline = self.started + time_budget
        self.user_only = user_frames_only
        self.reveal = reveal
        self.cuda_stacks = cuda_stacks or {}
        self.tracing = tracemalloc.is_tracing()
        self.complete = True
        self.stacks: dict[int, tuple[Frame, ...]] = {}  # id(object) -> where it was allocated
        #: owner path -> bytes it retained at the window's start (the baseline's).
        self.retained_before = retained_before
        #: owner path -> bytes retained now, for every root's variable above BASELINE_BYTES.
        self.retained_by_path: dict[str, int] = {}
        #: The root kind ``diag.owners.locate`` gave each shared entry it named (by path).
        self.entry_roots: dict[str, str] = {}
        self.survivors: Survivors | None = None
        self.notes: list[str] = []
        self.holders: set[int] = set()  # ids of the owners the tensor holder search made
        self.holder_objects: dict[int, Owner] = {}  # id of a holder object -> its owner

    def run(self, on_collected: Callable[[], None] | None = None) -> list[Owner]:
        """Walk the heap. ``on_collected`` runs once every object's allocation stack is read
        and before the holder search: a window stops tracemalloc there, so the search, which
        allocates an int per id(), runs at full speed."""
        torch = sys.modules.get("torch")
        numpy = sys.modules.get("numpy")
        measured: dict[int, _Measure] = {}
        targets: list[Any] = []
        objects = gc.get_objects()
        sifted = _sift(objects, torch, getattr(numpy, "ndarray", None))
        for obj in sifted.tensors:
            info = _measure_tensor(obj)
            if info is not None:
                measured[id(obj)] = info
                targets.append(obj)
        for array in sifted.arrays:
            if id(array) not in measured:
                info = _measure_array(array)
                if info is not None:
                    measured[id(array)] = info
                    targets.append(array)
        found = sifted.resources
        parents = sifted.parents
        holders = sifted.holders
        del sifted
        # The window's survivors, found while tracemalloc still knows them: the walk that
        # gives them owners runs after tracing stops (a traced allocation costs microseconds).
        survivors = dominators.born(objects, object_traceback) if self.tracing else []
        del objects
        survivor_stacks = self._survivor_tracebacks(survivors)
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
            for obj in found:  # where each resource was created, if during the window
                traceback = object_traceback(obj)
                if traceback is not None:
                    tracebacks.append((id(obj), traceback))
        if on_collected is not None:
            on_collected()
        for ident, traceback in tracebacks:
            self.stacks[ident] = frames_of(traceback, self.user_only)
        del tracebacks
        # The survivors list refers to what the window made (tensors, files...): not a holder.
        ownership = find_holders(
            targets,
            self._left(),
            reveal=self.reveal,
            exclude=(parents, survivors, holders),
            parents=parents,
            referrers=holders,
        )
        self.complete = self.complete and ownership.complete
        del targets
        counted = {measured[id(o)][2] for h in ownership.holders for o in h.objects}
        graph_budget = [MAX_GRAPH_NODES]
        owners = [
            self._tensor_owner(h, measured, counted, torch, graph_budget) for h in ownership.holders
        ]
        self.holders = {id(o) for o in owners}
        self.holder_objects = {h.ident: o for h, o in zip(ownership.holders, owners, strict=True)}
        self._resources(found, exclude=(parents, survivors, holders), referrers=holders)
        del holders
        # Every other object, by the root that owns it (diag.dominators), in the time left:
        # past it the walk stops and the dump says it is incomplete.
        analysis = self._dominate(measured, survivors)
        unreached = None
        if analysis is not None and analysis.complete and survivors:
            # The census's own containers of what it found: never holders from C.
            ours = [survivors, found, parents]
            unreached = self._unreached(analysis, survivors, measured, survivor_stacks, ours)
            del ours
        survivors.clear()
        if analysis is not None:
            owners.extend(self._dominator_owners(analysis, survivor_stacks))
        if unreached is not None:
            owners.append(unreached)
        return owners

    def _unreached(
        self,
        analysis: dominators.Analysis,
        survivors: list[Any],
        measured: Mapping[int, _Measure],
        survivor_stacks: list[_Sampled],
        ours: Sequence[Any],
    ) -> Owner | None:
        """The window's survivors that no root reaches, once the walk reached everything a
        root does, and that something outside them holds: objects a C extension keeps (a
        reference it forgot to release, a cache it fills), not a reference cycle the gc has
        yet to collect. ``ours``: the census's own containers that refer to survivors.
        One owner, named so, where they weigh GREW_BYTES or more; diag's own (allocated by
        its code, held by its threads' frames, which the walk skips) are left out by the
        share of the sampled survivors that are, and by their types."""
        labels = analysis.labels
        lost = [s for s in survivors if id(s) not in labels and id(s) not in measured]
        try:
            lost = _held_from_outside(lost, ours)
        except Exception:  # a heuristic on reference counts: never into the host
            self.notes.append("the objects held from C code could not be told")
            return None
        if not lost:
            return None
        kinds: dict[type, list[int]] = defaultdict(lambda: [0, 0])
        for obj in lost:  # diag's own types are left out already
            entry = kinds[type(obj)]
            entry[0] += 1
            entry[1] += dominators.sizeof(obj)
        lost_ids = set(map(id, lost))
        del lost
        sampled = [(tb, size) for ident, tb, size in survivor_stacks if ident in lost_ids]
        theirs = [(tb, size) for tb, size in sampled if not _allocated_by_diag(tb)]
        if not theirs:
            return None
        share = sum(size for _, size in theirs) / max(sum(size for _, size in sampled), 1)
        total = round(share * sum(size for _, size in kinds.values()))
        count = round(share * sum(n for n, _ in kinds.values()))
        if total < GREW_BYTES:
            return None
        stacks: dict[tuple[Frame, ...], list[int]] = defaultdict(lambda: [0, 0])
        scale_bytes = total / max(sum(size for _, size in theirs), 1)
        scale = count / len(theirs)
        for traceback, size in theirs:  # the sample's, scaled to all of them (as an owner's)
            entry = stacks[frames_of(traceback, self.user_only)]
            entry[0] += round(size * scale_bytes)
            entry[1] += round(scale)
        contents: dict[tuple[str, ...], list[int]] = {
            (_type_name_of(kind), "cpu"): [round(n * share), round(size * share)]
            for kind, (n, size) in kinds.items()
            if size * share >= total / 100  # the kinds that weigh, not every stray one
        }
        return Owner(
            path=UNREACHED_PATH,
            kind="objects made in the window",
            retained_bytes=total,
            objects=count,
            growth_bytes_per_second=None,
            contents=_contents(contents),
            allocation_stacks=_stacks(stacks),
            root="c",
            survivors=count,
            survivor_bytes=total,
        )

    # -- owners by dominating root (diag.dominators) ------------------------------------------

    def _dominate(
        self, measured: Mapping[int, _Measure], survivors: list[Any]
    ) -> dominators.Analysis | None:
        """Every object by the root that owns it, within the budget left (a few percent kept
        to name shared regions). The gc is off meanwhile: the walk's own lists would otherwise
        start collections of the whole heap."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            roots, boundaries = dominators.collect_roots(_user_module, OWN_DIRS)
            # The interpreter's registries: each a boundary, so that a library that also
            # reaches one (weakref.finalize's class holds its registry) does not share what
            # the registry's entries own.
            for kind, registry, entries in c_roots.held_from_c(self.deadline):
                roots.append(dominators.RootContainer(kind, "", registry, entries))
                boundaries.append(registry)
            deadline = self.deadline - 0.05 * (self.deadline - self.started)
            analysis = dominators.analyse(
                roots,
                boundaries,
                deadline=deadline,
                clock=self._monotonic,
                claimed=measured.keys(),
                survivors=survivors,
            )
        except Exception:  # never into the host: the tensor holders are still reported
            self.notes.append("the owners of plain objects could not be weighed")
            return None
        finally:
            if enabled:
                gc.enable()
        self.complete = self.complete and analysis.complete
        if not analysis.complete:
            self.notes.append("out of time weighing owners: some roots are not weighed")
        return analysis

    def _survivor_tracebacks(self, survivors: list[Any]) -> list[_Sampled]:
        """(id, allocation stack, size) of an evenly spaced sample of the survivors, read while
        tracing: each owner's stacks come from the sampled survivors the walk gives it."""
        stride = max(len(survivors) // SURVIVOR_SAMPLE, 1)
        out = []
        for obj in survivors[::stride]:
            traceback = object_traceback(obj)
            if traceback is not None:  # turned into frames later, untraced, for owners shown
                out.append((id(obj), traceback, dominators.sizeof(obj)))
        return out

    def _dominator_owners(
        self, analysis: dominators.Analysis, survivor_stacks: list[_Sampled]
    ) -> list[Owner]:
        """Owners from the dominator walk: each root's variable (or a shared region's entry,
        or the entries two variables share, folded) that retains enough, holds the window's
        survivors, or grew since the baseline."""
        owners_of = analysis.owners
        roots = analysis.roots
        before = self.retained_before
        by_path: dict[str, int] = {}
        chosen: list[tuple[int, str]] = []
        entries: list[int] = []
        for label in range(len(owners_of)):
            retained = owners_of.retained[label]
            survivors = owners_of.survivor_bytes[label]
            container = owners_of.containers[label]
            if label in analysis.folded:
                continue  # its figures are another entry's now
            holder = self.holder_objects.get(id(owners_of.objects[label]))
            if holder is not None:
                # The holder search's owner of the same object (a dict of arrays, a thread's
                # deque of frames, maybe by another path): one owner, its tensors or arrays
                # (which this walk did not weigh) and its own containers.
                holder.retained_bytes += retained
                continue
            if container < 0 and label not in analysis.folded_into:
                # A shared region's entry: named below, if it matters.
                if retained >= MIN_OWNER_BYTES or survivors >= GREW_BYTES:
                    entries.append(label)
                continue
            if retained < BASELINE_BYTES and survivors < GREW_BYTES:
                continue
            if container < 0:  # what two variables share, many entries folded into one
                path = self._shared_path(analysis, label)
            else:
                path = _label_path(roots[container], owners_of.keys[label])
            if _is_tooling(path):
                continue
            by_path[path] = retained
            grew = before is not None and retained - before.get(path, 0) >= GREW_BYTES
            library = bool(owners_of.coarse[label]) or (container >= 0 and roots[container].coarse)
            if library and not grew and survivors < GREW_BYTES:
                continue  # torch's op tables and the like: big, but nobody's leak
            if retained >= MIN_OWNER_BYTES or grew or survivors >= GREW_BYTES:
                chosen.append((label, path))
        self.retained_by_path = by_path
        entries.sort(key=lambda i: -(owners_of.survivor_bytes[i] + owners_of.retained[i]))
        del entries[MAX_ENTRIES_NAMED:]
        if entries:
            objects = [owners_of.objects[i] for i in entries]
            named, in_time = locate(
                objects, self._left(), reveal=self.reveal, exclude=(owners_of.objects,)
            )
            del objects
            self.complete = self.complete and in_time
            for label, found in zip(entries, named, strict=True):
                if found.root == "own" or _is_tooling(found.path):
                    continue  # diag's own objects, an earlier census's
                grew = before is not None and (
                    owners_of.retained[label] - before.get(found.path, 0) >= GREW_BYTES
                )
                if found.root == "c" and not grew and owners_of.survivor_bytes[label] < GREW_BYTES:
                    continue  # a running frame's temporary, say: held from C, not growing
                chosen.append((label, found.path))
                self.entry_roots[found.path] = found.root
        shown = {label for label, _ in chosen}
        stacks_of: dict[int, list[tuple[tuple[Frame, ...], int]]] = defaultdict(list)
        for ident, traceback, size in survivor_stacks:
            owner = analysis.labels.get(ident, -1)
            owner = analysis.folded.get(owner, owner)
            if owner in shown:
                stacks_of[owner].append((frames_of(traceback, self.user_only), size))
        result = []
        for label, path in chosen:
            result.append(self._dominator_owner(analysis, label, path, stacks_of.get(label, [])))
        witness = _survivors_of(analysis, result, [label for label, _ in chosen])
        self.survivors = witness if self.tracing else None
        return result

    def _shared_path(self, analysis: dominators.Analysis, label: int) -> str:
        """``svc.BY_ID + svc.BY_NAME (held by both)``: the two variables whose walks met the
        folded entries, first the one that found them; the root kind is the first's."""
        owners_of = analysis.owners
        ends = []
        for end in (owners_of.found_from[label], owners_of.shared_with[label]):
            root = analysis.roots[owners_of.containers[end]]
            ends.append(_label_path(root, owners_of.keys[end]))
        path = f"{ends[0]} + {ends[1]} (held by both)"
        first = analysis.roots[owners_of.containers[owners_of.found_from[label]]]
        self.entry_roots[path] = first.kind
        return path

    def _dominator_owner(
        self,
        analysis: dominators.Analysis,
        label: int,
        path: str,
        sampled_stacks: list[tuple[tuple[Frame, ...], int]],
    ) -> Owner:
        owners_of = analysis.owners
        container = owners_of.containers[label]
        value = owners_of.objects[label]
        retained = owners_of.retained[label]
        root = analysis.roots[container] if container >= 0 else None
        if root is None:
            chain: list[Link] = []
            kind_of_root = self.entry_roots.get(path) or _root_kind(path)
        elif root.coarse:
            chain = [Link(root.name, "module")]
            kind_of_root = root.kind
        elif root.kind in C_SOURCE_KINDS:
            chain = [Link(path, type(value).__name__)]
            kind_of_root = root.kind
        else:
            # From the key the walk started at, not from the holder's current value: the host
            # may rebind the variable while the census reads source files (the GIL is free).
            step = path[len(root.name) :]
            chain = [Link(root.name, type(root.obj).__name__), Link(step, type(value).__name__)]
            kind_of_root = root.kind
        survivors = owners_of.survivors[label]
        survivor_bytes = owners_of.survivor_bytes[label]
        sample = owners_of.by_type[label]
        contents: dict[tuple[str, ...], list[int]] = {}
        if sample and survivors:
            sampled = sum(n for n, _ in sample.values())
            scale = survivors / max(sampled, 1)
            for sampled_type, (count, size) in sample.items():
                contents[(_type_name_of(sampled_type), "cpu")] = [
                    round(count * scale),
                    round(size * scale),
                ]
        elif (
            value is not None
            and label not in analysis.folded_into  # one entry's shape is not the others'
            and (shape := _shape_of_owner(value)) is not None
        ):
            beneath, leaves, count = shape
            by_type: dict[str, int] = defaultdict(int)
            for item in leaves:
                by_type[_type_name(item)] += 1
            # What the owner retains, shared by its leaves' kinds as the sample shares it.
            per_leaf = retained / max(count, 1)
            for name, n in by_type.items():
                share = n / len(leaves)
                contents[(name, "cpu", beneath)] = [
                    round(share * count),
                    round(share * count * per_leaf),
                ]
        stacks: dict[tuple[Frame, ...], list[int]] = defaultdict(lambda: [0, 0])
        if sampled_stacks:
            # The sample's sizes and counts, scaled to all of the owner's survivors.
            scale = survivors / len(sampled_stacks)
            sampled_bytes = sum(size for _, size in sampled_stacks)
            scale_bytes = survivor_bytes / max(sampled_bytes, 1)
            for frames, size in sampled_stacks:
                stacks[frames][0] += round(size * scale_bytes)
                stacks[frames][1] += round(scale)
        if value is None:
            kind_name, objects = "module", owners_of.count[label]
        else:
            kind_name = type(value).__name__
            objects = len(value) if issubclass(type(value), _SIZED) else owners_of.count[label]
        return Owner(
            path=path,
            kind=kind_name,
            retained_bytes=retained,
            objects=objects,
            growth_bytes_per_second=None,
            contents=_contents(contents),
            allocation_stacks=_stacks(stacks),
            chain=chain,
            root=kind_of_root,
            survivors=survivors if self.tracing else None,
            survivor_bytes=survivor_bytes if self.tracing else None,
        )

    def _resources(
        self, found: list[Any], exclude: tuple[Any, ...], referrers: Sequence[Any]
    ) -> None:
        """Live resources grouped by holder and creation stack (diag.resources_census).
        ``referrers``: the sift's holders, every tracked object that refers to one."""
        recorded = self.created_at
        user_only = self.user_only

        def created_at(obj: Any) -> tuple[Frame, ...] | None:
            places = recorded(obj) if recorded is not None else None
            return _frames_of(places, user_only) if places else None

        census = ResourceCensus(found, self.stacks, created_at)
        found.clear()
        self.resources, complete = census.resources(
            self._left(), self.reveal, exclude, referrers=referrers
        )
        self.complete = self.complete and complete

    def _left(self) -> float:
        return max(self.deadline - self._monotonic(), 0.1)

    def _tensor_owner(
        self,
        holder: Holder,
        measured: dict[int, _Measure],
        counted: set[tuple[Any, ...]],
        torch: Any,
        graph_budget: list[int],
    ) -> Owner:
        seen: set[tuple[Any, ...]] = set()
        contents: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
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
            # The search's own word for its root; "module" covers classes until it is read.
            root=holder.root if holder.root not in ("module", "unknown") else "module",
        )


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


def _user_module(name: str, module: Any) -> bool:
    """A module of the service (walked variable by variable), not of a library or of diag
    (walked as one owner). A module made at run time (no file, no spec) is the service's."""
    if name == "__main__" or name == "__mp_main__":
        return True
    filename = getattr(module, "__file__", None)
    if type(filename) is str and os.path.isabs(filename):
        return not is_library(filename)
    top = name.partition(".")[0]
    if top != name:  # torch._C._nn, torch.ops (whose __file__ is "_ops.py"): their package's
        package = sys.modules.get(top)
        return package is not None and _user_module(top, package)
    return getattr(module, "__spec__", None) is None and name not in sys.builtin_module_names


#: The kinds of the sources ``c_roots.held_from_c`` adds: their keys are whole paths.
C_SOURCE_KINDS = frozenset({"context", "atexit", "signal", "finalize", "task"})


def _label_path(root: dominators.RootContainer, key: str) -> str:
    """The path of a root's variable, as ``diag.owners.render`` writes it."""
    if root.coarse:
        return root.name
    if root.kind in C_SOURCE_KINDS:
        return key  # the whole text: "atexit callback remove_tmp()"
    if root.kind == dominators.ROOT_THREAD:
        return f"{root.name} › {root.obj.f_code.co_name}() › {key}"
    return f"{root.name}.{key}"


def _root_kind(path: str) -> str:
    """What names a path's first step: a module, a class, a thread's frame, or C."""
    if path.startswith("thread "):
        return dominators.ROOT_THREAD
    if path.startswith("<"):
        return "c"
    parts = path.split(" ", 1)[0].split("[", 1)[0].split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is not None:
            namespace = getattr(module, "__dict__", None)
            value = namespace.get(parts[cut]) if type(namespace) is dict else None
            is_class = value is not None and issubclass(type(value), type)
            return dominators.ROOT_CLASS if is_class and cut + 1 < len(parts) else "module"
    return "module" if parts[0] in sys.modules else "c"  # "held from C code ...", named so


def _survivors_of(
    analysis: dominators.Analysis, owners: list[Owner], labels: list[int]
) -> Survivors:
    """The window's survivors: their total, by owner (every owner the walk found), and by
    allocation stack (the stacks of the reported owners' sampled survivors, scaled)."""
    found = analysis.owners
    named = dict(zip(labels, owners, strict=True))
    total = sum(found.survivors)
    total_bytes = sum(found.survivor_bytes)
    by_owner = []
    for label, owner in named.items():
        if found.survivors[label]:
            by_owner.append(
                SurvivorOwner(
                    owner.path, owner.root, found.survivors[label], found.survivor_bytes[label]
                )
            )
    by_owner.sort(key=lambda o: -o.bytes)
    stacks: dict[tuple[Frame, ...], list[int]] = defaultdict(lambda: [0, 0])
    for owner in owners:
        for stack in owner.allocation_stacks:
            entry = stacks[tuple(stack.frames)]
            entry[0] += stack.bytes
            entry[1] += stack.count
    ranked = sorted(stacks.items(), key=lambda kv: -kv[1][0])[:SURVIVOR_STACKS]
    return Survivors(
        count=total,
        bytes=total_bytes,
        by_owner=by_owner[:SURVIVOR_OWNERS],
        by_stack=[Stack(size, count, list(frames)) for frames, (size, count) in ranked],
    )


SURVIVOR_OWNERS = 10
SURVIVOR_STACKS = 10


def _type_name_of(kind: type) -> str:
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def _held_from_outside(objects: list[Any], ours: Sequence[Any]) -> list[Any]:
    """Those of ``objects`` (no root reaches them) that something outside the heap holds, and
    what they hold among them: what a C extension keeps (a reference it forgot to release
    has no referrer on the heap). The rest, whose every reference comes from objects no root
    reaches either, are reference cycles the gc has yet to collect: garbage, not a leak,
    unless one of those objects is held from outside in turn (``_held_above``: a list a C
    extension made before the window and keeps appending to). ``ours``: the caller's own
    containers of them, never holders.

    The gc's own test: an object's reference count, less the references from the set, less
    those from other objects no root reaches (a list the free list gave back, which is no
    survivor because tracemalloc did not see it made), is held from outside. This function's
    own references are measured on a sentinel held as the others are. A leaked container
    that came from a free list (the first 80 dicts or lists of a window) is no survivor: the
    test upward finds it, and what it holds of the set is kept."""
    holder = [object()]  # the sentinel: in a list besides ``objects``, as a survivor is
    objects.append(holder[0])
    index = {id(o): i for i, o in enumerate(objects)}
    counts = [sys.getrefcount(o) for o in objects]
    within = _references_among(objects, objects, index)
    outside = [i for i, n in enumerate(counts) if n - within[i] > counts[-1] - within[-1]]
    if outside:
        # References from beyond the set, found once on the whole heap for the few left (and
        # the sentinel): a referrer that no root reaches either (nothing reached refers to an
        # unreached object) accounts for its references; this function's lists do not.
        suspects = [objects[i] for i in outside] + [holder[0]]
        at = {id(o): j for j, o in enumerate(suspects)}
        mine = {id(objects), id(suspects), id(index)}
        referrers = [
            r for r in gc.get_referrers(*suspects) if id(r) not in mine and id(r) not in index
        ]
        beyond = _references_among(referrers, suspects, at)
        own = counts[-1] - within[-1] - beyond[-1]
        outside = [i for j, i in enumerate(outside) if counts[i] - within[i] - beyond[j] > own]
        del suspects
        mine.update(map(id, ours))
        mine.update((id(holder), id(referrers)))
        above = _held_above(referrers, set(index), mine)
        del referrers
    else:
        above = []
    objects.pop()
    del index[id(holder[0])]
    # diag's own objects (a census made while tracing, held by its running frame, which the
    # walk skips) are not the host's: neither they nor what only they hold.
    outside = [i for i in outside if not is_own_type(objects[i])]
    # ... and what those hold among the set, transitively.
    kept = set(outside)
    frontier = [objects[i] for i in outside] + above
    while frontier:
        found = []
        for kid in _referents_with_keys(frontier):
            i = index.get(id(kid))
            if i is not None and i not in kept and not is_own_type(kid):
                kept.add(i)
                found.append(kid)
        frontier = found
    return [objects[i] for i in sorted(kept)]


def _held_above(candidates: list[Any], seen: set[int], mine: set[int]) -> list[Any]:
    """Of ``candidates``, objects no root reaches that refer to the window's unreached objects,
    and of their unreached referrers in turn (up to ``UPWARD_LEVELS`` up), those that
    something outside the heap holds, and what those hold among them: a container a C
    extension made before the window and fills in it, and a list beneath such a dict. The
    same test as ``_held_from_outside``'s, with a sentinel for this function's own
    references. Garbage that came to refer to the window's objects before it became garbage
    has referrers of its own among the unreached, and is never held. ``seen``: the ids of
    the window's objects, which are no candidates; ``mine``: the caller's containers.

    Written without comprehensions over its locals: one would make a cell of a list, and a
    cell is a referrer that only this frame holds, so a holder from C to this test."""
    above: dict[int, Any] = {}
    held: list[Any] = []
    mine = {*mine, id(candidates), id(above), id(held)}
    level = candidates
    for _ in range(UPWARD_LEVELS):
        fresh: list[Any] = []
        for obj in level:
            if (
                id(obj) not in seen
                and id(obj) not in mine
                and type(obj) not in _NEVER_HELD_FROM_C
                and not is_own_type(obj)
            ):
                fresh.append(obj)
                seen.add(id(obj))
                above[id(obj)] = obj
        level, fresh, obj = fresh, [], None  # no local of this frame holds a candidate
        if not level:
            break
        level.append(object())  # the sentinel, held as the others are
        mine.add(id(level))
        at = {id(o): j for j, o in enumerate(level)}
        counts = list(map(sys.getrefcount, level))
        # Every referrer counts, the caller's lists too (they hold the sentinel's peers, not
        # it, and their references are found here): only the next level leaves them out.
        referrers = gc.get_referrers(*level)
        mine.add(id(referrers))
        within = _references_among(referrers, level, at)
        own = counts[-1] - within[-1]
        for j in range(len(level) - 1):
            if counts[j] - within[j] > own:
                held.append(level[j])
        level = referrers
        del referrers
    # Down again from those held, through the unreached between them and the window's.
    for obj in held:
        del above[id(obj)]
    frontier = held
    while frontier:
        below = []
        for kid in _referents_with_keys(frontier):
            obj = above.pop(id(kid), None)
            if obj is not None:
                below.append(obj)
        held.extend(below)
        frontier = below
    return held


def _referents_with_keys(objects: Sequence[Any]) -> list[Any]:
    """What ``objects`` refer to, as the gc lists it, and the str keys of their dicts, which
    a dict whose keys are all str does not show to the gc."""
    kids: list[Any] = []
    for start in range(0, len(objects), _CHUNK):
        chunk = objects[start : start + _CHUNK]
        kids.extend(gc.get_referents(*chunk))
        kids.extend(dominators.str_keys(chunk))
    return kids


def _references_among(
    referrers: Sequence[Any], targets: Sequence[Any], index: Mapping[int, int]
) -> list[int]:
    """How many references ``referrers`` hold to each of ``targets`` (``index``: id -> its
    place in ``targets``)."""
    counted = [0] * len(targets)
    for kid in _referents_with_keys(referrers):
        i = index.get(id(kid))
        if i is not None:
            counted[i] += 1
    return counted


#: What refers to the window's objects from a running frame: a cell of a frame's closure
#: variables, or the frame itself. No root reaches them where the frame is diag's (the walk
#: skips its frames), and only the thread holds them: never C code's cache.
_NEVER_HELD_FROM_C = (types.CellType, types.FrameType)
#: How many levels of unreached referrers above the window's objects are asked whether C
#: code holds them (``_held_above``): a C-held cache of containers of the new objects is two;
#: a callback C keeps (a bound method) whose object keeps a list in its ``__dict__`` is four.
UPWARD_LEVELS = 4
#: The owner of a window's survivors that no root reaches (see ``Census._unreached``).
UNREACHED_PATH = "held from C code (no Python referrer)"


def _allocated_by_diag(traceback: tracemalloc.Traceback) -> bool:
    """Whether diag's own code made the object (some frame of its stack is diag's)."""
    return any(frame.filename.startswith(TOOLING_DIRS) for frame in traceback)


def _contents(contents: Mapping[tuple[str, ...], list[int]]) -> list[Content]:
    """Contents keyed by (type, device) or (type, device, beneath), largest first."""
    return [
        Content(key[0], key[1], count, size, *key[2:])
        for key, (count, size) in sorted(contents.items(), key=lambda kv: -kv[1][1])
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
        created_at=created_at,
        monotonic=monotonic,
        retained_before=baseline.retained if baseline is not None else None,
    )
    # The census holds the GIL from start to end: the host's threads wait (the pause we
    # report) instead of changing the heap under the walk, and the walk ends sooner.
    # The window ends where this census starts: from then on the host waits for it.
    window_end = clock()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(max(time_budget, switch))
    try:
        owners = census.run(on_collected)
    finally:
        sys.setswitchinterval(switch)
        # Walking running frames leaves reference cycles through frame objects, and a dead
        # frame keeps its locals (every object the census listed) alive until the next
        # collection. Collect the young generations now: only what the census created...
        freed = gc.collect(1)
    # ... unless the host disabled the gc: then every cycle it made since its last collection
    # is young too, and goes now. Said, since the memory readings fall across this dump.
    piled = freed if not gc.isenabled() and freed >= GC_PILE_OBJECTS else None
    if piled is not None:
        census.notes.append(
            f"gc is disabled: this dump's collection freed {piled:,} unreachable objects "
            "(reference cycles that only a collection frees)"
        )
    now = clock()
    dump = Dump(
        pid=os.getpid(),
        taken_at=now,
        pause_seconds=monotonic() - census.started,
        complete=census.complete,
        cause={},
        owners=owners,
        resources=census.resources,
        notes=census.notes,
        survivors=census.survivors if baseline is not None else None,
        gc_disabled_freed=piled,
    )
    for owner in owners:
        if owner.root == "module":  # the holder search's paths: what their first step is
            owner.root = _root_kind(owner.path)
    if baseline is not None:
        dump.window_seconds = max(window_end - baseline.t, 1e-9)
        if requests is not None:
            dump.requests = max(requests - baseline.requests, 0)
        for owner in owners:
            growth = owner.retained_bytes - baseline.retained.get(owner.path, 0)
            owner.growth_bytes_per_second = growth / dump.window_seconds
            if dump.requests:
                owner.growth_bytes_per_request = growth / dump.requests
        _resource_growth(dump, baseline)
    owners.sort(key=lambda o: _rank(o, dump.window_seconds, id(o) in census.holders))
    next_baseline = Baseline(
        t=now,
        retained={**census.retained_by_path, **{o.path: o.retained_bytes for o in owners}},
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


def _rank(owner: Owner, window: float | None, holds_tensors: bool) -> tuple[int, float]:
    """Owners that grew (by GREW_BYTES over the window) first: holders of tensors and arrays
    (memory outside Python's heap, what services leak most), then the roots of other objects,
    fastest first. An owner that did not grow never ranks above one that did. Then the rest,
    tensor holders then roots, biggest first."""
    growth = owner.growth_bytes_per_second
    if window is not None and growth is not None and growth * window >= GREW_BYTES:
        # A tensor holder is the precise path inside a root's region (the root's own growth
        # is what surrounds the tensors: exceptions, frames, list slots): it comes first.
        return 0 if holds_tensors else 1, -growth
    return 2 if holds_tensors else 3, -float(owner.retained_bytes)


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
