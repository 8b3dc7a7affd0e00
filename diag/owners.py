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

Some roots only the interpreter's C state refers to (``diag.c_roots``). Pending asyncio tasks
(a task and the coroutines of its await chain) and ``weakref.finalize`` callbacks are roots a
walk stops at even though the heap refers to them: ``pending asyncio tasks of push_chunks()
awaiting svc.STOP › push_chunks() › chunks`` says more than the Event's waiter deque. A chain
whose top nothing on the heap refers to is named by what holds it from C: a thread's context
(``contextvar request_log in thread 'MainThread'``), an atexit callback, a signal handler, the
codec registry, the audit hooks; else ``held from C code (no Python referrer): …`` and what
the top object is. A ``threading.local``'s per-thread dict reads as ``svc._tls
(threading.local of thread 'worker-3').chunks``. Each path says the kind of its root
(``Holder.root``, ``locate``'s ``Named.root``: one of ``ROOT_KINDS``).

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

import contextlib
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
from diag.c_roots import (
    CRoots,
    TaskRoot,
    context_variable,
    describe,
    generator_frame,
    immediate_roots,
    is_context,
    is_dummies_of,
    is_hamt,
    is_thread_local,
)
from diag.dominators import all_classes, class_namespace

SAMPLE = 32
MAX_DEPTH = 12
KEY_SHOWN_AT_MOST = 40


@dataclass
class Link:
    """One node of a holder's chain from its root: the step that reaches it, and its type."""

    step: str
    type: str


#: What a path starts from (``Holder.root``, ``Named.root``): a module's global, a class's
#: attribute (a class a module names), a running thread's frame or its ``threading.local``, a
#: thread's contextvars context, an atexit callback, a ``weakref.finalize`` callback, a
#: pending asyncio task, a signal handler, the codec registry, sys.audit hooks,
#: os.register_at_fork callbacks ("codec", "audit", "fork"); "c": held from C code that
#: names nothing more (or a running frame's temporary); "own": diag's own objects (a running
#: frame of diag's keeps them: never a holder, the path starts with "diag"); "unknown": the
#: search ran out of time before it reached a root; "shared": what a leak check's runs share
#: (a pytest fixture's value, the test's instance: ``shared_roots``).
ROOT_KINDS = (
    "module",
    "class",
    "shared",
    "thread",
    "context",
    "atexit",
    "finalize",
    "task",
    "signal",
    "codec",
    "audit",
    "fork",
    "c",
    "own",
    "unknown",
)


@dataclass
class Holder:
    path: str  # readable, from a root: "tts_service._AUDIO_CACHE"
    kind: str  # the holder's type: "dict", "list", "MyCache"...
    objects: list[Any] = field(default_factory=list)  # the targets it holds directly
    chain: list[Link] = field(default_factory=list)  # root first, the holder last
    ident: int = 0  # id() of the holder object, while it lives
    root: str = "unknown"  # one of ROOT_KINDS: what the path starts from

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


@dataclass
class Named:
    """The path from a root to one object (``locate``), and the kind of that root."""

    path: str
    chain: list[Link]
    root: str  # one of ROOT_KINDS


_ATOMIC = (type(None), bool, int, float, complex, str, bytes)
#: path text -> value of the roots ``shared_roots`` names for now.
_SHARED: dict[str, Any] = {}
#: id(object) -> a container the gc does not track that holds it, for now (``shared_roots``).
_UNTRACKED_PARENTS: dict[int, Any] = {}


@contextlib.contextmanager
def shared_roots(
    roots: Mapping[str, Any], untracked_parents: Mapping[int, Any] | None = None
) -> Iterator[None]:
    """Within the block, the searches stop at these values and start their paths with the
    text each is given (``fixture journal``, ``self``): a leak check runs a test's body many
    times under one set-up, and what the body adds to a fixture's value or to the test's
    instance is otherwise reached only through pytest's own objects. A value a module global
    names keeps its module path. ``untracked_parents``: id(object) -> a dict the gc does not
    track that holds it (a dict of bytearrays), a parent no pass over the gc's objects finds."""
    _SHARED.update(roots)
    _UNTRACKED_PARENTS.update(untracked_parents or {})
    try:
        yield
    finally:
        _SHARED.clear()
        _UNTRACKED_PARENTS.clear()


def _roots(kinds: dict[int, str]) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """Objects that name a root: module globals, thread frames and the shared values named for now
    (their kinds in ``kinds``); and the module globals, in the order they are named."""
    roots: dict[int, str] = {}
    namespaces: list[dict[str, Any]] = []
    # Aliases (torch registers __main__ again as __mp_main__) last, so the real name wins.
    for name, module in sorted(sys.modules.items(), key=lambda kv: kv[0].startswith("__mp_")):
        namespace = getattr(module, "__dict__", None)
        if type(namespace) is dict and id(namespace) not in roots:
            roots[id(namespace)] = name
            kinds[id(namespace)] = "module"
            namespaces.append(namespace)
    for thread, frame in _running_frames(users_only=False):
        if id(frame) not in roots:
            roots[id(frame)] = thread
            kinds[id(frame)] = "thread"
    if _SHARED:
        globals_ = {id(value) for namespace in namespaces for value in list(namespace.values())}
        for text, value in _SHARED.items():
            if type(value) in _ATOMIC:  # refers to nothing: never on a path
                continue
            if id(value) not in globals_ and id(value) not in roots:
                roots[id(value)] = text
                kinds[id(value)] = "shared"
    return roots, namespaces


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
                frame = generator_frame(grand) if grand is not None else None
                if frame is not None and frame.f_locals is parent:
                    return f" › {frame.f_code.co_name}() › {key}"
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
    frame = generator_frame(parent)
    if frame is not None:  # a suspended coroutine or generator: its locals
        locals_ = frame.f_locals
        if child is locals_:
            return ""  # the next step names the local
        for name, value in list(locals_.items()):
            if value is child:
                return f" › {frame.f_code.co_name}() › {name}"
        return f" › {frame.f_code.co_name}()"
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
    """The attribute of ``obj`` that is ``value``: its __dict__ (3.11 keeps it inline), a
    slot, or a C type's member (``functools.partial``'s ``args``)."""
    namespace = _namespace_of(obj)
    if type(namespace) is dict:
        for name, held in list(namespace.items()):
            if held is value:
                return str(name)
    for cls in type(obj).__mro__:
        # A slot is a member descriptor too; reading one reads a field, running no code.
        for name, member in list(vars(cls).items()):
            if type(member) is not types.MemberDescriptorType:
                continue
            try:
                if member.__get__(obj, type(obj)) is value:
                    return str(name)
            except (AttributeError, TypeError):
                continue
    return None


def render(root: str, chain: Sequence[Any], reveal: bool = False) -> tuple[str, list[Link]]:
    """The path text of ``chain`` (root object first, the holder last) and its links."""
    text, links, _ = _render(root, chain, reveal, None)
    return text, links


def _render(
    root: str, chain: Sequence[Any], reveal: bool, c_roots: CRoots | None, module: bool = True
) -> tuple[str, list[Link], bool]:
    """``render``, and whether the chain passes through a thread's ``threading.local``
    dict (``c_roots`` names the thread). ``module``: a dict at the root is a module's
    globals (its keys read as variables)."""
    links = [Link(root, type(chain[0]).__name__)] if chain else []
    text = root
    context = None  # the nearest contextvars.Context above: it names its variables
    thread_local = False
    for index in range(1, len(chain)):
        grand = chain[index - 2] if index >= 2 else None
        great = chain[index - 3] if index >= 3 else None
        parent, child = chain[index - 1], chain[index]
        if is_context(parent):
            context = parent
        if is_hamt(child) and (is_context(parent) or is_hamt(parent)):
            step = ""  # a context's variables are kept in a HAMT: its nodes name nothing
        elif is_hamt(parent):
            name = context_variable(context, child) if context is not None else None
            step = f" › contextvar {name if name is not None else '<key>'}"
        elif is_context(child) and not is_context(parent):
            step = _step(grand, parent, child, reveal, namespace=False)
            step = "" if step.startswith("<") else step  # a task's context: its variables say more
        elif is_thread_local(parent) and type(child) is dict:
            step = ""  # its {weakref to a thread's dummy: that thread's dict}
        elif grand is not None and is_dummies_of(grand, parent):
            thread = c_roots.thread_of_local(grand, child) if c_roots is not None else None
            step = f" (threading.local of {thread or 'a thread'})"
            thread_local = True
        elif great is not None and is_dummies_of(great, grand):
            step = _step(None, parent, child, reveal, namespace=True)  # its attributes
        else:
            namespace = module and index == 1 and type(parent) is dict
            step = _step(grand, parent, child, reveal, namespace=namespace)
        if step == " (its functools.lru_cache)":
            text += step  # the cache's internals below the wrapper name nothing more
            links.append(Link(step, type(child).__name__))
            break
        if step.startswith(".") and text.endswith("._modules") and _is_dict(parent):
            text = text.removesuffix("._modules")  # model.encoder, as nn.Module reads it
        text += step
        links.append(Link(step, type(child).__name__))
    return text, links, thread_local


# -- the search -----------------------------------------------------------------------------


class _Search:
    def __init__(
        self, targets: Sequence[Any], deadline: float, reveal: bool, held_from_c: bool = True
    ) -> None:
        self.deadline = deadline
        self.reveal = reveal
        self.out_of_time = False  # some path was cut short by the deadline
        self.own: set[int] = set()
        self._frame_locals: dict[int, str] | None = None
        #: Parents known without a pass over the heap (see ``_held_by_structure``), and the
        #: classes' namespaces: built on first use.
        self._structure: tuple[dict[int, Any], list[dict[str, Any]]] | None = None
        # A running frame's f_locals dict mirrors its locals: not a parent of its own.
        # (A module's top-level frame's f_locals is the module's globals: a root, kept.)
        self._locals_dicts = {id(f.f_locals) for _, f in _running_frames(users_only=True)}
        self.root_kinds: dict[int, str] = {}
        self.roots, self.namespaces = _roots(self.root_kinds)
        self._note(self.roots, self.namespaces, targets, _SHARED, _UNTRACKED_PARENTS)
        self.c_roots = CRoots()
        self._note(*self.c_roots.containers())
        #: Pending asyncio tasks (each task and the coroutines of its await chain) and
        #: weakref.finalize callbacks: roots a walk stops at, though the heap refers to them.
        self.tasks: dict[int, TaskRoot] = {}
        #: id(object whose path passes a contextvars.Context) -> the nearest such Context
        self.contexts: dict[int, Any] = {}
        self._note(self.contexts)
        if held_from_c:
            self._immediate_roots()

    def _immediate_roots(self) -> None:
        try:
            finalizers, tasks, keep = immediate_roots(self.deadline)
        except Exception:
            return  # the heap's own paths still name what they hold
        self._note(finalizers, tasks, keep, *{id(t): t for t in tasks.values()}.values())
        self.c_roots.keep.append(keep)
        for ident, root in finalizers.items():
            self.roots.setdefault(ident, root.text)
            self.root_kinds.setdefault(ident, root.kind)
        for ident, task in tasks.items():
            if ident not in self.roots:
                self.roots[ident] = f"pending asyncio tasks of {task.outer}()"
                self.root_kinds[ident] = "task"
                self.tasks[ident] = task

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

    def paths_of(self, objects: Sequence[Any]) -> list[tuple[str, list[Link], Any, str]]:
        """Walk up from many objects at once to their roots: one pass over the heap per level
        for all of them, not one per object. Returns (path, links, parent, root kind) each."""
        chains: list[list[Any]] = [[obj] for obj in objects]
        self._note(chains, *chains)
        named: dict[int, str] = {}  # index -> root name
        kinds: dict[int, str] = {}  # index -> root kind
        for _ in range(MAX_DEPTH):
            open_chains = []
            for index, chain in enumerate(chains):
                if index in named:
                    continue
                root = self.roots.get(id(chain[-1]))
                if root is not None:
                    named[index] = root
                    kinds[index] = self.root_kinds.get(id(chain[-1]), "module")
                else:
                    open_chains.append(index)
            if not open_chains or time.monotonic() > self.deadline:
                break
            tips = tuple({id(chains[i][-1]): chains[i][-1] for i in open_chains}.values())
            parents = self._parents(tips)
            for index in open_chains:
                chain = chains[index]
                candidates = parents.get(id(chain[-1]))
                cyclic = bool(candidates)
                if candidates:  # a cycle leads nowhere new: go up another way, if any
                    candidates = [c for c in candidates if not any(c is o for o in chain)]
                    # Ours: it outlives the loop and refers to the next level's tips.
                    self._note(candidates)
                if not candidates:
                    local = self.frame_locals().get(id(chain[-1]))
                    if local is not None:
                        named[index], kinds[index] = local, "thread"
                    else:  # nothing on the heap refers to it: the interpreter's C state does
                        named[index], kinds[index] = self._held_from_c(chain, cyclic)
                    continue
                chain.append(_best_parent(candidates, self.roots))
                if is_context(chain[-1]):
                    self.contexts.setdefault(id(chain[0]), chain[-1])  # names its variables
        task_texts = self._task_texts([chains[i][-1] for i, k in kinds.items() if k == "task"])
        out = []
        for index, chain in enumerate(chains):
            ordered = chain[::-1]
            root = named.get(index)
            if root is None:  # the deadline cut the walk: say so, not that nothing holds it
                self.out_of_time = True
                root = f"<{type(chain[-1]).__name__}: path search out of time>"
                text, links = render("", ordered, self.reveal)
                out.append((root + text, links, _second(chain), "unknown"))
                continue
            kind = kinds[index]
            if kind == "task":
                root = task_texts.get(id(chain[-1]), root)
            text, links, thread_local = _render(
                root, ordered, self.reveal, self.c_roots, module=kind == "module"
            )
            if kind == "context":
                text = _context_text(root, text, links)
            elif kind == "module" and len(ordered) > 1 and issubclass(type(ordered[1]), type):
                kind = "class"  # a class's attribute
            if thread_local:
                kind = "thread"  # alive as long as its thread is
            out.append((text, links, _second(chain), kind))
        return out

    def _held_from_c(self, chain: list[Any], cyclic: bool = False) -> tuple[str, str]:
        """The root of a chain whose top object nothing on the heap refers to (``cyclic``:
        nothing but the chain's own objects): the C root nearest the top that the runtime
        names (the chain is cut there), else the top object described. Returns (root text,
        root kind)."""
        for index in range(len(chain) - 1, -1, -1):
            try:
                root = self.c_roots.lookup(chain[index])
            except Exception:
                root = None
            if root is not None:
                del chain[index + 1 :]
                if any(_is_own_object(obj) for obj in chain[index:]):
                    # diag's own hook or handler (the creation recorder's audit hook, the
                    # endings' signal handlers) and what it keeps: nobody's leak.
                    return "diag (its own objects)", "own"
                return root.text, root.kind
        top = chain[-1]
        inner = top.cell_contents if type(top) is types.CellType and _cell_filled(top) else top
        if is_own_type(inner):  # a running frame of diag's own keeps it (a cell, a local)
            return "diag (its own objects)", "own"
        if cyclic:  # garbage the collector has not freed yet, or a cycle C code holds
            return f"held from C code or by a reference cycle (no root): {describe(top)}", "c"
        return f"held from C code (no Python referrer): {describe(top)}", "c"

    def _task_texts(self, tops: list[Any]) -> dict[int, str]:
        """id(top of a chain) -> ``pending asyncio tasks of push_chunks() awaiting
        svc.STOP``: what each task awaits named by its path, where one is found in time."""
        tasks = {id(self.tasks[id(top)]): self.tasks[id(top)] for top in tops}
        waits: dict[int, tuple[Any, str | None]] = {}  # id(task root) -> what it awaits
        awaited: dict[int, Any] = {}
        names: dict[int, str] = {}
        self._note(tasks, waits, awaited, names)
        for ident, task in tasks.items():
            try:
                waits[ident] = task.awaited()
            except Exception:
                waits[ident] = (None, None)
            self._note(waits[ident])
            target = waits[ident][0]
            if target is not None:
                awaited[id(target)] = target
        if awaited and time.monotonic() < self.deadline:
            objects = list(awaited.values())[:TASK_TARGETS_NAMED]
            search = _Search(objects, self.deadline, self.reveal, held_from_c=False)
            search.own |= self.own
            search._note(objects)
            for obj, (path, _, _, kind) in zip(objects, search.paths_of(objects), strict=True):
                if kind in ("module", "class", "thread") and "<" not in path:
                    names[id(obj)] = path
            objects.clear()
        out = {}
        for top in tops:
            task = self.tasks[id(top)]
            target, awaiting = waits[id(task)]
            what = names.get(id(target)) or awaiting
            text = f"pending asyncio tasks of {task.outer}()"
            out[id(top)] = f"{text} awaiting {what}" if what else text
        awaited.clear()
        waits.clear()
        tasks.clear()
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
        """id(tip) -> the objects that refer to it: the module whose global it is, else from
        one pass over the heap. Roots and dicts are matched first: a class is referred to by
        every instance, and looking into a million instances to find the module that names it
        would cost another pass."""
        self._note(tips)
        known = self._held_by_globals({id(t) for t in tips})
        for tip in tips:
            untracked = _UNTRACKED_PARENTS.get(id(tip))
            if untracked is not None and id(tip) not in known:
                known[id(tip)] = [untracked]
                self._note(known[id(tip)])
        tips = tuple(t for t in tips if id(t) not in known)
        if tips:
            known.update(self._held_by_structure({id(t) for t in tips}))
            tips = tuple(t for t in tips if id(t) not in known)
        self._note(tips)
        if not tips:
            return known
        wanted = {id(t) for t in tips}
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
                    if len(got) < 2 or rank < 2:  # a second: a way out of a cycle
                        got.append(referrer)
            if rank == 2 and len(parents) == len(wanted):
                break  # every tip has a parent: the rest would not be preferred anyway
        parents.update(known)
        return parents

    def _held_by_globals(self, wanted: set[int]) -> dict[int, list[Any]]:
        """id(tip) -> [the module globals that hold it], for the tips a module's global is:
        a look through every module's globals (some 50,000 values) instead of a pass over the
        heap (a million objects). That parent is a root, which a path takes over any other;
        of two modules (an alias), the first that ``_roots`` names."""
        found: dict[int, list[Any]] = {}
        self._note(found)
        self._look_through(self.namespaces, wanted, found)
        return found

    def _look_through(
        self, namespaces: list[dict[str, Any]], wanted: set[int], found: dict[int, list[Any]]
    ) -> None:
        """Into ``found``: id(tip) -> [the first of ``namespaces`` whose values hold it]."""
        for namespace in namespaces:
            if wanted.isdisjoint(map(id, namespace.values())):  # in C: most hold none
                continue
            for value in list(namespace.values()):
                if id(value) in wanted and id(value) not in found:
                    found[id(value)] = [namespace]
                    self._note(found[id(value)])

    def _held_by_structure(self, wanted: set[int]) -> dict[int, list[Any]]:
        """id(tip) -> [its parent], for tips whose parent the way Python lays out classes and
        closures gives, as a module's global finds its module: a class attribute (parent: the
        class's namespace), a class's namespace (parent: the class), what a cell of the
        closure of a function that a module's global or a class attribute is holds (parent:
        the cell), the cell (parent: the closure), and that closure (parent: the function).
        Each saves a pass over the heap; a tip none of them holds is left to that pass."""
        if self._structure is None:
            self._structure = self._map_structure()
        parent_of, class_namespaces = self._structure
        found: dict[int, list[Any]] = {}
        self._note(found)
        for ident in wanted:
            parent = parent_of.get(ident)
            if parent is not None:
                found[ident] = [parent]
                self._note(found[ident])
        rest = wanted.difference(found)
        if rest:
            self._look_through(class_namespaces, rest, found)
        return found

    def _map_structure(self) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        """id(class namespace) -> class, and for the functions a module's global or a class
        attribute is: id(what a closure cell holds) -> the cell, id(cell) -> its closure,
        id(closure) -> the function; and every class's namespace. C calls a class, a look at
        each global (some 50,000)."""
        parent_of: dict[int, Any] = {}
        class_namespaces: list[dict[str, Any]] = []
        self._note(parent_of, class_namespaces)
        for cls in all_classes():
            real = class_namespace(cls)
            if real is not None:
                parent_of[id(real)] = cls
                class_namespaces.append(real)
        function = types.FunctionType
        for namespace in itertools.chain(self.namespaces, class_namespaces):
            for value in list(namespace.values()):
                closure = value.__closure__ if type(value) is function else None
                if closure:
                    parent_of.setdefault(id(closure), value)
                    for cell in closure:
                        parent_of.setdefault(id(cell), closure)
                        if _cell_filled(cell):
                            parent_of.setdefault(id(cell.cell_contents), cell)
        return parent_of, class_namespaces

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
            holders.append(
                Holder(path, type(value).__name__, [pending.pop(id(value))], root="thread")
            )
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
                    holders.append(
                        Holder(where, type(obj).__name__, held, ident=id(obj), root="thread")
                    )
                    continue
                if type(obj) in _CONTAINERS and len(obj) > EXPAND_AT_MOST:
                    continue  # looked into for targets, not walked further: stay cheap
                for step, child in _children(obj, self.reveal):
                    if id(child) not in seen and id(child) not in pending:
                        seen.add(id(child))
                        deeper.append((where + step, child))
            frontier = deeper


_CONTAINERS = (list, dict, tuple, set, frozenset)
#: Pending tasks awaiting this many distinct objects have them named; the rest by type.
TASK_TARGETS_NAMED = 32
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


def _context_text(where: str, text: str, links: list[Link]) -> str:
    """``contextvar request_log in thread 'MainThread'…`` for a path from a thread's context
    (``where``: "in thread 'MainThread'"), the variable's step folded into its root link."""
    rest = text[len(where) :]
    for index, link in enumerate(links[1:], start=1):
        if link.step.startswith(" › contextvar "):
            if not rest.startswith(link.step):
                break
            root = f"contextvar {link.step.removeprefix(' › contextvar ')} {where}"
            links[0] = Link(root, links[0].type)
            links[index] = Link("", link.type)
            return root + rest[len(link.step) :]
        if link.step:
            break
    root = f"contextvars.Context {where}"
    if links:
        links[0] = Link(root, links[0].type)
    return root + rest


#: Packages whose objects are diag's own (a path through one is never a holder).
_OWN_PACKAGES = frozenset({"diag", "probes", "reports"})


def is_own_type(obj: Any) -> bool:
    module = type(obj).__module__
    return type(module) is str and module.split(".", 1)[0] in _OWN_PACKAGES


def _is_own_object(obj: Any) -> bool:
    """An instance of diag's types, or a function (a bound method's too) defined in diag."""
    if is_own_type(obj):
        return True
    function = getattr(obj, "__func__", obj)
    code = getattr(function, "__code__", None) if type(function) is types.FunctionType else None
    return code is not None and code.co_filename.startswith(TOOLING_DIRS)


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
    path: str, chain: list[Link], namespace: dict[Any, Any], held: list[Any], root: str
) -> list[Holder]:
    """One holder per variable of a namespace: ``__main__.buffer``, ``model.history``."""
    wanted = {id(obj) for obj in held}
    out = []
    for key, value in list(dict.items(namespace)):
        if id(value) in wanted and type(key) is str:
            wanted.discard(id(value))
            step = Link(f".{key}", type(value).__name__)
            out.append(
                Holder(f"{path}.{key}", type(value).__name__, [value], [*chain, step], root=root)
            )
    return out


