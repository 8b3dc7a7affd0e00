"""Who holds these objects? Readable paths from a root to the holders of many objects at once.

Finding a holder per object (objgraph's find_backref_chain) walks the heap once per object:
~0.2 s each on a large heap, hours for 10,000 leaked tensors. Leaks are rarely scattered:
thousands of objects sit in a few containers. So the search works on holders, not objects:

1. Take a small sample of the targets not yet placed and ask the garbage collector, in C, who
   refers to them (``gc.get_referrers``: one pass over the heap for the whole sample).
2. Each holder found claims every target it refers to directly (one look at its referents),
   so one holder found for one sampled tensor places all 10,000 it keeps.
3. From each holder, walk up the referrers level by level (one pass over the heap per level
   for all holders: in C for a few, in Python for many) to a root: a module's globals, a
   thread's running frame.

Nothing here knows a list of leak patterns: a path is whatever chain of references the heap
has, and each step is named by how the parent refers to the child (a key, an index, an
attribute, a frame's local, a closure's cell, a function's default, an exception's traceback).
Data keys are shown by type only (``[<str>]``) unless ``reveal`` is asked: they may be user
content.

Types are tested with ``type(x) is ...``/``issubclass(type(x), ...)``, never ``isinstance``: on
an arbitrary heap object isinstance may read ``__class__``, which a lazy module turns into an
import or a warning. The search skips its own bookkeeping (every list, dict and frame it
creates) and stops when its time budget runs out, saying so. It reads the heap and changes
nothing, except that naming an attribute of a 3.11 instance may create its ``__dict__``.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import threading
import time
import types
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diag import OWN_DIRS

SAMPLE = 32
MAX_DEPTH = 12
KEY_SHOWN_AT_MOST = 40


@dataclass
class Link:
    """One node of a holder's chain from its root: the step that reaches it, and its type."""

    step: str
    type: str


@dataclass
class Holder:
    path: str  # readable, from a root: "tts_service._AUDIO_CACHE"
    kind: str  # the holder's type: "dict", "list", "MyCache"...
    objects: list[Any] = field(default_factory=list)  # the targets it holds directly
    chain: list[Link] = field(default_factory=list)  # root first, the holder last
    ident: int = 0  # id() of the holder object, while it lives

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
    for thread, frame in _running_frames(users_only=False):
        roots.setdefault(id(frame), thread)
    return roots


# -- naming one step ----------------------------------------------------------------------


def _namespace_of(obj: Any) -> Any:
    try:
        return object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        return None


def _is_dict(obj: Any) -> bool:
    return issubclass(type(obj), dict)


def _key_text(key: Any, reveal: bool) -> str:
    if reveal:
        text = repr(key)
        return text if len(text) <= KEY_SHOWN_AT_MOST else text[: KEY_SHOWN_AT_MOST - 1] + "…"
    return f"<{type(key).__name__}>"


#: nn.Module keeps submodules, parameters and buffers in dicts its __getattr__ reads as
#: attributes: ``model.encoder``, not ``model._modules['encoder']``.
_ATTRIBUTE_DICTS = ("_modules", "_parameters", "_buffers")


def _reads_as_attributes(grand: Any, parent: Any) -> bool:
    """Do ``parent``'s (a dict's) keys read as attributes of ``grand``: its ``__dict__``, a
    class's namespace, or one of nn.Module's ``_modules``/``_parameters``/``_buffers``?"""
    if grand is None:
        return False
    if issubclass(type(grand), type) or _namespace_of(grand) is parent:
        return True
    namespace = grand if type(grand) is dict else _namespace_of(grand)
    if type(namespace) is dict:
        return any(namespace.get(name) is parent for name in _ATTRIBUTE_DICTS)
    return False


