"""Who holds these objects? Readable paths from a root to the holders of many objects at once.

Finding a holder per object (objgraph's find_backref_chain) walks the heap once per object:
~0.2 s each on a large heap, hours for 10,000 leaked tensors. Leaks are rarely scattered:
thousands of objects sit in a few containers. So the search works on holders, not objects:

1. Take a small sample of the targets not yet placed and ask the garbage collector, in C, who
   refers to them (``gc.get_referrers``: one pass over the heap for the whole sample).
2. Each holder found claims every target it refers to directly (one look at its referents),
   so one holder found for one sampled tensor places all 10,000 it keeps.
3. From each holder, walk up the referrers level by level (one C pass each) to a root: a
   module's globals, a class, a thread's frame, until the path is readable.

Types are tested with ``type(x) is ...``, never ``isinstance``: on an arbitrary heap object
isinstance may read ``__class__``, which a lazy module turns into an import or a warning.
The search skips its own bookkeeping (every list, dict and frame it creates) and stops when its
time budget runs out, saying so. Pure: it reads the heap, changes nothing.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SAMPLE = 32
MAX_DEPTH = 12


@dataclass
class Holder:
    path: str  # readable, from a root: "tts_service._AUDIO_CACHE"
    kind: str  # the holder's type: "dict", "list", "MyCache"...
    objects: list[Any] = field(default_factory=list)  # the targets it holds directly

    @property
    def count(self) -> int:
        return len(self.objects)


@dataclass
class Ownership:
    holders: list[Holder]
    unplaced: int  # targets no holder was found for within the budget
    orphans: int  # targets only the caller holds (garbage to be, or kept by C code)
    seconds: float
    complete: bool


def _roots() -> dict[int, str]:
    """Objects that name a root: module globals, and thread frames."""
    roots: dict[int, str] = {}
    # Aliases (torch registers __main__ again as __mp_main__) last, so the real name wins.
    for name, module in sorted(sys.modules.items(), key=lambda kv: kv[0].startswith("__mp_")):
        namespace = getattr(module, "__dict__", None)
        if type(namespace) is dict:
            roots.setdefault(id(namespace), name)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        current: types.FrameType | None = frame
        while current is not None:
            roots.setdefault(id(current), f"thread {names.get(ident, ident)!r}")
            current = current.f_back
    return roots


def _edge(parent: Any, child: Any) -> str:
    """How ``parent`` refers to ``child``, as a path step."""
    if type(parent) is dict:
        for key, value in parent.items():
            if value is child:
                return f".{key}" if isinstance(key, str) and key.isidentifier() else "[<key>]"
            if key is child:
                return "[<key>]"
        return "[?]"
    if type(parent) in (list, tuple):
        for index, value in enumerate(parent):
            if value is child:
                return f"[{index}]"
        return "[?]"
    if type(parent) is types.FrameType:
        for name, value in parent.f_locals.items():
            if value is child:
                return f" › {parent.f_code.co_name}() › {name}"
        return f" › {parent.f_code.co_name}()"
    if type(child) is dict and (issubclass(type(parent), type) or _namespace_of(parent) is child):
        return ""  # a class's or an instance's namespace: its attributes read as obj.attr
    if type(parent) is types.CellType:
        return ""
    if type(parent) in (set, frozenset):
        return "{<member>}"
    if type(parent).__name__ == "_lru_cache_wrapper":
        return " (its functools.lru_cache)"
    return f"<{type(parent).__name__}>"


class _Search:
    def __init__(self, targets: Sequence[Any], deadline: float) -> None:
        self.targets = targets
        self.deadline = deadline
        self.own: set[int] = set()
        self.roots = _roots()
        self._note(self.roots, targets)

    def _note(self, *objects: Any) -> None:
        """The search's own objects are never holders."""
        for obj in objects:
            self.own.add(id(obj))

    def referrers(self, objects: tuple[Any, ...]) -> list[Any]:
        """Who refers to ``objects`` (one C pass over the heap). An exact tuple is passed to
        the C function as it is, so no argument tuple of ours shows up as a referrer."""
        frame = sys._getframe()
        self._note(objects)
        found = gc.get_referrers(*objects)
        self._note(found)
        out = [r for r in found if id(r) not in self.own and r is not frame and not _is_ours(r)]
        self._note(out)
        return out

    def path_of(self, holder: Any) -> str:
        """Walk up from a holder to a root, one C pass per level."""
        steps: list[str] = []
        current = holder
        for _ in range(MAX_DEPTH):
            root = self.roots.get(id(current))
            if root is not None:
                return root + "".join(reversed(steps))
            if time.monotonic() > self.deadline:
                break
            parents = self.referrers((current,))
            if not parents:
                break
            if type(current) is types.CellType:
                closure = self._closure_owner(current, parents)
                if closure is not None:
                    function, name = closure
                    steps.append(f" › {name} (closure of {function.__qualname__}())")
                    current = function
                    continue
            parent = _best_parent(parents, self.roots)
            steps.append(_edge(parent, current))
            if type(parent) is types.FrameType and id(parent) in self.roots:
                return self.roots[id(parent)] + "".join(reversed(steps))
            current = parent
        return f"<unreachable {type(holder).__name__}>" + "".join(reversed(steps))

    def _closure_owner(self, cell: Any, parents: list[Any]) -> tuple[Any, str] | None:
        """The function whose closure holds ``cell``, and the free variable's name."""
        for closure in parents:
            if type(closure) is not tuple:
                continue
            for function in self.referrers((closure,)):
                if type(function) is types.FunctionType and function.__closure__ is closure:
                    return function, function.__code__.co_freevars[closure.index(cell)]
        return None

    def scan_frames(self, pending: dict[int, Any]) -> list[Holder]:
        """Running frames keep their locals outside the gc's reach: look at them directly,
        a few levels into the containers and objects they hold."""
        holders: list[Holder] = []
        names = {t.ident: t.name for t in threading.enumerate()}
        own_thread = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            current: types.FrameType | None = frame
            while current is not None:
                ours = ident == own_thread and current.f_code.co_filename == __file__
                # A module's top-level frame holds its globals: the module root names them.
                if not ours and current.f_code.co_name != "<module>":
                    where = f"thread {names.get(ident, ident)!r} › {current.f_code.co_name}()"
                    for name, value in list(current.f_locals.items()):
                        # A module in a local is a root of its own: named by the search.
                        if id(value) not in self.own and type(value) is not types.ModuleType:
                            self._scan_local(f"{where} › {name}", value, pending, holders)
                current = current.f_back
        return holders

    def _scan_local(
        self, path: str, value: Any, pending: dict[int, Any], holders: list[Holder]
    ) -> None:
        if id(value) in pending:
            holders.append(Holder(path, type(value).__name__, [pending.pop(id(value))]))
            return
        seen = {id(value)}
        frontier = [(path, value)]
        for _ in range(FRAME_DEPTH):
            deeper = []
            for where, obj in frontier:
                if id(obj) in self.own:
                    continue
                inside = gc.get_referents(obj) if type(obj) in _CONTAINERS else ()
                held = [pending.pop(id(v)) for v in inside if id(v) in pending]
                if held:
                    holders.append(Holder(where, type(obj).__name__, held))
                    continue
                if type(obj) in _CONTAINERS and len(obj) > EXPAND_AT_MOST:
                    continue  # looked into for targets, not walked further: stay cheap
                for step, child in _children(obj):
                    if id(child) not in seen and id(child) not in pending:
                        seen.add(id(child))
                        deeper.append((where + step, child))
            frontier = deeper


