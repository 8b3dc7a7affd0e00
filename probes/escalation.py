"""Escalation: a traced window that names what grew, who holds it and where it was allocated.

Cheap sampling says *that* memory grows; naming the culprit costs more, so it runs only for a
bounded window: when the detector's verdict turns to growing or leak (at most once per
``escalation_interval``), or when ``diag dump --window S`` asks.

A window is: a census of the holders (the baseline), tracemalloc on (and, where the host
already uses CUDA, torch's allocation history with Python stacks), a wait, then a second census
with allocation stacks. The difference, per holder, is its growth per second and per request;
tracemalloc's snapshot diff gives the top allocation sites, which become the bounded
``tracemalloc_top_bytes`` gauges. Each window's finding is written to the history.

Its cost is bounded and exported: the pauses of the two censuses (each under a time budget), the
tracing slowdown for the window's length only, tracemalloc's own memory for the allocations
made during the window. Nothing here raises into the host: a failed window is logged and counted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diag import watched
from diag.cause import Cause, Measured, classify
from diag.census import Dump, Frame, Owner, Site, cuda_block_stacks, is_library, take_dump
from diag.detect import SETTLE_SECONDS, Verdict
from diag.malloc import in_use, mallinfo2
from diag.model import Clock, Sample
from diag.resources_census import group_key
from probes import creation
from probes.tracing import (
    IGNORED_TRACES,
    site_label,
    site_samples,
    start_tracing,
    stop_tracing,
)

log = logging.getLogger("diag")

#: tracemalloc frames kept during a window: enough to climb from an allocation inside torch or
#: a framework back to the user's function.
WINDOW_FRAMES = 24
#: Torch's allocation history keeps at most this many events (each holds a stack).
CUDA_HISTORY_ENTRIES = 100_000
GROWING_STATES = ("growing", "leak")
CAUSE_SERIES = watched.names_read_by("cause")
#: The dumps whose disturbance a dump's cause takes out of the series (ten minutes' worth).
DISTURBANCES_KEPT = 64
#: The memory series whose verdicts the cause follows: those it reads that the detector judges.
JUDGED_MEMORY = frozenset(CAUSE_SERIES) & frozenset(watched.names_read_by("detector"))


#: Waits out a traced window: ``wait(seconds)`` returns early, and True, once the escalation is
#: closed. Injected so that a test can play the window's traffic and move its clocks instead.
Wait = Callable[[float], bool]
#: Runs an automatic window away from the caller (the sampler's thread, which must not stall).
Spawn = Callable[[Callable[[], None]], None]
#: resource -> (its limit, seconds to exhaustion), as the agent's latest samples and verdicts say.
ResourceContext = Callable[[], Mapping[str, tuple[float | None, float | None]]]
#: The agent's current verdicts, by series key (``malloc_in_use_bytes``,
#: ``cuda_allocated_bytes{device=0}``): the cause agrees with the detector on memory.
Verdicts = Callable[[], Mapping[str, Verdict]]
#: Resources whose count is in the unit of the agent's ``resource_usage`` series (the agent's
#: ``shm`` is /dev/shm's bytes; the census counts segments).
SAME_UNIT = ("fds", "threads", "children", "asyncio_tasks")


def in_a_thread(work: Callable[[], None]) -> None:
    """The default ``Spawn``: a daemon thread of its own."""
    threading.Thread(target=work, name="diag-escalation", daemon=True).start()


@dataclass(frozen=True)
class DumpRequest:
    top: int = 10
    window: float = 0.0
    reveal: bool = False
    all_frames: bool = False
    trim: bool = False
    time_budget: float = 10.0


class Escalation:
    """Dumps and traced windows, one at a time.

    Two clocks: ``clock`` is wall time, the samples' time base (when a dump ended, compared
    with sample times by ``disturbs``; dump timestamps and window lengths); ``monotonic``
    measures durations (the spacing of automatic windows, the time traced, census budgets).
    ``wait`` waits out a window and ``spawn`` runs an automatic one off the caller's thread;
    the defaults are an Event that ``close()`` sets and a daemon thread.
    """

    def __init__(
        self,
        *,
        requests: Callable[[], Mapping[str, int]],
        series: Callable[[str], list[tuple[float, float]]],
        record: Callable[[dict[str, Any]], None] | None = None,
        is_worker: Callable[[], bool] = lambda: False,
        window: float = 30.0,
        interval: float = 3600.0,
        top_sites: int = 10,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        wait: Wait | None = None,
        spawn: Spawn = in_a_thread,
        resource_context: ResourceContext | None = None,
        verdicts: Verdicts | None = None,
    ) -> None:
        self._requests = requests
        self._resource_context = resource_context
        self._verdicts = verdicts
        self._series = series
        self._record = record
        self._is_worker = is_worker
        self.window = window
        self.interval = interval
        self.top_sites = top_sites
        self._clock = clock
        self._monotonic = monotonic
        self._wait = wait or self._wait_unless_closed
        self._spawn = spawn
        self._lock = threading.Lock()  # one window at a time
        self._stop = threading.Event()
        self._last_auto: float | None = None
        self.last: Dump | None = None
        self.sites: list[Sample] = []
        # Exported cost.
        self.dumps = 0  # every dump, census only or windowed
        self._last_ended: float | None = None
        self.windows = 0
        self.failures = 0
        self.traced_seconds = 0.0
        self.last_pause = 0.0
        self.active = False
        self._tracing_ours = False  # tracemalloc was started by the running window
        self._measured: Measured | None = None  # the last window's own readings
        #: The last window's first census: when it ended, and what each holder retained.
        self._window_base: tuple[float, dict[str, int]] | None = None
        #: Recent dumps, (began, ended + settling), in clock time: their steps are not growth.
        self._disturbances: deque[tuple[float, float]] = deque(maxlen=DISTURBANCES_KEPT)
        self._began: float | None = None  # when the running dump began

    # -- triggers --------------------------------------------------------------------------

    def on_verdict(self, key: str, previous: Verdict | None, verdict: Verdict) -> None:
        """A verdict subscriber: escalate when a series starts growing, rate-limited."""
        if self.window <= 0 or verdict.state not in GROWING_STATES:
            return
        if previous is not None and previous.state in GROWING_STATES:
            return
        now = self._monotonic()
        if self._last_auto is not None and now - self._last_auto < self.interval:
            return
        if self.dumping:
            return
        self._last_auto = now
        reason = f"{key} turned {verdict.state}"
        self._spawn(lambda: self._auto(reason))

    def _auto(self, reason: str) -> None:
        try:
            self.dump(DumpRequest(window=self.window), reason=reason)
        except Exception:
            self.failures += 1
            log.exception("diag: the escalation window failed; the host is not affected")

    def close(self) -> None:
        self._stop.set()

    def _wait_unless_closed(self, seconds: float) -> bool:
        return self._stop.wait(seconds)  # looked up now: a forked child has a new Event

    @property
    def dumping(self) -> bool:
        """Whether a dump (with or without a window) is running now. Exported as
        ``dump_active``; an automatic window does not start meanwhile."""
        return self._lock.locked()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's window (and its thread) did not come along. Its
        lock may be held and its tracing on; the child starts clean."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.active and self._tracing_ours:
            stop_tracing()
        self.active = False
        self._tracing_ours = False
        creation.reset_after_fork()

    def disturbs(self, t: float) -> bool:
        """Whether memory sampled at ``t`` carries a dump's disturbance: one is running, or
        ended less than ``SETTLE_SECONDS`` ago (the detectors hold such samples back)."""
        if self.dumping:
            return True
        return self._last_ended is not None and t - self._last_ended < SETTLE_SECONDS

    # -- the dump --------------------------------------------------------------------------

    def dump(self, request: DumpRequest, reason: str = "asked") -> Dump:
        """A census now, or at the end of a traced window of ``request.window`` seconds."""
        with self._lock:
            self.dumps += 1
            self._began = began = self._clock()
            try:
                return self._dump(request, reason)
            finally:
                self._last_ended = self._clock()
                self._disturbances.append((began, self._last_ended + SETTLE_SECONDS))
                self._began = None

    def _dump(self, request: DumpRequest, reason: str) -> Dump:
        if request.window > 0:
            result = self._window(request, reason)
        else:
            result, _ = take_dump(
                top=request.top,
                time_budget=request.time_budget,
                user_frames_only=not request.all_frames,
                reveal=request.reveal,
                clock=self._clock,
                monotonic=self._monotonic,
                created_at=creation.stack_of,
            )
            self._borrow_from_last(result)
            self._resource_limits(result)
            if self.last is None and result.resources:
                result.notes.append(
                    "resources: growth and creation stacks come from a traced window (--window S)"
                )
        trimmed = malloc_trim_test() if request.trim else None
        measured = self._measured if request.window > 0 else None
        result.cause = self.cause_of(result, trimmed, measured).to_json()
        self.last_pause = result.pause_seconds
        if request.window > 0 and self._record is not None:
            # Recorded with its cause: `diag report` says what the finding blamed (a holder,
            # or native memory beside which a holder grows a little), not only who grew.
            self._record({"reason": reason, **_finding_of(result)})
        return result

    def _window(self, request: DumpRequest, reason: str) -> Dump:
        user_only = not request.all_frames
        _, baseline = take_dump(
            top=1,
            time_budget=request.time_budget,
            reveal=request.reveal,
            clock=self._clock,
            monotonic=self._monotonic,
        )
        traced_from = self._monotonic()
        baseline.requests = self._request_total()
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            start_tracing(WINDOW_FRAMES)
        self._tracing_ours = started_tracing
        before = None if started_tracing else tracemalloc.take_snapshot()
        cuda = _CudaHistory.start()
        self._measured = None
        self._window_base = (baseline.t, dict(baseline.retained))
        reading = _Reading.now(self._clock)
        # Creation stacks of the resources made meanwhile are tracemalloc's (each object's
        # allocation stack): the creation recorder on top would cost 20x more on a loop of
        # opens than tracemalloc alone (benchmarks/bench_creation.py), so it is not turned on.
        self.active = True

        def stop_window() -> None:
            cuda.stop()
            if started_tracing:
                stop_tracing()
            self._tracing_ours = False

        try:
            self._wait(request.window)
            # Read before the snapshot and the census: both allocate, and free, a lot.
            self._measured = reading.rates_until(_Reading.now(self._clock))
            cuda_stacks = cuda.stacks(user_only)
            sites = self._sites(before)
            result, _ = take_dump(
                top=request.top,
                time_budget=request.time_budget,
                user_frames_only=user_only,
                reveal=request.reveal,
                cuda_stacks=cuda_stacks,
                baseline=baseline,
                requests=self._request_total(),
                on_collected=stop_window,
                clock=self._clock,
                monotonic=self._monotonic,
                created_at=creation.stack_of,
            )
            result.allocation_sites = sites
        finally:
            stop_window()
            self.active = False
            self.traced_seconds += self._monotonic() - traced_from
        self.windows += 1
        self.last = result
        self._resource_limits(result)
        result.notes.append(f"traced for {result.window_seconds:.1f} s ({reason})")
        return result

    def _sites(self, before: tracemalloc.Snapshot | None) -> list[Site]:
        """The sites that grew in the window, in the user's code; also the bounded gauges."""
        after = tracemalloc.take_snapshot().filter_traces(IGNORED_TRACES)
        if before is None:
            stats = [(s.traceback, s.size, s.count) for s in after.statistics("traceback")]
        else:
            diff = after.compare_to(before.filter_traces(IGNORED_TRACES), "traceback")
            stats = [(s.traceback, s.size_diff, s.count_diff) for s in diff]
        by_site: dict[str, list[int]] = {}
        for traceback, size, count in stats:
            if size <= 0:
                continue
            user = [f for f in reversed(traceback) if not is_library(f.filename)]
            frame = user[0] if user else traceback[-1]
            entry = by_site.setdefault(site_label(frame.filename, frame.lineno), [0, 0])
            entry[0] += size
            entry[1] += count
        ranked = sorted(by_site.items(), key=lambda kv: -kv[1][0])
        top = ranked[: self.top_sites]
        self.sites = site_samples({site: size for site, (size, _) in ranked}, self.top_sites)
        return [Site(site, size, count) for site, (size, count) in top]

    def _borrow_from_last(self, result: Dump) -> None:
        """A dump without a window reports the last window's growth and stacks per holder."""
        last = self.last
        if last is None:
            return
        measured = {o.path: o for o in last.owners}
        for owner in result.owners:
            earlier = measured.get(owner.path)
            if earlier is None:
                continue
            owner.growth_bytes_per_second = earlier.growth_bytes_per_second
            owner.growth_bytes_per_request = earlier.growth_bytes_per_request
            if not owner.allocation_stacks:
                owner.allocation_stacks = earlier.allocation_stacks
        result.allocation_sites = last.allocation_sites
        _borrow_resources(result, last)
        age = self._clock() - last.taken_at
        result.notes.append(f"growth and stacks from the traced window {age:.0f} s ago")

    def _resource_limits(self, result: Dump) -> None:
        """Each resource's limit and time to exhaustion, from the agent's samples and verdicts."""
        if self._resource_context is None:
            return
        try:
            context = self._resource_context()
        except Exception:
            log.debug("diag: no resource limits for the dump", exc_info=True)
            return
        for resource in result.resources:
            if resource.resource in SAME_UNIT and resource.resource in context:
                resource.limit, resource.seconds_to_exhaustion = context[resource.resource]

    def cause_of(
        self, result: Dump, trimmed: int | None = None, measured: Measured | None = None
    ) -> Cause:
        """The cause of ``result``'s growth, and its account. ``measured``: the readings of
        the window this dump closes. The window's own series when there is one (the slopes it
        measured), else the last ten minutes (``classify`` cuts the start-up off them); and
        the detector's current verdicts on the memory series, which the cause agrees with."""
        since = result.taken_at - (result.window_seconds or 600.0)
        series = {
            name: [(t, v) for t, v in self._series(name) if t >= since] for name in CAUSE_SERIES
        }
        growth = self._owner_growth(result, measured is not None)
        disturbed = list(self._disturbances)
        if self._began is not None and measured is None:
            # This census: from its start on, samples carry its pause (a window's own series
            # are read between its two censuses, undisturbed by either).
            disturbed.append((self._began, float("inf")))
        return classify(
            series,
            growth,
            worker=self._is_worker(),
            trimmed_bytes=trimmed,
            verdicts=self._memory_verdicts(),
            measured=measured,
            device_share={o.path: _device_share(o) for o in result.owners},
            disturbed=disturbed,
            owner_steps={o.path: [link.step for link in o.chain] for o in result.owners},
            gc_disabled_freed=result.gc_disabled_freed,
            window_age=None if measured is not None else self._window_age(),
        )

    def _window_age(self) -> float | None:
        """Seconds since the last traced window ended, whose growth a dump without one borrows."""
        return None if self.last is None else self._clock() - self.last.taken_at

    def _owner_growth(self, result: Dump, windowed: bool) -> list[tuple[str, float]]:
        """(holder, bytes per second) grown, biggest first. For the window this dump closes,
        over the time the host ran: from the end of the first census to the start of the last
        (each census holds the GIL, the host waits), not across the last census's own pause
        as the owners' ``growth_bytes_per_second`` are; else as the owners say."""
        base = self._window_base if windowed else None
        ran = result.taken_at - result.pause_seconds - base[0] if base is not None else 0.0
        if base is not None and 0 < ran <= (result.window_seconds or 0.0):
            before = base[1]
            growth = [
                (o.path, (o.retained_bytes - before.get(o.path, 0)) / ran) for o in result.owners
            ]
        else:
            growth = [
                (o.path, o.growth_bytes_per_second)
                for o in result.owners
                if o.growth_bytes_per_second is not None
            ]
        return sorted(growth, key=lambda g: -g[1])

    def _memory_verdicts(self) -> dict[str, Verdict] | None:
        """The detector's verdicts on the memory series the cause reads; None without a
        detector (or when it cannot be read)."""
        if self._verdicts is None:
            return None
        try:
            verdicts = dict(self._verdicts())
        except Exception:
            log.debug("diag: no verdicts for the dump's cause", exc_info=True)
            return None
        return {k: v for k, v in verdicts.items() if k.split("{", 1)[0] in JUDGED_MEMORY}

    def _request_total(self) -> int:
        return sum(self._requests().values())

    def samples(self) -> list[Sample]:
        return [
            Sample("dumps_total", float(self.dumps)),
            Sample("dump_active", 1.0 if self.dumping else 0.0),
            Sample("escalations_total", float(self.windows)),
            Sample("escalation_failures_total", float(self.failures)),
            Sample("escalation_traced_seconds_total", self.traced_seconds),
            Sample("escalation_tracing_enabled", 1.0 if self.active else 0.0),
            Sample("dump_pause_seconds", self.last_pause),
            *self.sites,
        ]


