"""Where resources are created: a low-cost recorder of creation stacks, from audit hooks.

CPython raises an audit event when a file is opened (``open``), a socket made
(``socket.__new__``, also for each accepted connection), a thread started
(``_thread.start_new_thread``, from Python 3.12) and a child process started
(``subprocess.Popen``). One hook (``sys.addaudithook``: it can never be removed) sees them all.
It is gated: its first line is one membership test of the event name in a frozenset that is
empty while the recorder is off.

While on, the hook records the stack of the Python frames that made the resource (code and
offset, innermost first, up to ``DEPTH`` frames; lines are read and the user's frames kept
only when a dump asks):

- threads and child processes each time (each costs far more to start than a stack);
- files and sockets one creation in ``ALWAYS_EVERY`` (every one after ``window_started()``).
  A leak makes many instances, so the sampled stacks name its site.

A stack is tied to its object: a socket is passed to the hook, a thread is the ``__self__``
of the function passed to start, a Popen is the ``self`` of the frame raising the event, each
kept by id with a weak reference to check it is still the same object. ``open`` passes no
object, only the name the file was opened with: the stack is kept by that name (the last
sampled opening of a name wins), which the file object keeps as ``.name``. Both tables are
bounded (``MAX_RECORDS`` entries).

Measured (``python -m benchmarks creation``), the figures at ``ALWAYS_ON``: over the 5 %
budget, so the agent installs the hook only when asked (``DIAG_CREATION_STACKS=1``, the
``creation_stacks`` setting: ``acquire(force=True)``). Escalation windows
do not turn it on either: tracemalloc, on during a window, already gives each object's
allocation stack, which for a file, socket, thread, task or Popen is where it was created, and
the recorder on top of tracemalloc costs far more than tracemalloc alone (its frame walk is
traced). The recorder stays for a host or a later Python where the figure allows it.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

#: Frames kept per creation: enough to climb out of http clients and pools to the user's code.
DEPTH = 16
#: Records kept per table; past it, dead ones go, then the oldest half.
MAX_RECORDS = 4096
#: Between windows, one file or socket creation in this many has its stack recorded.
ALWAYS_EVERY = 64
#: Whether the recorder runs between windows too (sampled), decided by its measured cost on a
#: loop that opens and closes files and sockets as fast as it can (benchmarks/bench_creation.py,
#: 2 CPUs, Python 3.11, three runs): the hook alone, gated off, costs +5 to 12 % there (CPython
#: builds each audit event's arguments and calls the hook whatever it does); recording 1 in 64
#: +7 to 16 %; every creation +63 %. Over the 5 % budget: off, and the hook not installed.
ALWAYS_ON = False

_SAMPLED = frozenset({"open", "socket.__new__"})
_EVERY_TIME = frozenset({"_thread.start_new_thread", "subprocess.Popen"})
_OFF: frozenset[str] = frozenset()
_ON = _SAMPLED | _EVERY_TIME

Places = tuple[tuple[str, int], ...]
_Raw = list[Any]  # code, offset, code, offset, ... innermost first


#: What the hook looks at: empty while off. A module global: the hook's first line reads it.
_watched: frozenset[str] = _OFF


class _State:
    every = ALWAYS_EVERY
    installed = False
    users = 0  # agents that keep it on between windows
    windows = 0  # windows that want every creation
    recorded = 0


_lock = threading.Lock()
#: id(object) -> (weak reference, raw stack), for sockets, threads and Popen objects.
_by_id: dict[int, tuple[Any, _Raw]] = {}
#: the name a file was opened with -> raw stack.
_by_name: dict[Any, _Raw] = {}
#: Sampled creations left until the next recorded one.
_countdown = 1


def _raw(frame: Any) -> _Raw:
    """Code objects and instruction offsets, innermost first: reading line numbers costs more
    (3.11 decodes them from the line table), so that waits until a dump asks."""
    out: list[Any] = []
    left = DEPTH
    while frame is not None and left:
        out.append(frame.f_code)
        out.append(frame.f_lasti)
        frame = frame.f_back
        left -= 1
    return out


def _bound(table: dict[Any, Any], alive: Callable[[Any], bool]) -> None:
    if len(table) < MAX_RECORDS:
        return
    for key, value in list(table.items()):
        if not alive(value):
            table.pop(key, None)
    if len(table) >= MAX_RECORDS:
        for key in list(itertools.islice(table, MAX_RECORDS // 2)):
            table.pop(key, None)


def _alive(entry: tuple[Any, _Raw]) -> bool:
    return entry[0]() is not None


def _keep(obj: Any, raw: _Raw) -> None:
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return
    _bound(_by_id, _alive)
    _by_id[id(obj)] = (ref, raw)
    _State.recorded += 1


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Every audit event of the process comes here: the first line must stay this cheap.
    if event not in _watched:
        return
    global _countdown
    try:
        if event in _SAMPLED:
            _countdown -= 1
            if _countdown > 0:
                return
            _countdown = _State.every
            raw = _raw(sys._getframe(1))
            if event == "open":
                name = args[0]
                if type(name) in (str, bytes, int):
                    _bound(_by_name, bool)
                    _by_name.pop(name, None)  # the newest last: the oldest go first
                    _by_name[name] = raw
                    _State.recorded += 1
            else:
                _keep(args[0], raw)
        elif event == "_thread.start_new_thread":
            owner = getattr(args[0], "__self__", None)  # Thread._bootstrap's thread
            if owner is not None:
                _keep(owner, _raw(sys._getframe(1)))
        else:  # subprocess.Popen, raised in Popen._execute_child: its frame's self
            frame: Any = sys._getframe(1)
            popen = sys.modules["subprocess"].Popen
            for _ in range(3):
                if frame is None:
                    return
                candidate = frame.f_locals.get("self")
                if candidate is not None and issubclass(type(candidate), popen):
                    _keep(candidate, _raw(frame))
                    return
                frame = frame.f_back
    except Exception:  # never into the host
        return


def _apply() -> None:
    global _watched, _countdown
    on = _State.windows > 0 or _State.users > 0
    _State.every = 1 if _State.windows > 0 else ALWAYS_EVERY
    _countdown = min(_countdown, _State.every)
    _watched = _ON if on else _OFF


def install() -> None:
    """Add the hook to this process (once; it stays, gated off when nobody wants it)."""
    with _lock:
        if not _State.installed:
            sys.addaudithook(_hook)
            _State.installed = True


def acquire(force: bool = False) -> None:
    """An agent wants stacks between windows (sampled): ``ALWAYS_ON`` decides (``force``:
    the benchmark measures it either way)."""
    if not (ALWAYS_ON or force):
        return
    install()
    with _lock:
        _State.users += 1
        _apply()


def release() -> None:
    with _lock:
        if _State.users > 0:
            _State.users -= 1
            _apply()


def window_started() -> None:
    """A traced window: every creation is recorded until ``window_ended``."""
    install()
    with _lock:
        _State.windows += 1
        _apply()


def window_ended() -> None:
    with _lock:
        _State.windows = max(_State.windows - 1, 0)
        _apply()


def recording() -> bool:
    return bool(_watched)


def sampling() -> int:
    """One file or socket creation in how many is recorded now (1: every one)."""
    return _State.every


def stack_of(obj: Any) -> Places | None:
    """Where ``obj`` (a socket, thread, Popen or file object) was created, innermost frame
    first, if the recorder saw it."""
    entry = _by_id.get(id(obj))
    if entry is not None and entry[0]() is obj:
        return _places(entry[1])
    if not _is_file(obj):
        return None
    try:
        name = obj.name
    except Exception:  # a wrapper whose raw file is gone
        return None
    raw = _by_name.get(name) if type(name) in (str, bytes, int) else None
    return _places(raw) if raw is not None else None


def _places(raw: _Raw) -> Places:
    return tuple(_place(code, offset) for code, offset in zip(raw[::2], raw[1::2], strict=True))


@functools.lru_cache(maxsize=8192)
def _place(code: Any, offset: int) -> tuple[str, int]:
    line = code.co_firstlineno
    for start, end, found in code.co_lines():
        if start <= offset < end:
            line = found if found is not None else line
            break
    return code.co_filename, line


def _is_file(obj: Any) -> bool:
    import io

    return issubclass(type(obj), (io.FileIO, io.BufferedIOBase, io.TextIOBase))


def reset_after_fork() -> None:
    """The parent's window ended for the child: its hook stays, gated as the agents ask."""
    with _lock:
        _State.windows = 0
        _apply()