_CONTAINERS = (list, dict, tuple, set, frozenset)
FRAME_DEPTH = 3
EXPAND_AT_MOST = 1000


def _namespace_of(obj: Any) -> Any:
    try:
        return object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None


def _children(value: Any) -> list[tuple[str, Any]]:
    """(step, child) pairs one level into a local: container items, attributes."""
    kind = type(value)
    if kind is dict:
        return [(_edge(value, v), v) for v in list(value.values())]
    if kind in (list, tuple):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if kind in (set, frozenset):
        return [("{<member>}", v) for v in value]
    if kind is types.ModuleType:
        return []  # a root of its own: the heap search names what it holds
    if kind is types.FunctionType and value.__closure__:
        names = value.__code__.co_freevars
        return [
            (f" › {name} (closure of {value.__qualname__}())", cell.cell_contents)
            for name, cell in zip(names, value.__closure__, strict=False)
            if _cell_filled(cell)
        ]
    namespace = _namespace_of(value)
    if type(namespace) is dict:
        return [(f".{k}", v) for k, v in list(namespace.items()) if type(k) is str]
    return []


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _is_ours(obj: Any) -> bool:
    return type(obj) is types.FrameType and obj.f_code.co_filename == __file__


def _best_parent(parents: list[Any], roots: dict[int, str]) -> Any:
    """Prefer a root, then a module-level or instance namespace (dict), then anything."""
    for parent in parents:
        if id(parent) in roots:
            return parent
    for parent in parents:
        if type(parent) is dict:
            return parent
    return parents[0]


def find_holders(targets: Iterable[Any], time_budget: float = 2.0) -> Ownership:
    """Group ``targets`` by the containers that hold them directly, with readable paths. The
    ``targets`` container itself (the caller's list) is not a holder."""
    started = time.monotonic()
    pending = {id(t): t for t in targets}
    search = _Search(list(pending.values()), started + time_budget)
    search._note(targets, pending)
    holders: list[Holder] = search.scan_frames(pending)
    by_id: dict[int, Holder] = {}
    orphans = 0
    while pending and time.monotonic() < search.deadline:
        sample = tuple(itertools.islice(pending.values(), SAMPLE))
        direct = search.referrers(sample)
        placed_any = False
        for container in direct:
            if id(container) in by_id:
                continue
            held = [pending.pop(id(r)) for r in gc.get_referents(container) if id(r) in pending]
            if not held:
                continue
            placed_any = True
            holder = Holder(search.path_of(container), type(container).__name__, held)
            by_id[id(container)] = holder
            holders.append(holder)
        if not placed_any:
            for t in sample:  # held by nothing but the search and the caller
                if pending.pop(id(t), None) is not None:
                    orphans += 1
    holders.sort(key=lambda h: -h.count)
    seconds = time.monotonic() - started
    return Ownership(holders, len(pending), orphans, seconds, complete=not pending)