def _borrow_resources(result: Dump, last: Dump) -> None:
    """Resources and groups of a dump without a window take the last window's growth, and its
    creation stacks where they have none."""
    measured = {r.resource: r for r in last.resources}
    for resource in result.resources:
        earlier = measured.get(resource.resource)
        if earlier is None:
            continue
        resource.growth_per_second = earlier.growth_per_second
        resource.growth_per_request = earlier.growth_per_request
        groups = {group_key(g): g for g in earlier.groups}
        for group in resource.groups:
            before = groups.get(group_key(group))
            if before is None:
                continue
            group.growth_per_second = before.growth_per_second
            group.growth_per_request = before.growth_per_request
            if not group.created_at:
                group.created_at = before.created_at
    result.resources.sort(key=lambda r: (-(r.growth_per_second or 0.0), -r.count))


def _finding_of(result: Dump) -> dict[str, Any]:
    """What the history keeps of a window: bounded (top owners, their first stack, no chain;
    each resource's top groups)."""
    document = result.to_json()
    document["owners"] = [
        {**owner, "chain": [], "allocation_stacks": owner["allocation_stacks"][:1]}
        for owner in document["owners"][:5]
    ]
    document["resources"] = [
        {**resource, "groups": resource["groups"][:3]} for resource in document["resources"]
    ]
    return document