def _split_frame(
    path: str, chain: list[Link], frame: types.FrameType, held: list[Any], root: str
) -> list[Holder]:
    """A frame (kept by a traceback, or a suspended coroutine's) holds its locals:
    ``… › synthesize() › audio``. What it holds elsewhere (its value stack) stays with it."""
    wanted = {id(obj) for obj in held}
    out = []
    where = f"{path} › {frame.f_code.co_name}()"
    for name, value in list(frame.f_locals.items()):
        if id(value) in wanted:
            wanted.discard(id(value))
            step = Link(f" › {frame.f_code.co_name}() › {name}", type(value).__name__)
            out.append(
                Holder(
                    f"{where} › {name}", type(value).__name__, [value], [*chain, step], root=root
                )
            )
    rest = [obj for obj in held if id(obj) in wanted]
    if rest:
        kind = type(frame).__name__
        out.append(Holder(path, kind, rest, chain, id(frame), root=root))
    return out


def _split_context(
    path: str, chain: list[Link], node: Any, context: Any, held: list[Any], root: str
) -> list[Holder]:
    """A context's HAMT node holds its variables' values: one holder per variable,
    ``contextvar audio in thread 'MainThread'``."""
    wanted = {id(obj) for obj in held}
    out = []
    prefix = "contextvars.Context "
    for obj in held:
        name = context_variable(context, obj)
        if name is None:
            continue
        wanted.discard(id(obj))
        step = f" › contextvar {name}"
        if path.startswith(prefix):  # the context's own thread is its root
            text = f"contextvar {name} {path.removeprefix(prefix)}"
            links = [Link(text, chain[0].type), *chain[1:], Link("", type(obj).__name__)]
        else:
            text, links = path + step, [*chain, Link(step, type(obj).__name__)]
        out.append(Holder(text, type(obj).__name__, [obj], links, root=root))
    rest = [obj for obj in held if id(obj) in wanted]
    if rest:
        out.append(Holder(path, type(node).__name__, rest, chain, id(node), root=root))
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
TOOLING_DIRS = tuple(d + os.sep for d in OWN_DIRS)


