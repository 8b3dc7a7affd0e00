"""The detector inside the agent: one ``Detector`` per watched series, verdicts as samples.

Judged: the series that ``diag.watched.CATALOGUE`` gives to the ``detector``, each against the
limit that will stop it (``watched.limit_for``: host memory against the headroom under the
effective limit, a GPU against its device total, a resource against its own limit). Memory
verdicts are exported as ``growth_bytes_per_second`` and ``seconds_to_oom*``, resource ones
(fds, threads...) as ``growth_per_second`` and ``seconds_to_exhaustion*``. Growth per request
comes from the request counters.

Subscribers (``on_change``) hear of every change of verdict state; the culprit search starts
its escalation there. A failing subscriber is logged once and never reaches the host.

diag's own dumps disturb host memory (a paused host catches up at once, tracemalloc's tables
come and go): while ``disturbed(t)`` says so, host-memory samples are held back from the
detectors and the retention estimate, and the step across is discounted afterwards
(``DisturbanceDiscount``). The exported gauges keep the raw values.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from diag import watched
from diag.detect import BUCKET_SECONDS, Detector, DetectorConfig, DisturbanceDiscount, Verdict
from diag.model import Labels, Sample, labels_of, series_key
from diag.retention import RetentionEstimator
from probes.requests import RequestStats

log = logging.getLogger("diag")

#: At most this many series are judged (one detector each): sites and devices are bounded
#: upstream, this bounds the product.
MAX_DETECTORS = 64
#: A judged series without a sample for this long (the detector's time) is gone (an
#: allocation site that left the top, a device released): its detector makes room for a new
#: series once all are taken, or sites that come and go would fill them for good.
STALE_SECONDS = 600.0
JUDGED = frozenset(watched.names_read_by("detector"))
DISCOUNTED = frozenset(row.name for row in watched.CATALOGUE if row.disturbed_by_dumps)
#: The verdict metrics of a memory series and of a resource series: leak, rate, forecast.
MEMORY_VERDICT: tuple[str, ...] = (
    "leak_suspected",
    "growth_bytes_per_second",
    "seconds_to_oom",
    "seconds_to_oom_low",
    "seconds_to_oom_high",
)
RESOURCE_VERDICT: tuple[str, ...] = (
    "leak_suspected",
    "growth_per_second",
    "seconds_to_exhaustion",
    "seconds_to_exhaustion_low",
    "seconds_to_exhaustion_high",
)

VerdictListener = Callable[[str, Verdict | None, Verdict], None]
Reading = tuple[tuple[str, Labels], float]  # a looked-up series' (name, labels) and value


class GrowthAnalyzer:
    name = "detector"

    def __init__(
        self,
        config: DetectorConfig | None = None,
        requests: RequestStats | None = None,
        retention_series: str = "process_resident_memory_bytes",
        disturbed: Callable[[float], bool] = lambda t: False,
    ) -> None:
        # The agent lives and dies with its process: no series it judges shows a restart.
        self.config = dataclasses.replace(config or DetectorConfig(), one_process=True)
        self._disturbed = disturbed
        self._discounts: dict[str, DisturbanceDiscount] = {}
        self._retention_samples: list[Sample] = []
        self._requests = requests
        self._retention_series = retention_series
        self._looked_up = watched.LIMIT_INPUTS | {retention_series}
        # One per judged series, found by (name, labels) as the samples carry them.
        self._series: dict[tuple[str, Labels], _Judged] = {}
        self._retention = RetentionEstimator()
        self._listeners: list[VerdictListener] = []
        self._listener_failed = False
        self.verdicts: dict[str, Verdict] = {}
        #: The series judged: the catalogue's (a benchmark narrows it to price the detectors).
        self._judged = JUDGED
        # By the position of a probe's chunk in the tick: the chunk handed last and the
        # readings it gave (``_readings``), and what it gives while handed again (``_Repeat``).
        self._looked: dict[int, tuple[Sequence[Sample], list[Reading]]] = {}
        self._repeats: dict[int, _Repeat] = {}

    def on_change(self, listener: VerdictListener) -> None:
        self._listeners.append(listener)

    def reset_after_fork(self) -> None:
        """A forked child is a new process: its series are judged from its own start (a
        warm-up, a young process's patience), not as the parent's history going on. A
        pre-fork server's worker forked hours after its master would otherwise have its
        warm-up judged as an old process's growth."""
        self._series.clear()
        self.verdicts.clear()
        self._discounts.clear()
        self._retention = RetentionEstimator()
        self._retention_samples = []
        self._looked.clear()
        self._repeats.clear()

    def analyze(
        self, t: float, samples: Sequence[Sample], chunks: Sequence[Sequence[Sample]] = ()
    ) -> list[Sample]:
        """``chunks``: ``samples`` as the probes gave them, one sequence each (the sampler
        passes them): a probe that hands out the very same tuple again, nothing in it moved,
        is answered for all its series at once while none of their buckets closes."""
        chunks = chunks or (samples,)
        values, repeated = self._readings(chunks)
        disturbed = self._disturbed(t)
        # The load covariate of the memory detectors: requests so far, all endpoints.
        served = None if self._requests is None else self._requests.total()
        out: list[Sample] = []
        adjusted: dict[str, float | None] = {}
        scaled = t * self.config.time_scale
        repeats = self._repeats
        for position, chunk in enumerate(chunks):
            repeat = repeats.get(position)
            if repeat is not None and repeat.chunk is chunk:
                if not repeat.holds(scaled, values):
                    # A bucket closes (or a limit moved): judged one by one, and the same
                    # members answer again from the next tick, if they all took it in.
                    self._judge_all(t, chunk, values, disturbed, served, out, adjusted)
                    if not repeat.refresh(scaled):
                        del repeats[position]
                    continue
                out.extend(repeat.out)
                continue
            self._judge_all(t, chunk, values, disturbed, served, out, adjusted)
            # Handed twice, the same tuple: worth planning for its next ticks.
            repeat = self._repeat_of(chunk, scaled) if position in repeated else None
            if repeat is None:
                repeats.pop(position, None)
            else:
                repeats[position] = repeat
        name = self._retention_series
        memory = adjusted[name] if name in adjusted else values.get((name, ()))
        if memory is not None:
            self._retention_samples = self._retained_per_request(t, memory)
        elif name not in adjusted:
            self._retention_samples = []
        out.extend(self._retention_samples)  # while held back: the last estimate stands
        return out

    def _readings(
        self, chunks: Sequence[Sequence[Sample]]
    ) -> tuple[dict[tuple[str, Labels], float], set[int]]:
        """The tick's limits and retention series by (name, labels): only those are looked
        up. And the positions of the chunks handed again, the same tuple as last tick
        (immutable, so unchanged): they give what they gave."""
        looked_up = self._looked_up
        values: dict[tuple[str, Labels], float] = {}
        repeated: set[int] = set()
        cache = self._looked
        for position, chunk in enumerate(chunks):
            cached = cache.get(position)
            if cached is not None and cached[0] is chunk and type(chunk) is tuple:
                repeated.add(position)
            else:
                found = [((s.name, s.labels), s.value) for s in chunk if s.name in looked_up]
                cached = cache[position] = (chunk, found)
            values.update(cached[1])
        return values, repeated

    def _judge_all(
        self,
        t: float,
        samples: Sequence[Sample],
        values: Mapping[tuple[str, Labels], float],
        disturbed: bool,
        served: float | None,
        out: list[Sample],
        adjusted: dict[str, float | None],
    ) -> None:
        judged = self._judged
        series_of = self._series.get
        for sample in samples:
            if sample.name not in judged:
                continue
            # Most ticks, most series: a sample inside the open bucket's range, under the
            # same limit, changes nothing: the verdict stands.
            series = series_of((sample.name, sample.labels))
            if series is not None and series.holds(t, sample.value, served, values):
                out.extend(series.samples_of(series.verdict))
                continue
            value: float | None = sample.value
            if sample.name in DISCOUNTED and not sample.labels:
                value = self._discount(sample.name, sample.value, disturbed)
                adjusted[sample.name] = value
            series_limit = None
            if value is None:
                pass  # held back: judged later
            elif series is not None and series.limit_key is not False:
                # Where the limit is one lookup (or none), as limit_for would find it.
                key = series.limit_key
                series_limit = None if key is None else values.get(key)
            else:
                series_limit = watched.limit_for(sample.name, sample.labels, value, values)
            out.extend(self._judge(t, sample, value, series_limit, served, series))

    def _repeat_of(self, chunk: Sequence[Sample], scaled: float) -> _Repeat | None:
        """What a chunk just judged will give while it is handed out again unchanged; None
        where one of its series must see every sample (judged with its load, discounted,
        against the host's headroom) or did not take this one in."""
        members: list[tuple[_Judged, float]] = []
        for sample in chunk:
            if sample.name not in self._judged:
                continue
            series = self._series.get((sample.name, sample.labels))
            if series is None:
                return None
            members.append((series, sample.value))
        if not members:
            return None
        repeat = _Repeat(chunk, members)
        return repeat if repeat.refresh(scaled) else None

    def _discount(self, name: str, value: float, disturbed: bool) -> float | None:
        discount = self._discounts.get(name)
        if discount is None:
            discount = self._discounts[name] = DisturbanceDiscount()
        return discount.adjust(value, disturbed)

    def _judge(
        self,
        t: float,
        sample: Sample,
        value: float | None,
        limit: float | None,
        served: float | None,
        series: _Judged | None = None,
    ) -> list[Sample]:
        """``value`` None: held back (a dump disturbs it); the last verdict stands meanwhile.
        ``served``: requests so far, given to memory series' detectors (their load
        covariate); resource counts are judged without it. ``series``: the sample's, where
        the caller has found it."""
        if series is None:
            series = self._series.get((sample.name, sample.labels))
        if series is None:
            if len(self._series) >= MAX_DETECTORS and not self._forget_stale(t):
                return []
            labels = tuple(sorted((("series", sample.name), *sample.labels)))
            row = watched.BY_NAME.get(sample.name)
            names = RESOURCE_VERDICT if row is not None and row.resource else MEMORY_VERDICT
            series = self._series[(sample.name, sample.labels)] = _Judged(
                series_key(sample.name, sample.labels),
                Detector(limit, self.config),
                labels,
                names,
                follows_load=names is MEMORY_VERDICT,
                discounted=sample.name in DISCOUNTED and not sample.labels,
                limit_key=_limit_key(sample.name, sample.labels),
            )
        key = series.key
        previous = self.verdicts.get(key)
        if value is None:
            return series.samples_of(previous) if previous is not None else []
        verdict = series.update(t, value, limit, served)
        if verdict is not previous:
            self.verdicts[key] = verdict
            if previous is None or previous.state != verdict.state:
                self._notify(key, previous, verdict)
        return series.samples_of(verdict)

    def _forget_stale(self, t: float) -> bool:
        """Make room: forget the series longest without a sample, if it is stale."""
        scaled = t * self.config.time_scale
        stalest = min(self._series.items(), key=lambda item: item[1].last_seen, default=None)
        if stalest is None or stalest[1].last_seen > scaled - STALE_SECONDS:
            return False
        key, series = stalest
        del self._series[key]
        self.verdicts.pop(series.key, None)
        self._repeats.clear()  # a chunk's plan may hold the forgotten series: planned anew
        return True

    def _retained_per_request(self, t: float, memory: float) -> list[Sample]:
        if self._requests is None:
            return []
        estimate = self._retention.update(t, memory, self._requests.totals())
        if estimate is None:
            return []
        return [
            Sample("retained_bytes_per_request", per_request, labels_of(endpoint=endpoint))
            for endpoint, per_request in estimate.per_request.items()
        ]

    @property
    def retention(self) -> RetentionEstimator:
        return self._retention

    def _notify(self, key: str, previous: Verdict | None, verdict: Verdict) -> None:
        for listener in list(self._listeners):
            try:
                listener(key, previous, verdict)
            except Exception:
                if not self._listener_failed:
                    self._listener_failed = True
                    log.exception("diag: a verdict subscriber failed; the host is not affected")


def _limit_key(name: str, labels: Labels) -> tuple[str, Labels] | Literal[False] | None:
    """Where ``watched.limit_for`` finds the series' limit in a tick's readings when it is
    one lookup; None when the series has no limit; False when it is worked out (the host's
    headroom over the value)."""
    row = watched.BY_NAME.get(name)
    if row is None or row.limit is None:
        return None
    if row.limit == "host":
        return False
    return (row.total or "", labels)


def verdict_samples(
    verdict: Verdict, labels: Labels, names: tuple[str, ...] = MEMORY_VERDICT
) -> list[Sample]:
    """The verdict as gauges, under ``names`` (``MEMORY_VERDICT`` or ``RESOURCE_VERDICT``)."""
    leak, rate, forecast, low, high = names
    out = [
        Sample(leak, 1.0 if verdict.state == "leak" else 0.0, labels),
        Sample(rate, verdict.rate or 0.0, labels),
    ]
    if verdict.seconds_to_oom is not None:
        out.append(Sample(forecast, verdict.seconds_to_oom, labels))
    if verdict.seconds_to_oom_low is not None:
        out.append(Sample(low, verdict.seconds_to_oom_low, labels))
    if verdict.seconds_to_oom_high is not None:
        out.append(Sample(high, verdict.seconds_to_oom_high, labels))
    return out


class _Judged:
    """One judged series: its detector, fed only the samples that can change it, and its
    verdict's gauges, rebuilt only when the verdict changes.

    ``Detector.update`` folds a sample into the open 30 s bucket (its minimum and maximum) and
    decides again only when a sample opens the next bucket. A sample that falls inside the
    open bucket, within its minimum and maximum, with the limit the detector already has,
    changes nothing there but the time of the detector's latest sample, which serves only to
    ignore a later sample from before it: such a sample is not fed, and that time is kept here
    instead. A flat count (fds, threads, children) then costs a few comparisons a tick and one
    update a bucket; memory inside its bucket's range likewise. Tests compare the verdicts
    with a detector fed every sample (``tests/test_agent_detector.py``).
    """

    __slots__ = (
        "_discounted",
        "_follows_load",
        "_high",
        "_last_t",
        "_low",
        "_may_hold",
        "_samples",
        "_scale",
        "_start",
        "_verdict",
        "detector",
        "key",
        "labels",
        "limit_key",
        "names",
    )

    def __init__(
        self,
        key: str,
        detector: Detector,
        labels: Labels,
        names: tuple[str, ...],
        *,
        follows_load: bool = False,
        discounted: bool = False,
        limit_key: tuple[str, Labels] | Literal[False] | None = None,
    ) -> None:
        self.key = key
        self._follows_load = follows_load
        self._discounted = discounted
        # Where the limit is in a tick's readings; None: it has none; False: worked out
        # (``watched.limit_for``), not looked up.
        self.limit_key = limit_key
        self._may_hold = not discounted and limit_key is not False
        self.detector = detector
        self.labels = labels
        self.names = names
        self._scale = detector.config.time_scale
        # The detector's open bucket as it sees it (start in its own time, lowest, highest),
        # and the latest sample time it has seen or would have.
        self._start: float | None = None
        self._low = self._high = 0.0
        self._last_t = -math.inf
        self._verdict = detector.verdict
        self._samples: tuple[Verdict, list[Sample]] | None = None

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    @property
    def last_seen(self) -> float:
        """The latest sample's time, in the detector's time (-inf: none yet)."""
        return self._last_t

    def holds(
        self,
        t: float,
        value: float,
        served: float | None,
        readings: Mapping[tuple[str, Labels], float],
    ) -> bool:
        """``update``'s shortcut, taken before the limit is worked out where it is one
        lookup in the tick's ``readings`` (or there is none): whether the sample falls inside
        the open bucket's range under the limit the detector has, so that feeding it would
        change nothing. Noted as seen, as the detector would note it. A series judged with
        its load (``served`` given), a discounted one and one judged against the host's
        headroom never hold here."""
        if not self._may_hold or (served is not None and self._follows_load):
            return False
        key = self.limit_key
        if key:  # looked up (None: no limit; False was ruled out above)
            limit = readings.get(key)
            if limit is not None and limit != self.detector.limit:
                return False
        scaled = t if self._scale == 1.0 else t * self._scale  # as Detector.update scales it
        if self._last_t <= scaled and self._inside_open_bucket(scaled, value):
            self._last_t = scaled
            return True
        return False

    def repeatable(self, scaled: float, value: float) -> bool:
        """Whether the same ``value`` again, at a later time inside the open bucket and under
        the same limit, would hold (``holds``): the series ends this tick holding it."""
        return (
            self._may_hold
            and not self._follows_load
            and self._last_t <= scaled
            and self._inside_open_bucket(scaled, value)
        )

    @property
    def bucket_end(self) -> float:
        """When the open bucket closes, in the detector's time (inf: none open)."""
        return math.inf if self._start is None else self._start + BUCKET_SECONDS

    def _inside_open_bucket(self, scaled: float, value: float) -> bool:
        start = self._start
        return (
            start is not None
            and scaled < start + BUCKET_SECONDS
            and self._low <= value <= self._high
        )

    def update(
        self, t: float, value: float, limit: float | None, served: float | None = None
    ) -> Verdict:
        """``served``: requests so far, for a series judged with its load; such a series is fed
        every sample (the detector keeps the count at its bucket's last sample)."""
        detector = self.detector
        if not self._follows_load:
            served = None
        scaled = t if self._scale == 1.0 else t * self._scale  # as Detector.update scales it
        start = self._start
        if scaled < self._last_t:  # out of order: the detector would keep only the limit
            if limit is not None:
                detector.limit = limit
            return self._verdict
        if (
            served is None
            and self._inside_open_bucket(scaled, value)
            and (limit is None or limit == detector.limit)
        ):
            self._last_t = scaled
            return self._verdict
        verdict = self._verdict = detector.update(t, value, limit, served)
        self._last_t = scaled
        if start is None or scaled >= start + BUCKET_SECONDS:  # it opened a bucket
            self._start, self._low, self._high = scaled, value, value
        else:  # folded, as the detector folds (a NaN moves neither)
            if value < self._low:
                self._low = value
            elif value > self._high:
                self._high = value
        return verdict

    def samples_of(self, verdict: Verdict) -> list[Sample]:
        cached = self._samples
        if cached is None or cached[0] is not verdict:
            cached = self._samples = (verdict, verdict_samples(verdict, self.labels, self.names))
        return cached[1]


class _Repeat:
    """A probe's tuple of samples handed out again, the same object (nothing in it moved):
    its judged series all hold their values until the first of their buckets closes or a
    limit changes, so the tick is answered at once with their verdicts' gauges, and each
    series notes the time as ``holds`` would. Tested against the series fed one by one
    (``tests/test_agent_detector.py``)."""

    __slots__ = ("chunk", "last", "limits", "members", "out", "until")

    def __init__(self, chunk: Sequence[Sample], members: list[tuple[_Judged, float]]) -> None:
        self.chunk = chunk
        self.members = members  # each judged series, and its value in the chunk
        self.limits: list[tuple[tuple[str, Labels], float | None]] = []
        self.until = self.last = -math.inf
        self.out: list[Sample] = []

    def refresh(self, scaled: float) -> bool:
        """After the members were judged one by one at ``scaled``: whether each took its
        value in (it would hold it again), and if so what they answer from now on. (One pass:
        it runs on every bucket-closing tick.)"""
        limits: list[tuple[tuple[str, Labels], float | None]] = []
        out: list[Sample] = []
        until, last = math.inf, -math.inf
        for series, value in self.members:
            if not series.repeatable(scaled, value):
                return False
            if series.limit_key:
                limits.append((series.limit_key, series.detector.limit))
            until = min(until, series.bucket_end)
            last = max(last, series._last_t)
            out += series.samples_of(series.verdict)
        self.limits, self.until, self.last, self.out = limits, until, last, out
        return True

    def holds(self, scaled: float, readings: Mapping[tuple[str, Labels], float]) -> bool:
        if not self.last <= scaled < self.until:
            return False
        for key, limit in self.limits:
            reading = readings.get(key)
            if reading is not None and reading != limit:
                return False
        for series, _ in self.members:
            series._last_t = scaled
        self.last = scaled
        return True