class _CudaHistory:
    """torch's CUDA allocation history for a window, only where the host already uses CUDA."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    @classmethod
    def start(cls) -> _CudaHistory:
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_initialized():
                return cls(None)  # never initialise CUDA ourselves
            torch.cuda.memory._record_memory_history(
                enabled="all", context="alloc", stacks="python", max_entries=CUDA_HISTORY_ENTRIES
            )
        except Exception:
            log.debug("diag: no CUDA allocation history", exc_info=True)
            return cls(None)
        return cls(torch)

    def stacks(self, user_only: bool) -> dict[int, tuple[Frame, ...]]:
        if self._torch is None:
            return {}
        try:
            return cuda_block_stacks(self._torch.cuda.memory._snapshot(), user_only)
        except Exception:
            log.debug("diag: the CUDA snapshot failed", exc_info=True)
            return {}

    def stop(self) -> None:
        if self._torch is not None:
            try:
                self._torch.cuda.memory._record_memory_history(enabled=None)
            except Exception:
                log.debug("diag: stopping the CUDA allocation history failed", exc_info=True)
            self._torch = None


def _device_share(owner: Owner) -> float:
    """The share of an owner's retained bytes on a GPU (not in RSS)."""
    on_device = sum(c.bytes for c in owner.contents if c.device.startswith("cuda"))
    return min(on_device / owner.retained_bytes, 1.0) if owner.retained_bytes > 0 else 0.0