def _tooling_frame(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename.startswith(TOOLING_DIRS)


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
    referrers: Sequence[Any] | None = None,
) -> Ownership:
    """Group ``targets`` by the containers that hold them directly, with readable paths. The
    ``targets`` container itself (the caller's list) is not a holder. Holders with the same
    path (the nodes of one functools.lru_cache...) are one holder. ``exclude``: more of the
    caller's own containers that refer to targets or holders. ``parents``: id(target) -> a
    container known to hold it that the gc does not track (``gc.get_referrers`` misses it).
    ``referrers``: every object the gc tracks that refers to a target, from the caller's own
    pass over the heap, in the gc's order: they claim the targets, and the search makes no
    pass of its own (a target none of them holds has no referrer on the heap)."""
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
    if referrers is not None:
        search._note(referrers)
        # As a sampled pass would have them: roots first, the search's own objects never.
        for container in sorted(referrers, key=lambda r: id(r) not in search.roots):
            if id(container) not in search.own and not _is_ours(container):
                claim(container)
        unreferenced.update(pending)
        pending.clear()
    while pending and time.monotonic() < search.deadline:
        before = len(pending)
        sample = tuple(itertools.islice(pending.values(), SAMPLE))
        # Roots (a module's globals) claim first: what they hold directly needs no path search.
        found = search.referrers(sample)
        found.sort(key=lambda r: id(r) not in search.roots)
        for container in found:
            claim(container)
        del found
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
    for container, held, (path, chain, parent, root) in zip(
        containers, contents, named, strict=True
    ):
        frame = generator_frame(container)
        if _is_namespace(container, parent, search.roots):
            holders.extend(_split_namespace(path, chain, container, held, root))
        elif type(container) is types.FrameType:
            holders.extend(_split_frame(path, chain, container, held, root))
        elif frame is not None:  # a suspended coroutine or generator: its locals
            holders.extend(_split_frame(path, chain, frame, held, root))
        elif is_hamt(container) and id(container) in search.contexts:
            context = search.contexts[id(container)]
            holders.extend(_split_context(path, chain, container, context, held, root))
        else:
            holder = Holder(path, type(container).__name__, held, chain, id(container), root)
            holders.append(holder)
    containers.clear()
    merged: dict[str, Holder] = {}
    for holder in holders:
        if holder.root == "own":  # diag's own bookkeeping (an earlier census's): not a holder
            orphans += holder.count
            continue
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
    containers that refer to them. ``locate`` says the kind of each path's root too."""
    named, in_time = locate(objects, time_budget, reveal, exclude)
    return [(n.path, n.chain) for n in named], in_time


def locate(
    objects: Sequence[Any], time_budget: float = 2.0, reveal: bool = False, exclude: Any = ()
) -> tuple[list[Named], bool]:
    """``name_objects`` with each path's root kind (``Named.root``, one of ROOT_KINDS)."""
    search = _Search(objects, time.monotonic() + time_budget, reveal)
    search._note(objects, exclude, *exclude)
    named = [Named(path, links, root) for path, links, _, root in search.paths_of(objects)]
    return named, not search.out_of_time