def _step(grand: Any, parent: Any, child: Any, reveal: bool, namespace: bool) -> str:
    """How ``parent`` refers to ``child``; ``grand`` is the parent's own parent (or None).
    ``namespace`` says the parent is a module's globals."""
    kind = type(parent)
    if _is_dict(parent):
        items = list(dict.items(parent))
        for key, value in items:
            if value is child:
                if type(key) is str and (namespace or _reads_as_attributes(grand, parent)):
                    return f".{key}"
                if type(grand) is types.FunctionType and grand.__kwdefaults__ is parent:
                    return f" (default argument {key})"
                return f"[{_key_text(key, reveal)}]"
        if any(key is child for key, _ in items):
            return "{<key>}"
        return "[?]"
    if kind is tuple and type(grand) is types.FunctionType and grand.__closure__ is parent:
        for name, cell in zip(grand.__code__.co_freevars, grand.__closure__, strict=False):
            if cell is child:
                return f" › {name} (closure of {grand.__qualname__}())"
    defaults = grand.__defaults__ if type(grand) is types.FunctionType else None
    if kind is tuple and defaults is not None and defaults is parent:
        code = grand.__code__
        first = code.co_argcount - len(parent)
        for index, value in enumerate(parent):
            if value is child:
                return f" (default argument {code.co_varnames[first + index]})"
    if kind in (list, tuple):
        for index, value in enumerate(parent):
            if value is child:
                return f"[{index}]" if reveal else "[<int>]"  # many entries, one path
        return "[?]"
    if kind in (set, frozenset):
        return "{<member>}"
    if kind is types.FrameType:
        for name, value in parent.f_locals.items():
            if value is child:
                return f" › {parent.f_code.co_name}() › {name}"
        return f" › {parent.f_code.co_name}()"
    if kind is types.TracebackType or kind is types.CellType:
        return ""  # a traceback reads through to its frames; a cell to its contents
    if kind is types.FunctionType:
        closure = parent.__closure__ or ()
        for name, cell in zip(parent.__code__.co_freevars, closure, strict=False):
            if cell is child:
                return f" › {name} (closure of {parent.__qualname__}())"
        if (
            child is parent.__defaults__
            or child is parent.__closure__
            or child is parent.__kwdefaults__
        ):
            return ""  # the next step names the argument
        if child is parent.__globals__:
            return " (its globals)"
        return f" (referred to by {parent.__qualname__}())"
    if issubclass(kind, BaseException):
        for name in ("__traceback__", "__context__", "__cause__", "args"):
            if getattr(parent, name, None) is child:
                return f".{name}"
    if kind.__name__ == "_lru_cache_wrapper":
        return " (its functools.lru_cache)"
    if issubclass(kind, type) or _namespace_of(parent) is child:
        return ""  # a class's or an instance's namespace: its attributes read as obj.attr
    attribute = _attribute_name(parent, child)
    return f".{attribute}" if attribute is not None else f"<{kind.__name__}>"


def _attribute_name(obj: Any, value: Any) -> str | None:
    """The attribute of ``obj`` that is ``value``: its __dict__ (3.11 keeps it inline), or a
    slot."""
    namespace = _namespace_of(obj)
    if type(namespace) is dict:
        for name, held in list(namespace.items()):
            if held is value:
                return str(name)
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if type(slots) is str else slots:
            try:
                if object.__getattribute__(obj, name) is value:
                    return str(name)
            except (AttributeError, TypeError):
                continue
    return None


def render(root: str, chain: Sequence[Any], reveal: bool = False) -> tuple[str, list[Link]]:
    """The path text of ``chain`` (root object first, the holder last) and its links."""
    links = [Link(root, type(chain[0]).__name__)] if chain else []
    text = root
    for index in range(1, len(chain)):
        grand = chain[index - 2] if index >= 2 else None
        parent, child = chain[index - 1], chain[index]
        step = _step(grand, parent, child, reveal, namespace=index == 1 and type(parent) is dict)
        if step == " (its functools.lru_cache)":
            text += step  # the cache's internals below the wrapper name nothing more
            links.append(Link(step, type(child).__name__))
            break
        if step.startswith(".") and text.endswith("._modules") and _is_dict(parent):
            text = text.removesuffix("._modules")  # model.encoder, as nn.Module reads it
        text += step
        links.append(Link(step, type(child).__name__))
    return text, links


