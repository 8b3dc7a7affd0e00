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
    ) -> None:
        self._record = record
        self._signals = frozenset(signals)
        self._describe, self._where, self._name = describe, where, name
        self._is_ours = is_ours
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[int, list[float]] = {}
        self._signal: Callable[..., Any] | None = None  # the real signal.signal, while tapped
        self._getsignal: Callable[[int], Handler] | None = None

    # -- what the host calls instead of signal.signal / signal.getsignal ---------------------

    def _install_for_host(self, signum: int, handler: Handler) -> Handler:
        assert self._signal is not None
        if signum in self._signals and self._wants(handler):
            handler = _Wrapped(self, handler)
        return _unwrapped(self._signal(signum, handler))

    def _read_for_host(self, signum: int) -> Handler:
        assert self._getsignal is not None
        return _unwrapped(self._getsignal(signum))

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
