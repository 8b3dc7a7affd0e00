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
- **atexit.** The callbacks live in the interpreter state (not traversed by the gc), each
  with the args tuple and kwargs dict ``atexit.register`` keeps for it (a tuple of untracked
  objects is untracked itself: nothing but that state knows it). ``atexit_callbacks`` finds
  the state by its content, through /proc/self/mem (a wrong guess reads nothing that could
  crash), checks it against what ``atexit.unregister`` shows a probe: it compares its
  argument with every registered function with ``==``; a function's, a partial's or a bound
  method's own ``==`` answers ``NotImplemented`` to an object of another type, so Python asks
  ``probe.__eq__`` with the registered function, which records it and answers False (so it
  unregisters none). Then it takes the objects, each callback in one step no other thread
  can come between. Where it cannot (another Python, another platform), the probe alone
  names the functions and the args stay out of reach.
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
import os
import signal
import struct
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from diag.dominators import Group

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
    places ``register_at_fork``'s lists before the warnings state and the audit hooks after
    it (the atexit callbacks between them are read by ``atexit_callbacks``). Only the words
    found so are followed."""
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
    return out


# -- the atexit callbacks, read from the interpreter state ------------------------------------

#: Bytes of the interpreter state searched for its atexit state (CPython keeps it 3.5 KiB in
#: on 3.11, 3.9 KiB on 3.12, 10.5 KiB on 3.13).
ATEXIT_SEARCH_BYTES = 32 * 1024
#: More registered callbacks (unregistered ones included) than this and none is read.
ATEXIT_MAX_CALLBACKS = 1_000_000
#: Reads of the state tried when other threads register or unregister meanwhile.
ATEXIT_TRIES = 3
#: Entries whose args and kwargs are checked in memory (evenly spaced; every entry's func is):
#: enough to know the place, the rest are checked as objects once taken.
ATEXIT_CHECKED = 256

_WORD, _INT = struct.calcsize("P"), struct.calcsize("i")


@dataclass(frozen=True)
class AtexitCallback:
    """A callback as ``atexit.register(func, *args, **kwargs)`` keeps it."""

    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None


class _Memory:
    """This process's own memory, read through ``/proc/self/mem``: an address that is not
    mapped is an OSError, never a crash. Pages are read once (a snapshot: the reads only
    confirm where the state is, the objects are taken by ``_take_callbacks``)."""

    PAGE = 4096

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pages: dict[int, memoryview | None] = {}

    def read(self, address: int, size: int, short: bool = False) -> bytes | None:
        """``size`` bytes at ``address`` (fewer, where ``short``, before an unmapped page)."""
        if address <= 0 or size <= 0 or address + size >= 1 << 63:
            return None
        try:
            data = os.pread(self.fd, size, address)
        except (OSError, OverflowError, ValueError):
            return None
        return data if len(data) == size or (short and data) else None

    def word(self, address: int) -> int | None:
        """The pointer-sized word at ``address`` (aligned), or None where it is unmapped."""
        if address <= 0 or address % _WORD:
            return None
        page = address - address % self.PAGE
        if page not in self.pages:
            data = self.read(page, self.PAGE)
            self.pages[page] = None if data is None else memoryview(data).cast("P")
        words = self.pages[page]
        return None if words is None else int(words[(address - page) // _WORD])

    def type_word(self, address: int) -> int | None:
        """The ``ob_type`` of the object at ``address`` (the header's last word)."""
        return self.word(address + object.__basicsize__ - _WORD)


@dataclass
class _Candidate:
    """A place in the interpreter state that reads as ``callbacks, ncallbacks, callback_len``,
    and what its array held when it was read."""

    offset: int  # from the interpreter state
    funcs: list[int]  # the func word of each registered (non-NULL) entry, in order
    func_types: set[int]


def _candidates(memory: _Memory, interp: int, count: int) -> list[_Candidate]:
    """Every place in the first ``ATEXIT_SEARCH_BYTES`` of the interpreter state that holds a
    pointer, then ``count`` and an int >= ``count`` (``struct atexit_state``'s
    ``callbacks, ncallbacks, callback_len``), whose array checks out: each registered entry
    an ``atexit_callback {func, args, kwargs}`` whose func's type is a type, whose args is a
    tuple and whose kwargs is NULL or a dict."""
    region = memory.read(interp, ATEXIT_SEARCH_BYTES, short=True)
    if region is None:
        return []
    needle = struct.pack("@i", count)
    found: list[_Candidate] = []
    at = region.find(needle, _WORD)
    while at >= 0 and len(found) < 16:
        if at % _WORD == 0 and at + 2 * _INT <= len(region):
            pointer = int(struct.unpack_from("@P", region, at - _WORD)[0])
            length = int(struct.unpack_from("@i", region, at + _INT)[0])
            if pointer and pointer % _WORD == 0 and length >= count:
                candidate = _check_array(memory, pointer, count, at - _WORD)
                if candidate is not None:
                    found.append(candidate)
        at = region.find(needle, at + 1)
    return found


def _check_array(memory: _Memory, pointer: int, count: int, offset: int) -> _Candidate | None:
    array = memory.read(pointer, count * _WORD)
    if array is None:
        return None
    entries = [e for e in memoryview(array).cast("P").tolist() if e]
    if not entries:
        return None  # nothing to confirm the place by (and nothing registered there)
    funcs: list[int] = []
    types_of: dict[int, int | None] = {}
    step = max(len(entries) // ATEXIT_CHECKED, 1)
    for index, entry in enumerate(entries):
        func = memory.word(entry)
        if not func:
            return None
        funcs.append(func)
        if index % step == 0 or index == len(entries) - 1:
            args, kwargs = memory.word(entry + _WORD), memory.word(entry + 2 * _WORD)
            if args is None or memory.type_word(args) != id(tuple):
                return None
            if kwargs is None or (kwargs and memory.type_word(kwargs) != id(dict)):
                return None
        if func not in types_of:
            types_of[func] = _type_of_type(memory, memory.type_word(func))
        if types_of[func] is None:
            return None
    return _Candidate(offset, funcs, {k for k in types_of.values() if k is not None})


def _type_of_type(memory: _Memory, kind: int | None) -> int | None:
    """``kind`` if the object there is a type (its type is ``type``, or a metaclass whose type
    is ``type``), else None."""
    if not kind:
        return None
    meta = memory.type_word(kind)
    if meta == id(type) or (meta and memory.type_word(meta) == id(type)):
        return kind
    return None


def _probe_safe_types() -> frozenset[int]:
    """The ids of types whose ``==`` with an object of another type never answers True (their
    own ``tp_richcompare`` answers NotImplemented, or they inherit object's, identity only):
    the probe given to ``atexit.unregister`` can unregister none of their instances."""
    kinds: list[type] = [
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
        types.MethodWrapperType,
        functools.partial,
        type,
    ]
    return frozenset(id(kind) for kind in kinds)


def _atexit_structs() -> tuple[Any, Any]:
    """ctypes views of ``struct atexit_state`` (its part from ``callbacks``) and of
    ``atexit_callback``: func and args as objects, kwargs as an address or an object."""
    import ctypes

    class Kwargs(ctypes.Union):
        _fields_ = [("address", ctypes.c_void_p), ("obj", ctypes.py_object)]

    class Callback(ctypes.Structure):
        _fields_ = [("func", ctypes.py_object), ("args", ctypes.py_object), ("kwargs", Kwargs)]

    class State(ctypes.Structure):
        _fields_ = [
            ("callbacks", ctypes.POINTER(ctypes.POINTER(Callback))),
            ("ncallbacks", ctypes.c_int),
            ("callback_len", ctypes.c_int),
        ]

    return State, Callback


_STRUCTS: list[tuple[Any, Any]] = []


def _take_callbacks(address: int) -> list[tuple[Any, Any, Any]]:
    """(func, args, kwargs) of every registered callback, read from the atexit state at
    ``address`` (found and checked by ``_candidates``). Each callback is read with the GIL
    held and no bytecode between the count, the array's word and the callback's fields that
    lets another thread run (no call, no backward jump; the gc off, so that no allocation
    runs a finalizer): whatever unregisters or registers on another thread does it before or
    after, never between, so every pointer followed is one the atexit state holds then, and
    each object is ours (a new reference) before that thread can free it."""
    if not _STRUCTS:
        _STRUCTS.append(_atexit_structs())
    state_type, _ = _STRUCTS[0]
    state = state_type.from_address(address)
    out: list[tuple[Any, Any, Any]] = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        index = 0
        while index < ATEXIT_MAX_CALLBACKS:
            if index >= state.ncallbacks:
                break
            entry = state.callbacks[index]
            if entry:
                callback = entry.contents
                kwargs = callback.kwargs
                taken = (callback.func, callback.args, kwargs.obj if kwargs.address else None)
                out.append(taken)
            index += 1
    finally:
        if collecting:
            gc.enable()
    return out


def atexit_callbacks() -> list[AtexitCallback] | None:
    """Every registered atexit callback with the args and kwargs ``atexit.register`` keeps for
    it (the same objects), in registration order; None where they cannot be read safely.

    Read from the interpreter state (``interp->atexit``: ``callbacks``, an array of
    ``atexit_callback *`` each {func, args, kwargs}, ``ncallbacks`` entries used, NULL where
    one was unregistered; CPython 3.11 to 3.13) without assuming where it is: a place in the
    interpreter state's first bytes that reads as that struct with ``atexit._ncallbacks()``
    entries, whose entries all check out (``_candidates``), read through /proc/self/mem, so a
    wrong guess reads nothing that could crash. The functions it names must then be the ones
    ``atexit.unregister`` compares a probe with, in the same order (where every registered
    function's type is one whose ``==`` cannot answer True to the probe; otherwise the
    probe is not given, and the checks of the memory decide alone). Only then are the objects
    taken (``_take_callbacks``). Anything else, an exception included, answers None."""
    try:
        return _atexit_callbacks()
    except Exception:
        return None


def _atexit_callbacks() -> list[AtexitCallback] | None:
    import atexit

    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is not None and not is_gil_enabled():
        return None  # a free-threaded build: another thread could free what is being read
    api = _ThreadStates._api()
    interp = int(api.PyInterpreterState_Get())
    count = atexit._ncallbacks()
    if count == 0:
        return []
    if not 0 < count <= ATEXIT_MAX_CALLBACKS:
        return None
    fd = os.open("/proc/self/mem", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        place = _find_atexit_state(fd, interp, count)
    finally:
        os.close(fd)
    if place is None:
        return None
    out = []
    for func, args, kwargs in _take_callbacks(interp + place):
        if type(args) is not tuple or (kwargs is not None and type(kwargs) is not dict):
            return None
        out.append(AtexitCallback(func, args, kwargs))
    return out


def _find_atexit_state(fd: int, interp: int, count: int) -> int | None:
    """The atexit state's offset in the interpreter state, or None."""
    import atexit

    safe = _probe_safe_types()
    for _ in range(ATEXIT_TRIES):
        found = _candidates(_Memory(fd), interp, count)
        if len(found) == 1:
            (candidate,) = found
            if not candidate.func_types <= safe:
                return candidate.offset
            probe = _AtexitProbe()
            atexit.unregister(probe)  # compares with each callback, removes none
            if [id(func) for func in probe.seen] == candidate.funcs:
                return candidate.offset
        # Another thread registered or unregistered meanwhile, or nothing (or more than one
        # place) checks out: again, with the count as it is now.
        count = atexit._ncallbacks()
        if not 0 < count <= ATEXIT_MAX_CALLBACKS:
            return None
    return None


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


def held_from_c(
    deadline: float = float("inf"),
) -> list[tuple[str, Any, list[tuple[str, Any]]]]:
    """The interpreter's own registries whose entries no Python root reaches, as sources for
    the dominator walk: (kind, the registry or context, [(path, value)]). A thread's context:
    each variable (``contextvar request_log in thread 'MainThread'``); the atexit callbacks and
    the signal handlers (found and named as ``CRoots`` finds them); the weakref.finalize
    callbacks (reachable through a library's class, but named by what they are); the pending
    asyncio tasks, grouped by coroutine and what they await (an event loop reaches them, but
    a leak in them is theirs, not the loop's). A source that cannot be read names nothing."""
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
    with contextlib.suppress(Exception):
        tasks = task_entries(deadline)
        out.append(("task", tasks, tasks))
    return [(kind, registry, _grouped(entries)) for kind, registry, entries in out]


def finalize_text(info: Any) -> str:
    """``weakref.finalize callback remove_tmp()``: a finalize registry entry, by its callback."""
    func = getattr(info, "func", None)
    return "weakref.finalize callback" + ("" if func is None else f" {callback_text(func)}")


def _grouped(entries: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """One source per path: a thousand callbacks of one function registered with a chunk
    each are one owner (``atexit callback flush()``), held through a list of ours (a few
    bytes a callback, counted with them)."""
    by_path: dict[str, Group] = {}
    for path, value in entries:
        by_path.setdefault(path, Group()).append(value)
    return [(path, values[0] if len(values) == 1 else values) for path, values in by_path.items()]


def task_entries(deadline: float = float("inf")) -> list[tuple[str, Any]]:
    """(text, task) for every pending asyncio task, the text naming its coroutine and what
    it awaits: ``pending asyncio tasks of hold() awaiting sleep()``, or ``… awaiting svc.STOP``
    where a module's global is the object it waits on (a look through the modules' globals,
    no pass over the heap)."""
    found: list[tuple[str, Any, str | None, Any]] = []
    for root, _ in _task_roots(deadline):
        try:
            target, awaiting = root.awaited()
        except Exception:
            target, awaiting = None, None
        found.append((root.outer, target, awaiting, root.task))
    named = _global_names({id(target): target for _, target, _, _ in found if target is not None})
    entries = []
    for outer, target, awaiting, task in found:
        what = named.get(id(target)) or awaiting
        text = f"pending asyncio tasks of {outer}()"
        entries.append((f"{text} awaiting {what}" if what else text, task))
    found.clear()
    return entries


def _global_names(wanted: dict[int, Any]) -> dict[int, str]:
    """id -> ``module.name`` for the ``wanted`` objects that a module's global is (the first
    module that names it), looked for in C through each module's values."""
    names: dict[int, str] = {}
    if not wanted:
        return names
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if type(namespace) is not dict or wanted.keys().isdisjoint(map(id, namespace.values())):
            continue
        for key, value in list(namespace.items()):
            if id(value) in wanted and type(key) is str:
                names.setdefault(id(value), f"{module_name}.{key}")
    return names


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
        """Each callback's function, and the args and kwargs ``atexit.register`` keeps for it
        (``atexit callback remove_tmp() args``), where ``atexit_callbacks`` can read them;
        else the functions alone, as ``atexit.unregister`` shows them to a probe."""
        import atexit

        callbacks = atexit_callbacks()
        if callbacks is None:
            probe = _AtexitProbe()
            atexit.unregister(probe)  # compares with each callback, removes none
            callbacks = [AtexitCallback(func, (), None) for func in probe.seen]
        for callback in callbacks:
            text = f"atexit callback {callback_text(callback.func)}"
            yield callback.func, CRoot("atexit", text)
            if callback.args:  # never the empty tuple every callback without args shares
                yield callback.args, CRoot("atexit", f"{text} args")
            if callback.kwargs:
                yield callback.kwargs, CRoot("atexit", f"{text} kwargs")

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
        elif not self.nested:
            return None, None  # not started yet, or running: it awaits nothing
        if self.nested:
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
    for root, chain in _task_roots(deadline):
        keep.append(root.task)
        tasks[id(root.task)] = root
        for coro in chain:
            keep.append(coro)
            tasks[id(coro)] = root
    return roots, tasks, keep


def _task_roots(deadline: float) -> Iterator[tuple[TaskRoot, list[Any]]]:
    """Each pending task with its await chain, as many as ``deadline`` (monotonic) allows."""
    for index, task in enumerate(_pending_tasks()):
        if index % 256 == 255 and time.monotonic() > deadline:
            return
        chain = _await_chain(task)
        if chain:
            yield TaskRoot(task, str(chain[0].__qualname__), chain[-1], len(chain) > 1), chain


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
