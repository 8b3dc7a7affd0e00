"""Retained size at the root that owns it: the top of the heap's dominator tree.

The heap is a graph: an object refers to what ``gc.get_referents`` lists. Put a super-root
above the *root containers* (every module's globals, every class's namespace, every running
frame of every thread) and each of their entries (a global variable, a class attribute, a
frame's local) is a *source*. An object that only one source reaches is dominated by it: every
path from the roots passes through that source, so the source retains it (the first level of
the dominator tree that Java heap analysers compute with Lengauer-Tarjan or Cooper-Harvey-
Kennedy). An object reached from two sources is dominated by neither: it becomes an owner of
its own (an *entry* of a shared region), and what lies below it is its.

Why not the whole dominator tree? A million-object heap has three million references; a dict
lookup per reference in Python costs seconds (measured: 2.1 s for one pass) and a dict from id
to index costs 120 MiB. So each source's region is walked a chunk of objects at a time, and
only objects with *more than one* reference (refcount above 1: shared strings, types, objects
the caller holds) get an entry in the ``id -> owner`` dict, looked up once per chunk however
often they come in it. An object with one reference has one parent: it is reached once, from
its parent, and belongs to its parent's owner without any bookkeeping. The walk never keeps a
list of every object, so the memory it needs is that dict, the objects found and not yet
walked, and a few numbers per owner.

The walk's loop runs in C where ``diag._walk`` was built (``diag/_walk.c``: the same chunks in
the same order, a container's references read by its own ``tp_traverse``, as
``gc.get_referents`` reads them); elsewhere in Python, with C doing the per-object work in
batches (``gc.get_referents(*chunk)``, ``map(sys.getrefcount, ...)``, ``map(sys.getsizeof,
...)``, ``itertools.compress``). The Python walk is the reference: the tests run both and
compare them object by object.

Labels move down a lattice (unvisited -> one owner -> entry of a shared region): each object is
walked at most twice, so the whole analysis is linear in the heap. Modules, classes and running
frames are boundaries: a walk stops there (another root container names what they hold), and
a source reached from another source stops a walk too (the source owns itself).

Weights: ``sys.getsizeof`` (which includes a ``bytearray``'s, an ``array.array``'s and an
owning numpy array's buffer), plus the real buffer of objects whose memory lies outside
Python's allocator: a torch tensor's storage (``untyped_storage().nbytes()``, each storage
once), an ``mmap``'s length, a PIL image's pixels, a ctypes object's own buffer. Tensors and
arrays that the holder search placed (``claimed``) weigh nothing here. torch, numpy, ctypes,
mmap and PIL are looked up in ``sys.modules``: nothing is imported that the host has not
imported.

Survivors: while tracemalloc traces (a window), ``_get_object_traceback`` is non-None exactly
for objects allocated since tracing began; those alive now are the window's survivors, counted
per owner as the walk passes them, with a sample kept for their allocation stacks.
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import sys
import threading
import types
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_accelerated: types.ModuleType | None
try:  # the walk's loop in C (setup.py builds it where a compiler is found)
    from diag import _walk as _accelerated
except ImportError:
    _accelerated = None
#: Whether the walk runs in C where ``diag._walk`` was built (the tests compare it with the
#: Python walk, which is the reference).
ACCELERATED = True
#: Objects handed to one ``gc.get_referents`` call: bounds the lists one chunk needs.
CHUNK = 4096
#: A single-reference object's refcount as ``map(sys.getrefcount, kids)`` sees it: its parent,
#: the ``kids`` list and the call's argument.
_SINGLE = 3
#: Labels below zero: a boundary (module, class, running frame): never walked into.
BOUNDARY = -1
#: An atom (str, int...) two owners reach, or an object two libraries share: not an owner, its
#: weight left with the first owner that reached it, and walked no more.
SHARED = -2

ROOT_MODULE = "module"
ROOT_CLASS = "class"
ROOT_THREAD = "thread"
ROOT_SHARED = "shared"

_STR = itertools.repeat(str)
_ATOMS = frozenset({str, bytes, int, float, bool, type(None), complex})


class Group(list):  # type: ignore[type-arg]
    """Objects that are one owner together, as a root container's entry: a thousand pending
    tasks of one coroutine. Each is a source under the entry's label, so a walk from elsewhere
    that reaches one of them stops there, as at any source. (A list of diag's own, never one
    of the host's: a host's list is an ordinary object.)"""


@dataclass
class RootContainer:
    """A namespace whose entries are sources: a module's globals, a class's namespace, a
    running frame's locals. ``name`` is what a path starts with ("svc", "svc.ChatMemory",
    "thread 'mixer'", which `` › function() › local`` follows); ``entries`` are (key, value)
    pairs; ``coarse``: one owner for the whole container (a library's module: nobody's leak
    unless it grows)."""

    kind: str
    name: str
    obj: Any  # the dict, class or frame (for rendering paths)
    entries: list[tuple[str, Any]]
    coarse: bool = False


class Owners:
    """The owners one analysis found: parallel arrays indexed by label (no tuple per owner)."""

    def __init__(self) -> None:
        self.objects: list[Any] = []  # the source (or shared entry) itself; for coarse: None
        self.containers: list[int] = []  # index into ``roots`` (-1 for a shared entry)
        self.keys: list[str] = []  # the variable, attribute or local name ("" when coarse)
        self.retained = array("q")
        self.count = array("q")  # objects retained (walked), survivors included
        self.survivors = array("q")
        self.survivor_bytes = array("q")
        self.found_from = array("q")  # for a shared entry: the owner whose walk found it
        self.shared_with = array("q")  # for a shared entry: the owner whose walk met it again
        self.by_type: list[dict[type, list[int]]] = []  # label -> survivors' type -> [count, bytes]
        self.coarse = bytearray()  # 1 for a library's whole container

    def add(
        self,
        obj: Any,
        container: int,
        key: str,
        found_from: int = -1,
        coarse: bool = False,
        shared_with: int = -1,
    ) -> int:
        self.coarse.append(coarse)
        self.objects.append(obj)
        self.containers.append(container)
        self.keys.append(key)
        for column in (self.retained, self.count, self.survivors, self.survivor_bytes):
            column.append(0)
        self.found_from.append(found_from)
        self.shared_with.append(shared_with)
        self.by_type.append({})
        return len(self.objects) - 1

    def __len__(self) -> int:
        return len(self.objects)


@dataclass
class Analysis:
    roots: list[RootContainer]
    owners: Owners
    complete: bool
    visited: int  # objects walked
    multi: int  # entries of the id -> owner dict (diag's own memory, the largest part)
    labels: dict[int, int]  # id -> owner, for objects with more than one reference
    #: A shared entry folded into another (label -> the label that holds its figures now):
    #: see ``fold_shared``. Survivors and labels of the folded entry count to the other.
    folded: dict[int, int]

    @functools.cached_property
    def folded_into(self) -> set[int]:
        """The labels that shared entries were folded into."""
        return set(self.folded.values())


# -- weights -----------------------------------------------------------------------------------


class Weigher:
    """``sys.getsizeof`` for everything, the real buffer for the few types whose memory lies
    outside Python's allocator (found per chunk with one C ``set(map(type, ...))``)."""

    def __init__(self, claimed: Iterable[int] = ()) -> None:
        self.claimed = set(claimed)  # ids already counted elsewhere (the tensor census)
        self.storages: set[tuple[str, int]] = set()
        torch = sys.modules.get("torch")
        self.tensor: type | None = getattr(torch, "Tensor", None)
        # Special only so that a claimed array weighs nothing here: its buffer is in its
        # sys.getsizeof, and the holder search counts it (a holder and this walk's owner
        # of the same dict of arrays each counted it, twice in the growth account).
        self.array: type | None = getattr(sys.modules.get("numpy"), "ndarray", None)
        # A ctypes array or structure keeps its buffer outside the object (create_string_buffer,
        # a C struct filled by a library); sys.getsizeof counts only the object.
        ctypes = sys.modules.get("ctypes")
        self.c_data: tuple[type, ...] = (
            (ctypes.Array, ctypes.Structure, ctypes.Union) if ctypes is not None else ()
        )
        mmap = sys.modules.get("mmap")
        self.mmap: type | None = getattr(mmap, "mmap", None)
        pil = sys.modules.get("PIL.Image")
        self.image: type | None = getattr(pil, "Image", None)
        self.known: dict[type, bool] = {}  # type -> special (the C walk reads it too)

    def special(self, kind: type) -> bool:
        known = self.known.get(kind)
        if known is None:
            known = self.known[kind] = bool(
                (self.tensor is not None and issubclass(kind, self.tensor))
                or (self.mmap is not None and issubclass(kind, self.mmap))
                or (self.image is not None and issubclass(kind, self.image))
                or (self.array is not None and issubclass(kind, self.array))
                or issubclass(kind, self.c_data)
            )
        return known

    def extra(self, obj: Any) -> int:
        """Bytes outside Python's allocator that ``obj`` keeps (a tensor's storage, once)."""
        if id(obj) in self.claimed:
            return -sizeof(obj)  # counted by its holder already: weighs nothing here
        kind = type(obj)
        try:
            if self.tensor is not None and issubclass(kind, self.tensor):
                storage = obj.untyped_storage()
                key = (str(obj.device), int(storage.data_ptr()))
                if key in self.storages or key[1] == 0:
                    return 0
                self.storages.add(key)
                return int(storage.nbytes())
            if self.mmap is not None and issubclass(kind, self.mmap):
                return 0 if obj.closed else len(obj)
            if self.image is not None and issubclass(kind, self.image):
                return pil_pixel_bytes(obj)
            if issubclass(kind, self.c_data):
                return c_buffer_bytes(obj)
        except Exception:  # a meta tensor, a closed map, a subclass that refuses
            return 0
        return 0


