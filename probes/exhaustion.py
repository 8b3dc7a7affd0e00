"""A resource running out, seen from inside: which resource an exception says is exhausted, and a
bounded way to write it into the history as a ``resource-exhausted`` event.

What counts as a resource running out:

- ``OSError`` with ``EMFILE`` (the process's ``RLIMIT_NOFILE``) or ``ENFILE`` (the system's
  file table): **fds**;
- ``RuntimeError: can't start new thread`` (Python's words for ``pthread_create`` failing with
  ``EAGAIN``: ``RLIMIT_NPROC``, ``threads-max``, the cgroup's ``pids.max``): **threads**;
- ``OSError`` ``EAGAIN`` from a fork (``RLIMIT_NPROC``): **children**;
- ``OSError`` ``ENOMEM`` from a fork or an ``mmap`` (``vm.max_map_count``, ``RLIMIT_AS``):
  **memory_maps** for an mmap, **children** for a fork.

Where it is seen: an exception nobody caught (``sys.excepthook`` and ``threading.excepthook``,
chained by ``probes.endings``), and the agent's own operations that fail with one of these
(its control socket's ``accept``, a probe reading ``/proc``): those call :func:`note`. Python
code that catches ``EMFILE`` itself and goes on is not seen. Events are bounded: at most
``MAX_EVENTS_PER_MINUTE`` a minute, the next one counting those left out; the exception that
ends the process is always written.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from diag import OWN_DIRS

log = logging.getLogger("diag")

EVENT = "resource-exhausted"
MAX_EVENTS_PER_MINUTE = 4
#: How much of an exception's message the history keeps (messages may carry user data), and
#: how many of its frames (this module's and probes.endings' records alike).
MESSAGE_CHARS = 300
STACK_FRAMES = 30

Record = Callable[..., None]

_FD_ERRORS = frozenset({errno.EMFILE, errno.ENFILE})
#: Words in the last frames (function names, source lines) that say a fork or an mmap failed.
_FORK_WORDS = ("fork", "_execute_child", "Popen", "spawn", "_launch")
_MMAP_WORDS = ("mmap",)


def _mentions(frames: list[traceback.FrameSummary], words: tuple[str, ...]) -> bool:
    for frame in frames[-3:]:
        text = f"{frame.name} {frame.line or ''}"
        if any(word in text for word in words):
            return True
    return False


def classify(exc: BaseException) -> tuple[str, str] | None:
    """``(resource, error)`` when ``exc`` says a resource ran out (``("fds", "EMFILE")``,
    ``("threads", "can't start new thread")``...), else None."""
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "threads", "can't start new thread"
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    if exc.errno in _FD_ERRORS:
        return "fds", name
    if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if _mentions(frames, _MMAP_WORDS):
        return "memory_maps", name
    if _mentions(frames, _FORK_WORDS):
        return "children", name
    return None


def stack_of(tb: TracebackType | None) -> list[str]:
    """The traceback's frames, oldest first, less diag's own (a KeyboardInterrupt is raised
    from inside the agent's signal handler, which chains to Python's)."""
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(OWN_DIRS)]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-STACK_FRAMES:]]


def where_of(tb: TracebackType | None) -> str | None:
    """``file:line in function`` of the frame that raised (diag's own frames included: the
    agent's operations are named by their ``where`` argument instead)."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return None
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


class ExhaustionRecorder:
    """Writes ``resource-exhausted`` events through ``record(kind, **fields)``, at most
    ``per_minute`` a minute (``force`` for the exception that ends the process)."""

    def __init__(
        self,
        record: Record,
        per_minute: int = MAX_EVENTS_PER_MINUTE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._record = record
        self._per_minute = per_minute
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._recent: list[float] = []
        self.left_out = 0

    def _allowed(self, force: bool) -> int | None:
        """None when over the bound, else how many were left out before this one."""
        now = self._monotonic()
        with self._lock:
            self._recent = [t for t in self._recent if now - t < 60.0]
            if len(self._recent) >= self._per_minute and not force:
                self.left_out += 1
                return None
            self._recent.append(now)
            left_out, self.left_out = self.left_out, 0
            return left_out

    def exception(
        self,
        exc: BaseException,
        *,
        how: str,
        where: str | None = None,
        thread: str | None = None,
        force: bool = False,
    ) -> bool:
        """Record ``exc`` if it says a resource ran out. ``how``: ``unhandled`` (the process's
        end), ``thread`` (a thread died of it) or ``agent`` (the agent's own operation failed
        and was retried). True when it was a resource running out (written or left out)."""
        found = classify(exc)
        if found is None:
            return False
        left_out = self._allowed(force)
        if left_out is None:
            return True
        resource, error = found
        fields: dict[str, Any] = {
            "resource": resource,
            "error": error,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc)[:MESSAGE_CHARS],
            "how": how,
            "where": where or where_of(exc.__traceback__),
            "stack": stack_of(exc.__traceback__),
        }
        if thread is not None:
            fields["thread"] = thread
        if left_out:
            fields["left_out_before"] = left_out
        try:
            self._record(EVENT, **fields)
        except Exception:  # the host goes on whether or not it was written down
            log.debug("diag: a resource-exhausted record was not written", exc_info=True)
        return True

    def seen(self, exc: BaseException, **how: Any) -> None:
        """``exception`` from a hook: never raises, whatever happens."""
        try:
            self.exception(exc, **how)
        except Exception:
            log.debug("diag: a resource-exhausted record was not written", exc_info=True)


#: The recorder of the running agent, set by ``probes.endings`` while it is installed.
_active: ExhaustionRecorder | None = None


def activate(recorder: ExhaustionRecorder | None) -> None:
    global _active
    _active = recorder


def active() -> ExhaustionRecorder | None:
    return _active


def note(exc: BaseException, where: str) -> bool:
    """The agent's own operation ``where`` failed with ``exc``: write it down (bounded) when it
    says a resource ran out. True when it did say so, written or not. Never raises."""
    recorder = _active
    if recorder is None:
        return classify(exc) is not None
    try:
        return recorder.exception(exc, how="agent", where=where)
    except Exception:
        return False