# -- the search -----------------------------------------------------------------------------


class _Search:
    def __init__(self, targets: Sequence[Any], deadline: float, reveal: bool) -> None:
        self.deadline = deadline
        self.reveal = reveal
        self.out_of_time = False  # some path was cut short by the deadline
        self.own: set[int] = set()
        self._frame_locals: dict[int, str] | None = None
        # A running frame's f_locals dict mirrors its locals: not a parent of its own.
        # (A module's top-level frame's f_locals is the module's globals: a root, kept.)
        self._locals_dicts = {id(f.f_locals) for _, f in _running_frames(users_only=True)}
        self.roots = _roots()
        self._note(self.roots, targets)

    def _note(self, *objects: Any) -> None:
        """The search's own objects are never holders."""
        for obj in objects:
            self.own.add(id(obj))

    def referrers(self, objects: tuple[Any, ...]) -> list[Any]:
        """Who refers to ``objects`` (one C pass over the heap). An exact tuple is passed to
        the C function as it is, so no argument tuple of ours shows up as a referrer."""
        self._note(objects)
        found = gc.get_referrers(*objects)
        self._note(found)
        # Our own frames (this one among them) are skipped by file. Never keep a frame in a
        # variable a comprehension reads: the cell would make a cycle that keeps every object
        # the search touched alive until the next collection.
        own = self.own
        out = [r for r in found if id(r) not in own and not _is_ours(r)]
        self._note(out)
        return out

    def paths_of(self, objects: Sequence[Any]) -> list[tuple[str, list[Link], Any]]:
        """Walk up from many objects at once to their roots: one pass over the heap per level
        for all of them, not one per object. Returns (path, links, parent) each."""
        chains: list[list[Any]] = [[obj] for obj in objects]
        self._note(chains, *chains)
        named: dict[int, str] = {}  # index -> root name
        for _ in range(MAX_DEPTH):
            open_chains = []
            for index, chain in enumerate(chains):
                if index in named:
                    continue
                root = self.roots.get(id(chain[-1]))
                if root is not None:
                    named[index] = root
                else:
                    open_chains.append(index)
            if not open_chains or time.monotonic() > self.deadline:
                break
            tips = tuple({id(chains[i][-1]): chains[i][-1] for i in open_chains}.values())
            parents = self._parents(tips)
            for index in open_chains:
                chain = chains[index]
                candidates = parents.get(id(chain[-1]))
                if not candidates:
                    local = self.frame_locals().get(id(chain[-1]))
                    named[index] = local or f"<unreachable {type(chain[-1]).__name__}>"
                    continue
                chain.append(_best_parent(candidates, self.roots))
        out = []
        for index, chain in enumerate(chains):
            ordered = chain[::-1]
            root = named.get(index)
            if root is None:  # the deadline cut the walk: say so, not that nothing holds it
                self.out_of_time = True
                root = f"<{type(chain[-1]).__name__}: path search out of time>"
            if root.startswith("<"):
                text, links = render("", ordered, self.reveal)
                out.append((root + text, links, _second(chain)))
            else:
                out.append((*render(root, ordered, self.reveal), _second(chain)))
        return out

    def frame_locals(self) -> dict[int, str]:
        """id(value) -> "thread 'name' › function() › local" for running frames' locals, which
        gc.get_referrers cannot see."""
        if self._frame_locals is None:
            self._frame_locals = {}
            for where, name, value in _running_locals():
                self._frame_locals.setdefault(id(value), f"{where} › {name}")
        return self._frame_locals

    def _parents(self, tips: tuple[Any, ...]) -> dict[int, list[Any]]:
        """id(tip) -> the objects that refer to it, from one pass over the heap. Roots and
        dicts are matched first: a class is referred to by every instance, and looking into a
        million instances to find the module that names it would cost another pass."""
        wanted = {id(t) for t in tips}
        self._note(tips)
        referrers = self.referrers(tips) if len(tips) <= 2 * SAMPLE else self.full_pass(wanted)
        found = [r for r in referrers if id(r) not in self._locals_dicts]
        self._note(found)
        parents: dict[int, list[Any]] = {}
        ranked = sorted(found, key=lambda r: 0 if id(r) in self.roots else 1 if _is_dict(r) else 2)
        self._note(ranked, parents)
        for referrer in ranked:
            rank = 0 if id(referrer) in self.roots else 1 if _is_dict(referrer) else 2
            for child in gc.get_referents(referrer):
                if id(child) in wanted:
                    got = parents.get(id(child))
                    if got is None:
                        got = parents[id(child)] = []
                        self._note(got)  # it refers to the next level's tips
                    if not got or rank < 2:
                        got.append(referrer)
            if rank == 2 and len(parents) == len(wanted):
                break  # every tip has a parent: the rest would not be preferred anyway
        return parents

    def full_pass(self, wanted: Container[int]) -> list[Any]:
        """Every object on the heap that refers to one whose id is ``wanted``: one pass in
        Python. gc.get_referrers compares each reference with each of its arguments, so past a
        few dozen objects this single pass is cheaper than many C passes."""
        everything = gc.get_objects()
        self._note(everything)
        found: list[Any] = []
        self._note(found)
        own = self.own
        referents_of = gc.get_referents
        for obj in everything:
            for referent in referents_of(obj):
                if id(referent) in wanted:
                    # Ours or not is asked of the few that refer, not of every object.
                    if id(obj) not in own and obj is not everything and not _is_ours(obj):
                        found.append(obj)
                    break
        everything.clear()
        return found

    def scan_frames(self, pending: dict[int, Any]) -> list[Holder]:
        """Running frames keep their locals outside the gc's reach: look at them directly,
        a few levels into the containers and objects they hold."""
        holders: list[Holder] = []
        for where, name, value in _running_locals():
            # A module in a local is a root of its own: named by the search.
            if id(value) not in self.own and type(value) is not types.ModuleType:
                self._scan_local(f"{where} › {name}", value, pending, holders)
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
                    holders.append(Holder(where, type(obj).__name__, held, ident=id(obj)))
                    continue
                if type(obj) in _CONTAINERS and len(obj) > EXPAND_AT_MOST:
                    continue  # looked into for targets, not walked further: stay cheap
                for step, child in _children(obj, self.reveal):
                    if id(child) not in seen and id(child) not in pending:
                        seen.add(id(child))
                        deeper.append((where + step, child))
            frontier = deeper