def pil_pixel_bytes(image: Any) -> int:
    """The pixel buffer a PIL image holds: width × height × Pillow's bytes per pixel (1 for
    modes "1", "L" and "P", 2 for "I;16" and its kin, 4 for every other mode, which Pillow
    keeps in 32-bit pixels). Read from the image's core (``_im``, ``im`` before Pillow 10) as
    it is, so that a lazily opened file that was never loaded weighs nothing, as in memory."""
    core = vars(image).get("_im", vars(image).get("im"))
    if core is None:
        return 0
    width, height = core.size
    mode = core.mode
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return int(width) * int(height) * per_pixel


#: ctypes keeps a buffer of up to 16 bytes inside the object (its b_value), counted already.
_CTYPES_INLINE = 16


def c_buffer_bytes(obj: Any) -> int:
    """The buffer a ctypes object allocated for itself (not one it only points into: an
    ``from_buffer`` view, a structure inside another, which ``_b_needsfree_`` says)."""
    size = sys.modules["ctypes"].sizeof(obj)  # loaded: obj is one of its objects
    return size if obj._b_needsfree_ and size > _CTYPES_INLINE else 0


def sizeof(obj: Any) -> int:
    try:
        return sys.getsizeof(obj)
    except Exception:  # a __sizeof__ that raises
        return 0


