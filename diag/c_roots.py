"""Roots that only the interpreter's C state refers to: what keeps an object alive when no
object on the Python heap does.

The holder search (``diag.owners``) walks ``gc.get_referrers`` up to a module or a running
frame. Some chains end before that, at an object nothing on the heap refers to: the
interpreter's own C state holds it. This module says which state, as precisely as CPython
3.11 lets a reader in the same process know, and never changes what it looks at:

- **contextvars.** A thread's current ``Context`` is held by its thread state
  (``tstate->context``). Contexts, their HAMT and the HAMT's nodes are gc-tracked, so the
  walk up from a value set with ``ContextVar.set`` ends at a ``Context`` nothing refers to;
  the context's variables are enumerable (it is a mapping), which names the variable.
- **threading.local.** ``_thread._local`` keeps ``{weakref to a per-thread dummy: that
  thread's dict}`` (a referent of the local object); the dummy itself lives in the thread
  state's dict (``tstate->dict``, ``PyThreadState_GetDict``), so the dummy names the thread.
- **Thread states** are listed with ``PyInterpreterState_ThreadHead``/``PyThreadState_Next``
  (exported C API, called through ``ctypes.pythonapi``, which keeps the GIL). Their
  ``thread_id``, ``dict`` and ``context`` fields are found by calibration on the calling
  thread: the one offset where its own state holds ``threading.get_ident()``,
  ``PyThreadState_GetDict()`` and, inside ``Context().run()``, that context. Only those words
  are read, the GIL held throughout (a thread state is unlinked only under the GIL), and only
  when each offset was found exactly once; otherwise contexts and thread-locals are named
  without their thread.
- **atexit.** The callbacks live in the interpreter state (not traversed by the gc).
  ``atexit.unregister(x)`` compares ``x`` with every registered function with ``==``; a
  function's, a partial's or a bound method's own ``==`` answers ``NotImplemented`` to an
  object of another type, so Python asks ``x.__eq__`` with the registered function. A probe
  whose ``__eq__`` records it and answers False lists them and unregisters none. The
  arguments passed to ``atexit.register`` itself (not a partial's) stay out of reach.
- **Signal handlers:** ``signal.getsignal`` for every valid signal (a C array, untraversed).
- **weakref.finalize** keeps its callbacks in ``weakref.finalize._registry`` (reachable, but
  ``weakref.finalize callback remove_tmp()`` says more than the registry's internals).
- **asyncio tasks** (only if the host imported asyncio): ``asyncio.tasks._all_tasks`` (plus
  ``_scheduled_tasks``/``_eager_tasks`` where a later Python has them); a pending task is
  named by its coroutine and by what the innermost coroutine of its await chain waits on.

Types are tested with ``type(x) is ...``, never ``isinstance`` (see diag.owners).
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import gc
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: A coroutine's await chain is followed this deep.
AWAIT_DEPTH = 16
#: Words of a thread state read: 3.11 keeps thread_id, dict and context in its first 30 of
#: about 40 (so no read goes past its end).
TSTATE_WORDS = 36

_GENERATORS = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_HAMT_TYPES = frozenset({"hamt", "hamt_bitmap_node", "hamt_array_node", "hamt_collision_node"})


@dataclass(frozen=True)
class CRoot:
    """What keeps an object alive from C: a root kind and its text."""

    kind: str  # "context", "atexit", "signal", "finalize", "task", "thread", "c"
    text: str


# -- describing objects without running their code ---------------------------------------------


def qualified(obj: Any) -> str:
    """``svc.remove_tmp`` for a function or method; a type's name for anything else."""
    kind = type(obj)
    if kind is types.MethodType:
        return qualified(obj.__func__)
    if kind is types.FunctionType or kind is types.BuiltinFunctionType:
        module = obj.__module__ if type(obj.__module__) is str else None
        name = obj.__qualname__
        return f"{module}.{name}" if module and module != "builtins" else str(name)
    if kind is functools.partial:
        return describe(obj)
    return type_name(obj)