_CONTAINERS = (list, dict, tuple, set, frozenset)
#: A full pass in Python costs about as much as this many sampled C passes (measured: 0.25 s
#: against 0.066 s for 32 targets on a 777k-object heap). When the sampled passes would need
#: more rounds than that to place what is left, one full pass takes over.
FULL_PASS_COST = 4
FRAME_DEPTH = 3
EXPAND_AT_MOST = 1000
#: Frames of the search itself, and of the census that calls it, hold the targets too.
_OWN_FILES = frozenset(
    __file__.replace("owners.py", name)
    for name in ("owners.py", "census.py", "resources_census.py")
)


def _children(value: Any, reveal: bool) -> list[tuple[str, Any]]:
    """(step, child) pairs one level into a local: container items, attributes."""
    kind = type(value)
    if kind is types.ModuleType:
        return []  # a root of its own: the heap search names what it holds
    if kind is types.FunctionType and value.__closure__:
        return [
            (_step(None, value, cell, reveal, False), cell.cell_contents)
            for cell in value.__closure__
            if _cell_filled(cell)
        ]
    if _is_dict(value):
        return [(f"[{_key_text(k, reveal)}]", v) for k, v in list(dict.items(value))]
    if kind in (list, tuple):
        return [(f"[{i}]" if reveal else "[<int>]", v) for i, v in enumerate(value)]
    if kind in (set, frozenset):
        return [("{<member>}", v) for v in value]
    namespace = _namespace_of(value)
    if type(namespace) is dict:
        return [(f".{k}", v) for k, v in list(namespace.items()) if type(k) is str]
    return []