@dataclass(frozen=True)
class _Reading:
    """What a window reads at its start and its end, for the growth account: RSS and the
    address space mapped, glibc's in-use and free bytes, what tracemalloc traces and
    tracemalloc's own memory."""

    t: float
    rss: int | None
    mapped: int | None
    malloc: tuple[int, int] | None  # (in use: uordblks + hblkhd, free: fordblks)
    traced: int | None
    tracing: int | None

    @classmethod
    def now(cls, clock: Clock) -> _Reading:
        mapped: int | None
        resident: int | None
        try:
            mapped, resident = _statm()
        except (OSError, ValueError, IndexError):
            mapped = resident = None
        tracing = tracemalloc.is_tracing()
        return cls(
            t=clock(),
            rss=resident,
            mapped=mapped,
            malloc=_mallinfo(),
            traced=tracemalloc.get_traced_memory()[0] if tracing else None,
            tracing=tracemalloc.get_tracemalloc_memory() if tracing else None,
        )

    def rates_until(self, end: _Reading) -> Measured | None:
        seconds = end.t - self.t
        if seconds <= 0 or self.rss is None or end.rss is None:
            return None

        def rate(a: int | None, b: int | None) -> float | None:
            return None if a is None or b is None else (b - a) / seconds

        return Measured(
            seconds=seconds,
            rss=(end.rss - self.rss) / seconds,
            mapped=rate(self.mapped, end.mapped),
            malloc_in_use=rate(*_pick(self.malloc, end.malloc, 0)),
            malloc_free=rate(*_pick(self.malloc, end.malloc, 1)),
            python_traced=rate(self.traced, end.traced),
            tracing=rate(self.tracing, end.tracing),
        )


def _pick(
    a: tuple[int, int] | None, b: tuple[int, int] | None, i: int
) -> tuple[int | None, int | None]:
    return (a[i] if a else None, b[i] if b else None)


def _mallinfo() -> tuple[int, int] | None:
    """glibc's (in use, free retained) bytes, or None where mallinfo2 is not there."""
    info = mallinfo2()
    if info is None:
        return None
    try:
        got = info()
    except Exception:
        return None
    return in_use(got), int(got.fordblks)


def _statm() -> tuple[int, int]:
    """(address space mapped, resident) bytes of this process."""
    with open("/proc/self/statm") as f:
        size, resident = f.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


def _resident_bytes() -> int:
    return _statm()[1]


def malloc_trim_test() -> int | None:
    """Bytes ``malloc_trim(0)`` returns to the system: the proof of allocator retention. It
    changes the process (for the better), so it runs only when asked."""
    try:
        # The symbols already loaded into the process: find_library("c") would fork
        # ldconfig inside the host.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    before = _resident_bytes()
    trim(0)
    return max(before - _resident_bytes(), 0)
