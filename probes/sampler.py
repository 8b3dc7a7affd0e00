"""One sampler per process: runs every probe once per tick and hands the tick to its consumers.

``tick()`` is one pass and is what tests call, with an injected clock. ``start()`` runs it on a
single daemon thread that waits on an Event (``stop()`` wakes it at once). A probe that raises is
counted and backed off (skip 1, 2, 4, ... ticks); after ``max_failures`` failures in a row it is
disabled. Nothing a probe or a listener does reaches the host's threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from diag.metrics import HISTOGRAM_ROWS
from diag.model import Clock, Labels, Sample, Tick, labels_of
from diag.series import SeriesStore
from probes import exhaustion
from probes.base import Probe, ProbeUnavailable, notes_of

log = logging.getLogger("diag")

Listener = Callable[[Tick], None]


class Analyzer(Protocol):
    """Reads a tick's probe samples and adds its own (the growth detector's verdicts)."""

    name: str

    def analyze(
        self, t: float, samples: Sequence[Sample], chunks: Sequence[Sequence[Sample]] = ()
    ) -> Sequence[Sample]:
        """``chunks``: the same samples as each probe gave them (one sequence a probe)."""
        ...


@dataclass
class ProbeState:
    probe: Any  # a Probe, or an Analyzer run through the same guard
    errors: int = 0
    consecutive_failures: int = 0
    skip_ticks: int = 0
    disabled: bool = False
    reason: str | None = None  # why it did not sample in the last tick
    last_duration: float = 0.0
    sampled: bool = False
    reported: bool = False  # its first failure has been logged
    labels: Labels = ()  # its self-metrics' labels, built once
    # Its error count and enabled flag as samples, rebuilt only when they change.
    counted: tuple[int, bool, Sample, Sample] | None = None
    # The tuple it handed last, and the part of it the store keeps: a probe that hands out
    # the very same tuple again (nothing moved) is not filtered again.
    handed: Sequence[Sample] | None = None
    kept_part: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = labels_of(probe=self.name)

    def counted_samples(self) -> tuple[Sample, Sample]:
        counted = self.counted
        if counted is None or counted[0] != self.errors or counted[1] != self.sampled:
            labels = self.labels
            counted = self.counted = (
                self.errors,
                self.sampled,
                Sample("probe_errors_total", float(self.errors), labels),
                Sample("probe_enabled", 1.0 if self.sampled else 0.0, labels),
            )
        return counted[2], counted[3]

    @property
    def name(self) -> str:
        return str(self.probe.name)


@dataclass(frozen=True)
class ProbeStatus:
    name: str
    enabled: bool
    sampled: bool
    reason: str | None
    errors: int
    last_duration: float
    notes: tuple[str, ...]


class Sampler:
    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        interval: float = 5.0,
        clock: Clock = time.time,
        store: SeriesStore | None = None,
        max_failures: int = 5,
        monotonic: Callable[[], float] = time.perf_counter,
        analyzers: Sequence[Analyzer] = (),
        kept: Container[str] | None = None,
    ) -> None:
        self.interval = interval
        #: The series the store keeps (names); None: every one but histogram buckets.
        self._kept = kept
        self.clock = clock
        self.store = store if store is not None else SeriesStore()
        self.max_failures = max_failures
        self._monotonic = monotonic
        self._states = [ProbeState(p) for p in probes]
        self._analyzer_states = [ProbeState(a) for a in analyzers]
        self._listeners: list[Listener] = []
        self._listener_errors = 0
        self._lock = threading.Lock()
        self._held_for_fork = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: Tick | None = None
        self.ticks = 0

    # -- one pass -------------------------------------------------------------------------

    def tick(self) -> Tick:
        with self._lock:
            return self._tick_locked()

    def _tick_locked(self) -> Tick:
        started = self._monotonic()
        samples: list[Sample] = []
        chunks: list[Sequence[Sample]] = []
        for state in self._states:
            chunk = self._run_probe(state, state.probe.sample)
            chunks.append(chunk)
            samples.extend(chunk)
        t = self.clock()
        measured = tuple(samples)
        stored = [s for state, chunk in zip(self._states, chunks, strict=True)
                  for s in self._kept_of(state, chunk)]  # fmt: skip
        for state in self._analyzer_states:
            analyze = functools.partial(state.probe.analyze, t, measured, chunks)
            found = self._run_probe(state, analyze)
            samples.extend(found)
            stored.extend(s for s in found if self._keeps(s.name))
        self.store.add(t, stored)
        samples.extend(self._self_samples(t, self._monotonic() - started))
        tick = Tick(t, tuple(samples))
        self.latest = tick
        self.ticks += 1
        for listener in list(self._listeners):
            try:
                listener(tick)
            except Exception:
                self._listener_errors += 1
                if self._listener_errors == 1:
                    log.exception("diag: a tick listener failed; it is kept, failures counted")
        return tick

    def _keeps(self, name: str) -> bool:
        """Whether the store keeps this series: histogram buckets are exposition detail."""
        kept = self._kept
        return name not in HISTOGRAM_ROWS if kept is None else name in kept

    def _kept_of(self, state: ProbeState, chunk: Sequence[Sample]) -> list[Sample]:
        """The part of the probe's output the store keeps; the same tuple handed again
        (immutable, so unchanged) is not filtered again."""
        if chunk is not state.handed or type(chunk) is not tuple:
            state.handed = chunk
            state.kept_part = [s for s in chunk if self._keeps(s.name)]
        return state.kept_part

    def _run_probe(
        self, state: ProbeState, call: Callable[[], Sequence[Sample]]
    ) -> Sequence[Sample]:
        state.sampled = False
        if state.disabled:
            state.last_duration = 0.0
            return ()
        if state.skip_ticks > 0:
            state.skip_ticks -= 1
            state.last_duration = 0.0
            return ()
        started = self._monotonic()
        try:
            out = call()
        except ProbeUnavailable as exc:
            state.reason = exc.reason
            if exc.permanent:
                state.disabled = True
                log.info("diag: probe %s disabled: %s", state.name, exc.reason)
            return ()
        except Exception as exc:
            exhaustion.note(exc, f"diag probe {state.name}")  # EMFILE reading /proc, say
            self._record_failure(state, exc)
            return ()
        finally:
            state.last_duration = self._monotonic() - started
        state.reason = None
        state.sampled = True
        state.consecutive_failures = 0
        return out

    def _record_failure(self, state: ProbeState, exc: Exception) -> None:
        state.errors += 1
        state.consecutive_failures += 1
        state.reason = f"{type(exc).__name__}: {exc}"
        if state.consecutive_failures >= self.max_failures:
            state.disabled = True
            log.warning(
                "diag: probe %s disabled after %d failures in a row: %s",
                state.name,
                state.consecutive_failures,
                state.reason,
            )
            return
        state.skip_ticks = 2 ** (state.consecutive_failures - 1) - 1
        if not state.reported:
            state.reported = True
            log.warning(
                "diag: probe %s failed (%s); backing off, the host is not affected",
                state.name,
                state.reason,
            )

    def _self_samples(self, t: float, duration: float) -> list[Sample]:
        out: list[Sample] = []
        for state in self._all_states():
            out.append(Sample("probe_duration_seconds", state.last_duration, state.labels))
            out.extend(state.counted_samples())
        out.append(Sample("tick_duration_seconds", duration))
        out.append(Sample("last_tick_timestamp_seconds", t))
        out.append(Sample("agent_memory_bytes", float(self.store.nbytes)))
        out.append(Sample("agent_series", float(len(self.store))))
        out.append(Sample("agent_dropped_series_total", float(self.store.dropped_series)))
        return out

    # -- consumers and status ------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _all_states(self) -> list[ProbeState]:
        return self._states + self._analyzer_states

    def status(self) -> list[ProbeStatus]:
        return [
            ProbeStatus(
                name=s.name,
                enabled=not s.disabled,
                sampled=s.sampled,
                reason=s.reason,
                errors=s.errors,
                last_duration=s.last_duration,
                notes=notes_of(s.probe),
            )
            for s in self._all_states()
        ]

    @property
    def probes(self) -> list[Probe]:
        return [s.probe for s in self._states]

    # -- the thread ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="diag-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop, and release what the probes hold open (file descriptors, library handles)."""
        self.stop()
        with self._lock:
            for state in self._all_states():
                close = getattr(state.probe, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        log.exception("diag: probe %s failed to close", state.name)

    def _run(self) -> None:
        next_at = self._monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug of ours; keep the thread alive and the host unaffected
                # ... even where the host's own logging fails on the line (its handler's
                # stream closed): the tick's failure is then unsaid, not fatal.
                with contextlib.suppress(Exception):
                    log.exception("diag: sampler tick failed")
            next_at += self.interval
            now = self._monotonic()
            if next_at < now:  # fell behind (host paused us): skip the missed ticks
                next_at = now + self.interval
            self._stop.wait(next_at - now)

    # -- fork ----------------------------------------------------------------------------

    def before_fork(self) -> None:
        # Fork with no tick in progress, so the child's copy of our state is consistent; but
        # never hold up the host's fork behind a stuck probe for more than a second.
        self._held_for_fork = self._lock.acquire(timeout=1.0)

    def after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def after_fork_in_child(self) -> None:
        """The thread did not survive fork: reset state so ``start()`` begins afresh."""
        self._lock = threading.Lock()
        self._held_for_fork = False
        self._stop = threading.Event()
        self._thread = None
        self.latest = None
        self.store.clear()
        for state in self._all_states():
            state.skip_ticks = state.consecutive_failures = 0
            reset = getattr(state.probe, "reset_after_fork", None)
            if reset is not None:
                reset()