def _second(chain: list[Any]) -> Any:
    return chain[1] if len(chain) > 1 else None


def _is_namespace(container: Any, parent: Any, roots: dict[int, str]) -> bool:
    """Module globals, a class's dict, an instance's __dict__: their entries are variables."""
    if not _is_dict(container):
        return False
    if id(container) in roots:
        return True
    return parent is not None and _reads_as_attributes(parent, container)


def _split_namespace(
    path: str, chain: list[Link], namespace: dict[Any, Any], held: list[Any]
) -> list[Holder]:
    """One holder per variable of a namespace: ``__main__.buffer``, ``model.history``."""
    wanted = {id(obj) for obj in held}
    out = []
    for key, value in list(dict.items(namespace)):
        if id(value) in wanted and type(key) is str:
            wanted.discard(id(value))
            step = Link(f".{key}", type(value).__name__)
            out.append(Holder(f"{path}.{key}", type(value).__name__, [value], [*chain, step]))
    return out


def _split_frame(
    path: str, chain: list[Link], frame: types.FrameType, held: list[Any]
) -> list[Holder]:
    """A frame (kept by a traceback) holds its locals: ``… › synthesize() › audio``."""
    wanted = {id(obj) for obj in held}
    out = []
    where = f"{path} › {frame.f_code.co_name}()"
    for name, value in list(frame.f_locals.items()):
        if id(value) in wanted:
            wanted.discard(id(value))
            step = Link(f" › {frame.f_code.co_name}() › {name}", type(value).__name__)
            out.append(Holder(f"{where} › {name}", type(value).__name__, [value], [*chain, step]))
    return out


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _is_ours(obj: Any) -> bool:
    return type(obj) is types.FrameType and obj.f_code.co_filename in _OWN_FILES


#: diag's own packages: the frames of its threads (the sampler, the control socket) hold the
#: agent's objects, which are nobody's leak.
_TOOLING_DIRS = tuple(d + os.sep for d in OWN_DIRS)


def _tooling_frame(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_TOOLING_DIRS)


def _running_frames(*, users_only: bool) -> Iterator[tuple[str, types.FrameType]]:
    """("thread 'name'", frame) for every frame each thread is running, innermost first.
    ``users_only`` leaves out diag's own frames and modules' top-level frames (their locals
    are their globals, which the module root names)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        thread = f"thread {names.get(ident, ident)!r}"
        current: types.FrameType | None = frame
        while current is not None:
            if not users_only or (
                not _tooling_frame(current) and current.f_code.co_name != "<module>"
            ):
                yield thread, current
            current = current.f_back


def _running_locals() -> Iterator[tuple[str, str, Any]]:
    """("thread 'name' › function()", local name, value) for the user's running frames."""
    for thread, frame in _running_frames(users_only=True):
        where = f"{thread} › {frame.f_code.co_name}()"
        for name, value in list(frame.f_locals.items()):
            yield where, name, value


def _best_parent(parents: list[Any], roots: dict[int, str]) -> Any:
    """Prefer a root, then a namespace or a mapping (dict), then anything."""
    for parent in parents:
        if id(parent) in roots:
            return parent
    for parent in parents:
        if _is_dict(parent):
            return parent
    return parents[0]