def type_name(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def callback_text(func: Any) -> str:
    """``remove_tmp()`` for a function or a bound method, ``functools.partial(svc.f, …)``."""
    kind = type(func)
    if kind is types.MethodType:
        func = func.__func__
        kind = type(func)
    if kind is types.FunctionType or kind is types.BuiltinFunctionType:
        return f"{func.__qualname__}()"
    return describe(func)


def describe(obj: Any) -> str:
    """A short description of an object, by type and shape only (never its values)."""
    kind = type(obj)
    if kind is functools.partial:
        more = ", …" if obj.args or obj.keywords else ""
        return f"functools.partial({qualified(obj.func)}{more})"
    if kind in _FUNCTIONS:
        return f"{qualified(obj)}()"
    if kind in _GENERATORS:
        return f"{type_name(obj)} {obj.__qualname__}()"
    if issubclass(kind, (list, tuple, dict, set, frozenset)):
        entries = len(obj)
        return f"{type_name(obj)} of {entries} {'entry' if entries == 1 else 'entries'}"
    if type_name(obj) == "Context":  # contextvars.Context
        return f"contextvars.Context of {len(obj)} variables"
    return type_name(obj)


def is_hamt(obj: Any) -> bool:
    """A contextvars.Context's immutable mapping, or one of its nodes."""
    kind = type(obj)
    return kind.__module__ == "builtins" and kind.__name__ in _HAMT_TYPES


def is_context(obj: Any) -> bool:
    kind = type(obj)
    return kind.__name__ == "Context" and kind.__module__ == "_contextvars"


def context_variable(context: Any, value: Any) -> str | None:
    """The name of the variable of ``context`` whose value is ``value``."""
    try:
        for var, held in list(context.items()):
            if held is value:
                return str(var.name)
    except Exception:
        return None
    return None


def is_thread_local(obj: Any) -> bool:
    return issubclass(type(obj), _thread._local)


def generator_frame(obj: Any) -> types.FrameType | None:
    """The suspended frame of a coroutine, generator or async generator."""
    kind = type(obj)
    frame = None
    if kind is types.CoroutineType:
        frame = obj.cr_frame
    elif kind is types.GeneratorType:
        frame = obj.gi_frame
    elif kind is types.AsyncGeneratorType:
        frame = obj.ag_frame
    return frame if type(frame) is types.FrameType else None


def _awaited(obj: Any) -> Any:
    kind = type(obj)
    if kind is types.CoroutineType:
        return obj.cr_await
    if kind is types.GeneratorType:
        return obj.gi_yieldfrom
    if kind is types.AsyncGeneratorType:
        return obj.ag_await
    return None


# -- thread states, through the C API ---------------------------------------------------------


class _ThreadStates:
    """The fields of every thread state that name roots: its thread, dict and context."""

    _offsets: tuple[int, int, int] | None = None
    _calibrated = False

    @classmethod
    def offsets(cls) -> tuple[int, int, int] | None:
        """Word offsets of ``thread_id``, ``dict`` and ``context`` in a PyThreadState."""
        if not cls._calibrated:
            cls._calibrated = True
            try:
                cls._offsets = cls._calibrate()
            except Exception:
                cls._offsets = None
        return cls._offsets

    @staticmethod
    def _api() -> Any:
        import ctypes

        if sys.implementation.name != "cpython":
            raise RuntimeError("not CPython")
        api = ctypes.pythonapi  # a PyDLL: calls keep the GIL
        pointer = ctypes.c_void_p
        api.PyThreadState_Get.restype = pointer
        api.PyThreadState_Get.argtypes = []
        api.PyThreadState_GetDict.restype = pointer
        api.PyThreadState_GetDict.argtypes = []
        api.PyInterpreterState_Get.restype = pointer
        api.PyInterpreterState_Get.argtypes = []
        api.PyInterpreterState_ThreadHead.restype = pointer
        api.PyInterpreterState_ThreadHead.argtypes = [pointer]
        api.PyThreadState_Next.restype = pointer
        api.PyThreadState_Next.argtypes = [pointer]
        return api

    @classmethod
    def _calibrate(cls) -> tuple[int, int, int] | None:
        import contextvars
        import ctypes

        api = cls._api()
        own = api.PyThreadState_Get()

        def where(value: int) -> list[int]:
            words = (ctypes.c_void_p * TSTATE_WORDS).from_address(own)
            return [i for i, word in enumerate(words) if word == value]

        ident = where(threading.get_ident())
        mapping = where(api.PyThreadState_GetDict())
        found: list[list[int]] = []
        for _ in range(2):  # twice: a coincidence would not repeat at the same offset
            probe = contextvars.Context()
            found.append(probe.run(where, id(probe)))
        context = [i for i in found[0] if i in found[1]]
        if len(ident) == 1 and len(mapping) == 1 and len(context) == 1:
            return ident[0], mapping[0], context[0]
        return None

    @classmethod
    def read(cls) -> list[tuple[int, Any, Any]]:
        """(thread ident, thread dict or None, current context or None) per thread state."""
        offsets = cls.offsets()
        if offsets is None:
            return []
        import ctypes

        api = cls._api()
        ident_at, dict_at, context_at = offsets
        out: list[tuple[int, Any, Any]] = []
        # No other thread may run (and end, freeing its state) while the list is walked: no
        # collection (its finalizers may block) and no switch between bytecodes.
        switch = sys.getswitchinterval()
        collecting = gc.isenabled()
        gc.disable()
        sys.setswitchinterval(max(switch, 60.0))
        try:
            state = api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
            for _ in range(100_000):
                if not state:
                    break
                words = (ctypes.c_void_p * TSTATE_WORDS).from_address(state)
                ident = words[ident_at] or 0
                out.append((ident, _object_at(words[dict_at]), _object_at(words[context_at])))
                state = api.PyThreadState_Next(state)
        finally:
            sys.setswitchinterval(switch)
            if collecting:
                gc.enable()
        return out


def _object_at(address: int | None) -> Any:
    """The object at ``address`` (a strong reference the thread state holds), or None."""
    if not address:
        return None
    import ctypes

    return ctypes.cast(ctypes.c_void_p(address), ctypes.py_object).value


#: Words of the interpreter state searched for the anchors below.
INTERPRETER_WORDS = 2048


def _interpreter_fields() -> dict[int, tuple[Any, CRoot]]:
    """id(registry) -> (registry, root) for the interpreter state's registries that no
    Python object refers to. CPython 3.11's layout (Include/internal/pycore_interp.h), used
    only where anchors confirm it: ``sys.modules`` followed, two and three words on, by
    ``sys.__dict__`` and ``builtins.__dict__`` places the codec registry (six to eight words
    after ``modules``); the warnings state's once-registry (``warnings.onceregistry``),
    with ``atexit._ncallbacks()`` in the low half of the word four on (the atexit state),
    places ``register_at_fork``'s lists before the warnings state, the atexit callbacks
    (with the arguments ``atexit.register`` keeps for them) and the audit hooks after it.
    Only the words found so are followed."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return {}
    import _warnings
    import atexit
    import builtins
    import ctypes

    api = _ThreadStates._api()
    words = list((ctypes.c_void_p * INTERPRETER_WORDS).from_address(api.PyInterpreterState_Get()))
    words = [w or 0 for w in words]
    out: dict[int, tuple[Any, CRoot]] = {}

    def only(value: int) -> int | None:
        found = [i for i, w in enumerate(words) if w == value]
        return found[0] if len(found) == 1 else None

    def take(index: int, kind: str, text: str) -> None:
        held = _object_at(words[index]) if 0 <= index < len(words) else None
        if type(held) in (list, dict):
            out[id(held)] = (held, CRoot(kind, text))

    modules = only(id(sys.modules))
    if (
        modules is not None
        and modules + 8 < len(words)
        and words[modules + 2] == id(sys.__dict__)
        and words[modules + 3] == id(builtins.__dict__)
    ):
        take(modules + 6, "codec", "codecs.register search functions")
        take(modules + 7, "codec", "the codecs lookup cache")
        take(modules + 8, "codec", "codecs.register_error handlers")
    # The warnings state's once-registry dict (its second word): warnings.py shares it and
    # never replaces it (its filters list it may swap, the state catching up later).
    python_warnings = sys.modules.get("warnings")
    registry = getattr(python_warnings, "onceregistry", _warnings._onceregistry)
    once = only(id(registry))
    if (
        once is not None
        and once >= 4
        and once + 5 < len(words)
        and words[once + 4] & 0xFFFFFFFF == atexit._ncallbacks()
        and words[once + 4] >> 32 >= atexit._ncallbacks()
    ):
        take(once - 4, "fork", "os.register_at_fork(before=) callbacks")
        take(once - 3, "fork", "os.register_at_fork(after_in_parent=) callbacks")
        take(once - 2, "fork", "os.register_at_fork(after_in_child=) callbacks")
        take(once + 5, "audit", "sys.addaudithook hooks")
        # The atexit state: ``atexit_callback **callbacks`` and their count, just confirmed.
        count = words[once + 4] & 0xFFFFFFFF
        if words[once + 3] and count <= 100_000:
            for entry in (ctypes.c_void_p * count).from_address(words[once + 3]):
                if not entry:
                    continue  # unregistered
                func, args, kwargs = (ctypes.c_void_p * 3).from_address(entry)
                text = f"atexit callback {callback_text(_object_at(func))}"
                for address, name in ((args, "args"), (kwargs, "kwargs")):
                    part = _object_at(address)
                    if type(part) in (tuple, dict) and part:
                        out[id(part)] = (part, CRoot("atexit", f"{text} {name}"))
    return out


def _thread_names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


# -- the roots ---------------------------------------------------------------------------------


class _AtexitProbe:
    """Given to ``atexit.unregister``: sees every registered function, equals none."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self) -> None:  # pragma: no cover - never registered
        return None

    def __eq__(self, other: object) -> bool:
        self.seen.append(other)
        return False

    __hash__ = object.__hash__


def held_from_c() -> list[tuple[str, Any, list[tuple[str, Any]]]]:
    """The interpreter's own registries whose entries no Python root reaches, as sources for
    the dominator walk: (kind, the registry or context, [(path, value)]). A thread's context:
    each variable (``contextvar request_log in thread 'MainThread'``); the atexit callbacks and
    the signal handlers (found and named as ``CRoots`` finds them); the weakref.finalize
    callbacks (reachable through a library's class, but named by what they are). A source
    that cannot be read names nothing."""
    out: list[tuple[str, Any, list[tuple[str, Any]]]] = []
    names: dict[int, str] = {}
    with contextlib.suppress(Exception):
        names = _thread_names()
    with contextlib.suppress(Exception):
        for ident, _, context in _ThreadStates.read():
            if context is None:
                continue
            thread = f"thread {names.get(ident, ident)!r}"
            entries = [
                (f"contextvar {var.name} in {thread}", value) for var, value in context.items()
            ]
            out.append(("context", context, entries))
    finder = CRoots()
    for kind, discover in (("atexit", finder._atexit), ("signal", finder._signals)):
        with contextlib.suppress(Exception):
            found = list(discover())
            # The list of what was found is the registry: ours, alive while it is walked.
            out.append((kind, found, [(root.text, obj) for obj, root in found]))
    with contextlib.suppress(Exception):
        registry = getattr(weakref.finalize, "_registry", None)
        if type(registry) is dict:
            entries = [(finalize_text(info), info) for info in list(registry.values())]
            out.append(("finalize", registry, entries))
    return [(kind, registry, _grouped(entries)) for kind, registry, entries in out]


def finalize_text(info: Any) -> str:
    """``weakref.finalize callback remove_tmp()``: a finalize registry entry, by its callback."""
    func = getattr(info, "func", None)
    return "weakref.finalize callback" + ("" if func is None else f" {callback_text(func)}")


def _grouped(entries: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """One source per path: a thousand callbacks of one function registered with a chunk
    each are one owner (``atexit callback flush()``), held through a list of ours (a few
    bytes a callback, counted with them)."""
    by_path: dict[str, list[Any]] = {}
    for path, value in entries:
        by_path.setdefault(path, []).append(value)
    return [(path, values[0] if len(values) == 1 else values) for path, values in by_path.items()]


class CRoots:
    """The roots held from C, discovered on first use and kept for one search."""

    def __init__(self) -> None:
        self._by_id: dict[int, CRoot] = {}
        self._dummies: dict[int, str] = {}
        self._discovered = False
        self._threads_read = False
        self._interpreter: dict[int, tuple[Any, CRoot]] | None = None
        self.keep: list[Any] = []  # what the maps name, alive while they are used

    def containers(self) -> list[Any]:
        """Our own objects that refer to heap objects: never a holder."""
        return [self, self.keep]

    # Fallback roots: looked up for an object nothing on the heap refers to.

    def lookup(self, obj: Any) -> CRoot | None:
        if not self._discovered:
            self._discovered = True
            self._discover(self._by_id)
        found = self._by_id.get(id(obj))
        if found is None and is_context(obj):
            return CRoot("context", "in a context no Python object refers to")
        if found is None:
            found = self._interpreter_field(obj)
        return found

    def _interpreter_field(self, obj: Any) -> CRoot | None:
        """The interpreter state's own registries: the codec registry, the sys.audit hooks,
        the os.register_at_fork callbacks (a list, a dict, or one of a list's callables)."""
        if self._interpreter is None:
            self._interpreter = {}
            with contextlib.suppress(Exception):
                self._interpreter = _interpreter_fields()
        found = self._interpreter.get(id(obj))
        if found is not None:
            return found[1]
        for held, root in self._interpreter.values():
            if type(held) is list and any(item is obj for item in held):
                return CRoot(root.kind, f"{root.text} {callback_text(obj)}")
        return None

    def _discover(self, out: dict[int, CRoot]) -> None:
        for discover in (self._signals, self._atexit, self._contexts):
            try:
                for obj, root in discover():
                    if id(obj) not in out:
                        self.keep.append(obj)
                        out[id(obj)] = root
            except Exception:
                continue  # a source that fails names nothing: the rest still do

    def _signals(self) -> Iterator[tuple[Any, CRoot]]:
        handlers: dict[int, tuple[Any, list[str]]] = {}
        for number in signal.valid_signals():
            try:
                handler = signal.getsignal(number)
            except (ValueError, OSError):
                continue
            if handler is None or type(handler) is int or issubclass(type(handler), int):
                continue  # SIG_DFL, SIG_IGN, or set from C
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {int(number)}"
            handlers.setdefault(id(handler), (handler, []))[1].append(name)
        for handler, names in handlers.values():
            yield (
                handler,
                CRoot("signal", f"signal handler {callback_text(handler)} for {', '.join(names)}"),
            )

    def _atexit(self) -> Iterator[tuple[Any, CRoot]]:
        import atexit

        probe = _AtexitProbe()
        atexit.unregister(probe)  # compares with each callback, removes none
        for func in probe.seen:
            yield func, CRoot("atexit", f"atexit callback {callback_text(func)}")

    def _contexts(self) -> Iterator[tuple[Any, CRoot]]:
        names = _thread_names()
        for ident, _, context in _ThreadStates.read():
            if context is not None:
                thread = f"thread {names.get(ident, ident)!r}"
                yield context, CRoot("context", f"in {thread}")

    # threading.local: the thread a per-thread dict belongs to.

    def thread_of_local(self, local: Any, namespace: Any) -> str | None:
        """``thread 'worker-3'``: the thread whose ``threading.local`` dict ``namespace`` is
        (one of ``local``'s); None when thread states cannot be read."""
        dummies = next((r for r in gc.get_referents(local) if type(r) is dict), None)
        dummy = None
        if dummies is not None:
            for key, value in list(dummies.items()):
                if value is namespace and type(key) is weakref.ReferenceType:
                    dummy = key()
        if dummy is None:
            return None
        if not self._threads_read:
            self._threads_read = True
            names = _thread_names()
            with contextlib.suppress(Exception):
                for ident, mapping, _ in _ThreadStates.read():
                    if type(mapping) is dict:
                        for value in list(mapping.values()):
                            if type(value).__name__ == "_localdummy":
                                self.keep.append(value)
                                self._dummies[id(value)] = f"thread {names.get(ident, ident)!r}"
        return self._dummies.get(id(dummy))


def is_dummies_of(local: Any, mapping: Any) -> bool:
    """Is ``mapping`` the {weakref: per-thread dict} dict of the threading.local ``local``?"""
    if type(mapping) is not dict or not is_thread_local(local):
        return False
    return any(r is mapping for r in gc.get_referents(local)) and all(
        type(k) is weakref.ReferenceType for k in list(mapping)
    )


# -- roots that outrank the heap's own paths ---------------------------------------------------


@dataclass
class TaskRoot:
    """A pending asyncio task: its coroutine's name, and its await chain's innermost
    coroutine (what that waits on is asked only of the tasks a path ends at)."""

    task: Any
    outer: str  # "push_chunks"
    inner: Any  # the innermost coroutine of its await chain (the outer one when none)
    nested: bool  # the outer coroutine awaits another

    def awaited(self) -> tuple[Any, str | None]:
        """The object it waits on (an Event whose ``wait()`` it awaits, a Future), or None;
        and the text that says so when that object has no name: ``Event.wait()``."""
        inner = self.inner
        awaited = _awaited(inner)
        target = None
        awaiting: str | None = None
        if awaited is not None and type(awaited) not in _GENERATORS:
            target = awaited  # a Future, or an object's __await__ iterator
            awaiting = type_name(awaited)
        if self.nested or target is None:
            awaiting = f"{inner.__qualname__}()"
            frame = generator_frame(inner)
            code = inner.cr_code if type(inner) is types.CoroutineType else None
            method = code is not None and code.co_argcount and code.co_varnames[0] == "self"
            if frame is not None and method:  # a method of what it waits on: Event.wait()
                target = frame.f_locals.get("self", target)
        return target, awaiting


def immediate_roots(
    deadline: float = float("inf"),
) -> tuple[dict[int, CRoot], dict[int, TaskRoot], list[Any]]:
    """Roots a walk stops at even though the heap refers to them: weakref.finalize callbacks
    (``id(info) -> root``) and pending asyncio tasks (the task and every coroutine of its
    await chain: ``id -> TaskRoot``), as many as ``deadline`` (monotonic) leaves time for.
    The list keeps what the ids name alive."""
    roots: dict[int, CRoot] = {}
    tasks: dict[int, TaskRoot] = {}
    keep: list[Any] = []
    registry = getattr(weakref.finalize, "_registry", None)
    if type(registry) is dict:
        for info in list(registry.values()):
            keep.append(info)
            roots[id(info)] = CRoot("finalize", finalize_text(info))
    for index, task in enumerate(_pending_tasks()):
        if index % 256 == 255 and time.monotonic() > deadline:
            break
        chain = _await_chain(task)
        if not chain:
            continue
        root = TaskRoot(task, str(chain[0].__qualname__), chain[-1], len(chain) > 1)
        keep.append(task)
        tasks[id(task)] = root
        for coro in chain:
            keep.append(coro)
            tasks[id(coro)] = root
    return roots, tasks, keep


def _pending_tasks() -> list[Any]:
    module = sys.modules.get("asyncio.tasks")
    if module is None:
        return []
    found: dict[int, Any] = {}
    for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        collection = getattr(module, name, None)
        if collection is None:
            continue
        try:
            for task in list(collection):
                if not task.done():
                    found[id(task)] = task
        except Exception:
            continue
    return list(found.values())


def _coroutine_of(task: Any) -> Any:
    try:
        return task.get_coro()
    except Exception:
        return None


def _await_chain(task: Any) -> list[Any]:
    chain = []
    current = _coroutine_of(task)
    for _ in range(AWAIT_DEPTH):
        if type(current) not in _GENERATORS:
            break
        chain.append(current)
        current = _awaited(current)
    return chain