def _sizes(objects: list[Any]) -> int:
    try:
        return sum(map(sys.getsizeof, objects))
    except Exception:
        return sum(map(sizeof, objects))


# -- survivors ---------------------------------------------------------------------------------

_MANAGED_DICT = 1 << 4
#: The containers CPython stops tracking while they hold only objects the gc does not track.
_UNTRACKED_CONTAINERS = frozenset({dict, tuple})


def str_keys(objects: Sequence[Any]) -> list[Any]:
    """The str keys of the dicts among ``objects``, each as often as a dict holds it: a dict
    whose keys are all str does not show them to the gc."""
    dicts = itertools.compress(objects, map(issubclass, map(type, objects), itertools.repeat(dict)))
    # dict.__iter__, not the object's own: a subclass's __iter__ is the host's code.
    keys = list(itertools.chain.from_iterable(map(dict.__iter__, dicts)))
    return list(itertools.compress(keys, map(operator.is_, map(type, keys), _STR)))


def born(objects: Sequence[Any], exact: Callable[[Any], Any] | None = None) -> list[Any]:
    """The objects allocated since tracemalloc started tracing, among ``objects`` (the gc's)
    and what the gc does not track beneath them (bytes, str, and the containers CPython
    untracks because they hold only such atoms: a dict of str, a tuple of numbers, and what
    those hold in turn): ``_get_object_traceback`` is non-None exactly for those, and costs no
    allocation for the others. 3.11's misses objects with a managed dict (it does not step
    over the pointers before their gc header): those are asked one by one through ``exact``.
    Empty when tracemalloc does not trace."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    import _tracemalloc

    traced: Callable[[Any], Any] = _tracemalloc._get_object_traceback
    compress = itertools.compress
    untracked = functools.partial(itertools.filterfalse, gc.is_tracked)
    is_container = _UNTRACKED_CONTAINERS.__contains__
    found: list[Any] = list(compress(objects, map(traced, objects)))
    beneath: list[Any] = []  # new and untracked: found through what refers to them
    for start in range(0, len(objects), CHUNK):
        parents: Sequence[Any] = objects[start : start + CHUNK]
        # Level by level: a session's turns as dicts of str are untracked dicts, and their
        # strings, most of the bytes, lie one level further down than the tracked list.
        while parents:
            kids = gc.get_referents(*parents)
            beneath.extend(untracked(compress(kids, map(traced, kids))))
            # A dict whose keys are all str does not show them to the gc (a cache keyed by
            # prompts keeps them as keys): its str keys are asked too.
            strs = str_keys(parents)
            beneath.extend(compress(strs, map(traced, strs)))
            del strs
            # Untracked containers are descended whether or not they are new themselves (a
            # dict may come from the free list, which tracemalloc does not see; a str -> str
            # cache stays untracked as it grows). They hold no tracked object, so they form
            # no cycle: each descent ends.
            containers = list(untracked(compress(kids, map(is_container, map(type, kids)))))
            parents = list(compress(containers, map(len, containers)))  # empty ones are many
            del kids
    # Each once, however many refer to it (a str key shared by many dicts is listed for each).
    found.extend(dict(zip(map(id, beneath), beneath, strict=True)).values())
    if exact is not None and sys.version_info[:2] == (3, 11):
        managed = {k for k in set(map(type, objects)) if k.__flags__ & _MANAGED_DICT}
        if managed:
            have = set(map(id, found))
            for obj in objects:
                if type(obj) in managed and id(obj) not in have and exact(obj) is not None:
                    found.append(obj)
    return found


def _count_survivors(
    owners: Owners,
    labels: dict[int, int],
    survivors: Sequence[Any],
    folded: dict[int, int],
    claimed: set[int],
) -> None:
    """Each survivor to its owner (a folded entry's to the one it was folded into): count,
    bytes, and by type. A claimed survivor (a tensor or array the holder search placed) is
    counted but weighs nothing here, as in the walk: its holder weighs it."""
    get = labels.get
    for obj in survivors:
        label = get(id(obj))
        if label is None or label < 0:
            continue  # reached from no root (held from C) or a root itself
        label = folded.get(label, label)
        size = 0 if id(obj) in claimed else sizeof(obj)
        owners.survivors[label] += 1
        owners.survivor_bytes[label] += size
        by_type = owners.by_type[label]
        entry = by_type.get(type(obj))
        if entry is None:
            entry = by_type[type(obj)] = [0, 0]
        entry[0] += 1
        entry[1] += size


# -- roots -------------------------------------------------------------------------------------


def running_frames(skip_files: Sequence[str] = ()) -> list[tuple[str, types.FrameType]]:
    """("thread 'name'", frame) for every frame of every thread, innermost first, except
    modules' top-level frames (their locals are their globals) and frames of ``skip_files``
    (path prefixes: diag's own)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    prefixes = tuple(skip_files)
    found = []
    for ident, frame in sys._current_frames().items():
        where = f"thread {names.get(ident, ident)!r}"
        current: types.FrameType | None = frame
        while current is not None:
            code = current.f_code
            if code.co_name != "<module>" and not (
                prefixes and code.co_filename.startswith(prefixes)
            ):
                found.append((where, current))
            current = current.f_back
        del frame
    return found


def all_classes() -> list[type]:
    """Every class, from ``object.__subclasses__()`` down (C calls, a few thousand)."""
    seen: set[int] = set()
    out: list[type] = []
    stack: list[type] = [object]
    while stack:
        cls = stack.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        out.append(cls)
        try:
            stack.extend(type.__subclasses__(cls))
        except TypeError:  # a metaclass's subclasses need the metaclass itself
            continue
    return out


def class_namespace(cls: type) -> dict[str, Any] | None:
    """A class's real namespace: a heap type's referents hold it (the only dict among them);
    a static type has none (its namespace holds C descriptors)."""
    return next((r for r in gc.get_referents(cls) if type(r) is dict), None)


def collect_roots(
    is_user_module: Callable[[str, Any], bool], skip_files: Sequence[str] = ()
) -> tuple[list[RootContainer], list[Any]]:
    """The root containers (user modules, classes and thread frames entry by entry; library
    modules and classes one coarse container each) and the boundary objects (modules, their
    globals, classes, their namespaces, running frames)."""
    roots: list[RootContainer] = []
    boundaries: list[Any] = [sys.modules]
    coarse_of: dict[str, int] = {}
    modules = sorted(sys.modules.items(), key=lambda kv: kv[0].startswith("__mp_"))
    seen_dicts: set[int] = set()
    for name, module in modules:
        namespace = getattr(module, "__dict__", None)
        boundaries.append(module)
        if type(namespace) is not dict or id(namespace) in seen_dicts:
            continue
        seen_dicts.add(id(namespace))
        boundaries.append(namespace)
        entries = [(k, v) for k, v in list(namespace.items()) if type(k) is str]
        user = is_user_module(name, module)
        if not user:
            coarse_of[name] = len(roots)
        roots.append(RootContainer(ROOT_MODULE, name, namespace, entries, coarse=not user))
    for cls in all_classes():
        boundaries.append(cls)
        real = class_namespace(cls)
        if real is None:
            continue
        boundaries.append(real)
        module_name = getattr(cls, "__module__", None)
        module_name = module_name if type(module_name) is str else "builtins"
        entries = [(k, v) for k, v in list(real.items()) if type(k) is str]
        index = coarse_of.get(module_name)
        if index is not None:  # a library's class: part of its module's coarse owner
            roots[index].entries.extend(entries)
            continue
        qualname = getattr(cls, "__qualname__", cls.__name__)
        name = f"{module_name}.{qualname}" if module_name != "builtins" else str(qualname)
        owning = sys.modules.get(module_name)
        user = owning is not None and is_user_module(module_name, owning)
        roots.append(RootContainer(ROOT_CLASS, name, cls, entries, coarse=not user))
    for where, frame in running_frames(skip_files):
        boundaries.append(frame)
        try:
            local = list(frame.f_locals.items())
        except Exception:
            continue
        entries = [(k, v) for k, v in local if type(k) is str]
        roots.append(RootContainer(ROOT_THREAD, where, frame, entries))
        del frame
    return roots, boundaries


# -- the walk ----------------------------------------------------------------------------------


class _Walk:
    def __init__(
        self,
        labels: dict[int, int],
        owners: Owners,
        weigher: Weigher,
        sources: set[int],
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self.labels = labels
        self.owners = owners
        self.weigher = weigher
        self.sources = sources
        self.deadline = deadline
        self.clock = clock
        self.visited = 0
        self.out_of_time = False
        #: Shared entries found during a walk, walked (relabelled) after it: (object, the
        #: label it had, the label whose walk met it again).
        self.entries: list[tuple[Any, int, int]] = []

    def walk(self, start: list[Any], label: int, relabel_from: int | None = None) -> None:
        """Everything ``start`` reaches that no one else does, to ``label``. With
        ``relabel_from``: move to ``label`` what ``relabel_from`` had (a shared entry's region).
        In C where ``diag._walk`` was built (the same steps), else in Python."""
        accelerated = _accelerated if ACCELERATED else None
        if accelerated is not None:
            retained, count, out_of_time = accelerated.walk(
                list(start),
                label,
                relabel_from,
                self.labels,
                self.sources,
                self.owners.coarse,
                self.weigher.known,
                self.weigher.special,
                self.weigher.extra,
                self.entries,
                self.deadline,
                self.clock,
                sys.getsizeof,
            )
            self.out_of_time = self.out_of_time or out_of_time
            self._tally(label, relabel_from, retained, count)
            return
        self._walk_in_python(start, label, relabel_from)

    def _tally(self, label: int, relabel_from: int | None, retained: int, count: int) -> None:
        owners = self.owners
        self.visited += count
        owners.retained[label] += retained
        owners.count[label] += count
        if relabel_from is not None:  # what the shared entry took from its first owner
            owners.retained[relabel_from] -= retained
            owners.count[relabel_from] -= count

    def _walk_in_python(self, start: list[Any], label: int, relabel_from: int | None) -> None:
        owners = self.owners
        labels = self.labels
        get = labels.get
        sources = self.sources
        getrefcount = sys.getrefcount
        compress = itertools.compress
        not_ = operator.not_
        # CHUNK objects per C call, siblings together: their children share the calls, however
        # many small containers there are. Last found, first walked: a chunk's children are
        # walked while the C calls that found them left them in the CPU's cache.
        pending: list[Any] = list(start)
        retained = count = 0
        # Labels that need nothing more: this owner's, a boundary, a shared atom, and (the
        # free objects, handled apart) none.
        settled = {label, BOUNDARY, SHARED, None}.__contains__
        coarse = owners.coarse
        is_free = (None,).__contains__ if relabel_from is None else (relabel_from,).__contains__
        while pending:
            if self.clock() > self.deadline:
                self.out_of_time = True
                break
            chunk = pending[-CHUNK:]
            del pending[-CHUNK:]
            weight = _sizes(chunk)
            kinds = set(map(type, chunk))
            for kind in kinds:
                if self.weigher.special(kind):
                    weight += sum(self.weigher.extra(o) for o in chunk if type(o) is kind)
            retained += weight
            count += len(chunk)
            kids = gc.get_referents(*chunk)
            if any(issubclass(kind, dict) for kind in kinds):
                # A dict whose keys are all str does not show them to the gc: listed here,
                # once per object (the same interned key comes in thousands of dicts). A key
                # listed twice (a dict with keys of other types shows them) has then more than
                # one reference and is counted once, through ``labels``.
                strs = str_keys(chunk)
                kids.extend(dict(zip(map(id, strs), strs, strict=True)).values())
                del strs
            del chunk
            if not kids:
                continue
            # Split by refcount (a Python loop: faster than a ``compress`` pass per list). An
            # atom with one reference is weighed now, while the CPU still has it in its cache:
            # it refers to nothing, so there is nothing to walk.
            nxt: list[Any] = []
            many: list[Any] = []
            atoms: list[Any] = []
            one, more, atom = nxt.append, many.append, atoms.append
            for kid, refs in zip(kids, list(map(getrefcount, kids)), strict=True):
                if refs > _SINGLE:
                    more(kid)
                elif type(kid) in _ATOMS:
                    atom(kid)
                else:
                    one(kid)
            del kids
            if atoms:
                retained += _sizes(atoms)
                count += len(atoms)
                atoms.clear()
            if many:
                # Once per object: a type, a small int or a None comes thousands of times.
                unique = dict(zip(map(id, many), many, strict=True))
                many.clear()
                had: list[Any] = list(map(get, unique))  # None: unlabelled
                # Free (unlabelled; when relabelling, the first owner's): this owner's now.
                # (An unlabelled object is never a source: sources are labelled first.)
                free = list(map(is_free, had))
                if relabel_from is not None:
                    # A source keeps its label when a shared entry below it refers back to
                    # it (a child to its parent, a task to its loop): the entry takes only
                    # what lies below itself, never the source and all that source holds.
                    free = list(map(operator.gt, free, map(sources.__contains__, unique)))
                labels.update(zip(compress(unique, free), itertools.repeat(label)))
                nxt.extend(compress(unique.values(), free))
                del free
                if relabel_from is None:  # relabelling: a third owner's stays where it is
                    # Reached before from another owner: owned by neither. It is an entry of
                    # a shared region, an owner of its own (walked after this one).
                    reached = zip(unique, unique.values(), had, strict=True)
                    for ident, obj, owner in compress(reached, map(not_, map(settled, had))):
                        if ident in sources:
                            continue  # another source: it owns itself
                        if type(obj) in _ATOMS or (coarse[owner] and coarse[label]):
                            labels[ident] = SHARED  # libraries sharing their own: not an owner
                            continue
                        self.entries.append((obj, owner, label))
                del had, unique
            del many
            pending.extend(nxt)
            del nxt
        del pending
        self._tally(label, relabel_from, retained, count)

    def settle_entries(self) -> None:
        """Each shared entry becomes an owner: what its first owner's walk gave it, moved."""
        while self.entries and not self.out_of_time:
            obj, had, met = self.entries.pop()
            ident = id(obj)
            if self.labels.get(ident) != had or ident in self.sources:
                continue  # settled already (an entry below another entry)
            label = self.owners.add(obj, -1, "", found_from=had, shared_with=met)
            self.sources.add(ident)
            self.labels[ident] = label
            self.walk([obj], label, relabel_from=had)


def analyse(
    roots: list[RootContainer],
    boundaries: Sequence[Any],
    *,
    deadline: float,
    clock: Callable[[], float],
    claimed: Iterable[int] = (),
    survivors: Sequence[Any] = (),
) -> Analysis:
    """Walk every source's region (see the module's docstring). ``claimed``: ids of objects
    whose weight another part counts (the tensors the holder search places). ``survivors``:
    the window's survivors (see ``born``); the caller's list holds them, so each has more than
    one reference and its owner is recorded in ``labels``."""
    owners = Owners()
    labels: dict[int, int] = dict.fromkeys(map(id, boundaries), BOUNDARY)
    sources: set[int] = set()
    plan: list[tuple[list[Any], int]] = []
    ordered = sorted(range(len(roots)), key=lambda i: roots[i].coarse)
    for index in ordered:
        root = roots[index]
        if root.coarse:
            label = owners.add(None, index, "", coarse=True)
            values = []
            for _, value in root.entries:
                if id(value) not in labels and type(value) not in _ATOMS:
                    labels[id(value)] = label
                    values.append(value)
            plan.append((values, label))
            continue
        for key, value in root.entries:
            if id(value) in labels:
                continue  # a module, a class, an alias of a source named already
            label = owners.add(value, index, key)
            members = [value]
            if type(value) is Group:
                members = [m for m in value if id(m) not in labels]
                labels.update(dict.fromkeys(map(id, members), label))
                sources.update(map(id, members))
            labels[id(value)] = label
            sources.add(id(value))
            plan.append((members, label))
    weigher = Weigher(claimed)
    walk = _Walk(
        labels,
        owners,
        weigher,
        sources,
        deadline,
        clock,
    )
    # Users' sources come first: within the budget they matter most; then libraries' (coarse).
    for start, label in plan:
        if walk.out_of_time:
            break
        walk.walk(start, label)
        walk.settle_entries()
    plan.clear()
    for root in roots:  # its (key, value) pairs refer to the values: a holder search must not
        root.entries.clear()  # find them (the sources are in ``owners.objects``, its caller's)
    folded = fold_shared(owners)
    _count_survivors(owners, labels, survivors, folded, weigher.claimed)
    return Analysis(
        roots=roots,
        owners=owners,
        complete=not walk.out_of_time,
        visited=walk.visited,
        multi=len(labels),
        labels=labels,
        folded=folded,
    )


def fold_shared(owners: Owners) -> dict[int, int]:
    """Shared entries that the same two sources share, folded into the first of them: a
    thousand small lists that two indexes of a service both hold (by id and by name) are one
    owner, not a thousand owners each too small to name, and their growth is seen. Only
    entries between two sources (not below another entry) are folded. Returns each folded
    label -> the label that took its figures (the others' are zeroed)."""
    first_of: dict[tuple[int, int], int] = {}
    folded: dict[int, int] = {}
    containers = owners.containers
    for label in range(len(owners)):
        if containers[label] >= 0:
            continue
        had, met = owners.found_from[label], owners.shared_with[label]
        if had < 0 or met < 0 or containers[had] < 0 or containers[met] < 0:
            continue
        into = first_of.setdefault((had, met), label)
        if into == label:
            continue
        folded[label] = into
        for column in (owners.retained, owners.count):
            column[into] += column[label]
            column[label] = 0
    return folded


# -- a dominator tree, for small graphs --------------------------------------------------------


def immediate_dominators(successors: Sequence[Sequence[int]], root: int = 0) -> list[int]:
    """The immediate dominator of every node of a graph given as adjacency lists (node ->
    successors), by Cooper, Harvey and Kennedy's iterative algorithm over reverse postorder.
    Unreachable nodes get -1; the root is its own dominator. For graphs the census builds
    itself (a shared region's few entries, tests): the heap walk above avoids per-edge Python."""
    size = len(successors)
    order: list[int] = []  # postorder
    number = [-1] * size
    seen = bytearray(size)
    seen[root] = 1
    stack: list[tuple[int, int]] = [(root, 0)]
    while stack:
        node, child = stack[-1]
        kids = successors[node]
        if child < len(kids):
            stack[-1] = (node, child + 1)
            nxt = kids[child]
            if not seen[nxt]:
                seen[nxt] = 1
                stack.append((nxt, 0))
        else:
            stack.pop()
            number[node] = len(order)
            order.append(node)
    predecessors: list[list[int]] = [[] for _ in range(size)]
    for node in order:
        for nxt in successors[node]:
            predecessors[nxt].append(node)
    idom = [-1] * size
    idom[root] = root
    changed = True
    while changed:
        changed = False
        for node in reversed(order):
            if node == root:
                continue
            new = -1
            for pred in predecessors[node]:
                if idom[pred] == -1:
                    continue
                if new == -1:
                    new = pred
                    continue
                a, b = pred, new
                while a != b:
                    while number[a] < number[b]:
                        a = idom[a]
                    while number[b] < number[a]:
                        b = idom[b]
                new = a
            if new != idom[node]:
                idom[node] = new
                changed = True
    return idom