def find_holders(
    targets: Iterable[Any],
    time_budget: float = 2.0,
    reveal: bool = False,
    exclude: Any = (),
    parents: Mapping[int, Any] | None = None,
) -> Ownership:
    """Group ``targets`` by the containers that hold them directly, with readable paths. The
    ``targets`` container itself (the caller's list) is not a holder. Holders with the same
    path (the nodes of one functools.lru_cache...) are one holder. ``exclude``: more of the
    caller's own containers that refer to targets or holders. ``parents``: id(target) -> a
    container known to hold it that the gc does not track (``gc.get_referrers`` misses it)."""
    started = time.monotonic()
    pending = {id(t): t for t in targets}
    search = _Search(list(pending.values()), started + time_budget, reveal)
    search._note(targets, pending, exclude, *exclude)
    containers: list[Any] = []
    contents: list[list[Any]] = []
    unreferenced: dict[int, Any] = {}  # no object on the heap refers to them
    search._note(containers, contents, unreferenced)
    seen: set[int] = set()

    def claim(container: Any) -> None:
        # A running frame's f_locals dict mirrors its locals: the frame scan names them.
        if id(container) in seen or id(container) in search._locals_dicts:
            return
        held = [pending.pop(id(r)) for r in gc.get_referents(container) if id(r) in pending]
        if held:
            seen.add(id(container))
            containers.append(container)
            contents.append(held)

    for container in {id(c): c for c in (parents or {}).values()}.values():
        claim(container)
    while pending and time.monotonic() < search.deadline:
        before = len(pending)
        sample = tuple(itertools.islice(pending.values(), SAMPLE))
        for container in search.referrers(sample):
            claim(container)
        # Every referrer of the sample was looked at: a sampled target still pending has none.
        for target in sample:
            if pending.pop(id(target), None) is not None:
                unreferenced[id(target)] = target
        progress = before - len(pending)
        if len(pending) > FULL_PASS_COST * progress and time.monotonic() < search.deadline:
            # Holders that each hold few targets (a frame per exception, one tensor each) or
            # targets nobody on the heap refers to (tensors autograd or C++ keeps alive): one
            # pass over every object places the rest sooner than a sampled pass per 32.
            for container in search.full_pass(pending):
                claim(container)
            unreferenced.update(pending)
            pending.clear()
    # Running frames' locals are invisible to gc.get_referrers: look there for the rest.
    holders: list[Holder] = search.scan_frames(unreferenced)
    orphans = len(unreferenced)
    unreferenced.clear()
    named = search.paths_of(containers)
    for container, held, (path, chain, parent) in zip(containers, contents, named, strict=True):
        if _is_namespace(container, parent, search.roots):
            holders.extend(_split_namespace(path, chain, container, held))
        elif type(container) is types.FrameType:
            holders.extend(_split_frame(path, chain, container, held))
        else:
            holders.append(Holder(path, type(container).__name__, held, chain, id(container)))
    containers.clear()
    merged: dict[str, Holder] = {}
    for holder in holders:
        if holder.path in merged:
            merged[holder.path].objects.extend(holder.objects)
        else:
            merged[holder.path] = holder
    result = sorted(merged.values(), key=lambda h: -h.count)
    seconds = time.monotonic() - started
    complete = not pending and not search.out_of_time
    return Ownership(result, len(pending), orphans, seconds, complete=complete)


def name_objects(
    objects: Sequence[Any], time_budget: float = 2.0, reveal: bool = False, exclude: Any = ()
) -> tuple[list[tuple[str, list[Link]]], bool]:
    """The path from a root to each of ``objects`` themselves (not to their holders), and
    whether every path search finished in time. ``exclude``: more of the caller's own
    containers that refer to them."""
    search = _Search(objects, time.monotonic() + time_budget, reveal)
    search._note(objects, exclude, *exclude)
    named = [(path, links) for path, links, _ in search.paths_of(objects)]
    return named, not search.out_of_time
