"""Seeing a signal arrive at the host's own handler, without changing what the host sees.

A server installs its SIGTERM handler after the agent has started (uvicorn does in
``Server.serve``; gunicorn's master and workers do), so the signal goes to the host's handler
alone, and a SIGKILL after the orchestrator's grace period leaves no trace of it. The tap puts
itself between: ``signal.signal`` installs a thin wrapper around a handler the host gives for
one of the tapped signals (the wrapper writes a ``signal`` event, then calls the host's handler
with the same arguments and returns what it returns), and ``signal.signal`` / ``signal.getsignal``
hand the host back its own handler, never the wrapper, so code that saves and restores handlers
(uvicorn's ``capture_signals``) or compares them keeps working. Handlers the host installed
before the agent are wrapped the same way.

Only Python-level handlers are wrapped; SIG_DFL and SIG_IGN pass through as they are, and so does
what C code installs. ``uninstall`` puts back ``signal.signal``/``getsignal`` and the host's
handlers unwrapped. Events are bounded (``MAX_EVENTS_PER_MINUTE`` per signal).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

#: A signal's disposition as ``signal.getsignal`` gives it: a callable, SIG_DFL, SIG_IGN, None.
Handler = Any
Record = Callable[..., None]
MAX_EVENTS_PER_MINUTE = 10


class _Wrapped:
    """A host's handler with the tap in front; ``host`` is what the host installed."""

    def __init__(self, tap: SignalTap, host: Callable[[int, FrameType | None], Any]) -> None:
        self.host = host
        self._tap = tap

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        self._tap.arrived(signum, frame, self.host)
        return self.host(signum, frame)


class SignalTap:
    def __init__(
        self,
        record: Record,
        signals: Iterable[int],
        describe: Callable[[object], str],
        where: Callable[[FrameType | None], str | None],
        name: Callable[[int], str],
        is_ours: Callable[[object], bool],
        clock: Callable[[], float] = time.monotonic,
        stand_ins: dict[int, Handler] | None = None,
        own: Handler = None,
    ) -> None:
        self._record = record
        self._signals = frozenset(signals)
        self._describe, self._where, self._name = describe, where, name
        self._is_ours = is_ours
        #: signal -> the default (default_int_handler, SIG_DFL) the agent's own handler stands
        #: in for: what the host sees there, and what it may set there without undoing ours.
        self._stand_ins = stand_ins if stand_ins is not None else {}
        self._own = own  # the agent's handler that stands in for them
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[int, list[float]] = {}
        self._signal: Callable[..., Any] | None = None  # the real signal.signal, while tapped
        self._getsignal: Callable[[int], Handler] | None = None

    # -- what the host calls instead of signal.signal / signal.getsignal ---------------------

    def _install_for_host(self, signum: int, handler: Handler) -> Handler:
        assert self._signal is not None
        if signum in self._stand_ins and handler is self._stand_ins[signum]:
            # The host puts back the default the agent's handler stands in for (asyncio.run,
            # uvicorn at their end): ours goes back instead, recording the end and acting as
            # that default.
            handler = self._own
        elif signum in self._signals and self._wants(handler):
            handler = _Wrapped(self, handler)
        return self._as_host_sees(signum, self._signal(signum, handler))

    def _read_for_host(self, signum: int) -> Handler:
        assert self._getsignal is not None
        return self._as_host_sees(signum, self._getsignal(signum))

    def _as_host_sees(self, signum: int, handler: Handler) -> Handler:
        """The host's own handler, never our wrapper; where the agent's handler stands in for
        the default, that default (asyncio.run installs its Ctrl-C handling only where it
        finds ``default_int_handler``; code that compares with SIG_DFL likewise)."""
        if self._is_ours(handler) and signum in self._stand_ins:
            return self._stand_ins[signum]
        return _unwrapped(handler)

    def real_signal(self, signum: int, handler: Handler) -> Handler:
        """``signal.signal`` itself, past the tap: for the agent's own handlers."""
        return (self._signal or signal.signal)(signum, handler)

    def real_getsignal(self, signum: int) -> Handler:
        """What is installed, the host's handlers unwrapped but the agent's own as they are."""
        return _unwrapped((self._getsignal or signal.getsignal)(signum))

    def _wants(self, handler: Handler) -> bool:
        return (
            callable(handler)
            and not isinstance(handler, _Wrapped)
            and handler is not signal.default_int_handler
            and not self._is_ours(handler)
        )

    # -- life ----------------------------------------------------------------------------------

    def install(self) -> None:
        """From the main thread (where handlers may be set); the handlers already there are
        wrapped now."""
        if self._signal is not None:
            return
        self._signal, self._getsignal = signal.signal, signal.getsignal
        for signum in self._signals:
            try:
                current = self._getsignal(signum)
                if self._wants(current):
                    self._signal(signum, _Wrapped(self, current))  # type: ignore[arg-type]
            except (OSError, ValueError):
                continue
        signal.signal = self._install_for_host  # type: ignore[assignment]
        signal.getsignal = self._read_for_host  # type: ignore[assignment]

    def uninstall(self) -> None:
        real_signal, real_getsignal = self._signal, self._getsignal
        if real_signal is None or real_getsignal is None:
            return
        if signal.signal == self._install_for_host:
            signal.signal = real_signal
        if signal.getsignal == self._read_for_host:
            signal.getsignal = real_getsignal  # type: ignore[assignment]
        self._signal = self._getsignal = None
        for signum in self._signals:
            try:
                current = real_getsignal(signum)
                if isinstance(current, _Wrapped):
                    real_signal(signum, current.host)
            except (OSError, ValueError):
                continue  # off the main thread at exit: the process is ending anyway

    # -- the arrival ---------------------------------------------------------------------------

    def arrived(self, signum: int, frame: FrameType | None, host: object) -> None:
        now = self._clock()
        with self._lock:
            recent = [t for t in self._recent.get(signum, []) if now - t < 60.0]
            if len(recent) >= MAX_EVENTS_PER_MINUTE:
                return
            self._recent[signum] = [*recent, now]
        # The host's handler runs whether or not the arrival was written down.
        with contextlib.suppress(Exception):
            self._record(
                "signal",
                signal=self._name(signum),
                handled_by=self._describe(host),
                where=self._where(frame),
            )


def _unwrapped(handler: Handler) -> Handler:
    return handler.host if isinstance(handler, _Wrapped) else handler
