"""Growth detector: samples in, verdicts out, with a time to OOM and how sure it is.

Pure and causal: a verdict at time T depends only on samples up to T, and time comes from the
samples, never from a clock. One ``Detector`` per series (RSS, USS, CUDA allocated, malloc in
use, a per-site series...), the same code in the agent, in ``diag watch`` and in replays.

How it decides, and why:

- Samples are folded into 30 s buckets keeping the minimum and maximum. Buckets are kept in an
  exponential histogram (at most 48 per width, the two oldest of a width merged into one of twice
  the width), so days of history cost a few hundred points, recent ones at full detail.
- A leak moves the *lower envelope* of a GC or arena sawtooth, while the *upper envelope* is what
  hits the limit. Trends are tested on group minima; the forecast adds the envelope gap back.
  A bucket's minimum below both neighbours' (a gauge read once between batches, a scrape
  during a brief free) is a dip, not the envelope: a point's floor is the median of its
  minimum and its neighbours' floors, judged once the next bucket is in.
- Candidate windows end now and grow by √2 (10 min, 14 min, 20 min, ... to the regime's start),
  each cut into up to 12 groups, never shorter than the sawtooth's period when one is seen (a
  collection's fall counts once the next bucket is still down: a dip comes back at once). A
  window re-evaluates every eighth of its length, which keeps replay above 500k samples/s.
- In each window: a Mann-Kendall test on the group minima (is there a monotone trend at all),
  the Theil-Sen slope (the rate; its bounds from a standard error that counts the residuals'
  correlation, and from the rate's drift between the window's halves), and guards. A window
  whose first half is flat holds the leak's onset, and one whose rate differs by 30 % from the
  shorter ones' is another regime: the rate is fitted only after the change.
  Growth that is slower in its second half (by end-to-end rise and by robust slope alike), or
  slower than just before the window, is slowing down: a warm-up's tail, a cache nearing its
  bound. So is growth whose last third rose by under a quarter of what the window's rate
  says, short by more than noise, at any age (it stopped: a burst's climb done, a fill
  at its bound). So is growth whose last third climbs clearly slower than its middle third (by a
  quarter, and beyond noise), judged in a process's first 90 minutes and over the shortest
  window: a fill's rate falls with the room it has left, a leak's holds, and a young process's
  growth is a warm-up until it has shown that its rate does not decay. Two slowing windows in
  a row end the search. Growth in two jumps, or three or four whose spacing grows, or one
  climb over neighbouring groups that has held level for the last quarter of the window (a
  load ramp, then its plateau), is a ratchet (allocator steps, burst residues), not a
  staircase leak. One jump that makes half a window's rise is set aside: a
  step is no rate, and the trend is what rises without it (if anything does). In a process's
  first 90 minutes, halves are also compared with each half's largest rise set aside (an
  allocator's step on a warm-up's slowing tail). A floor that has come down from the window's
  high by more than noise is not growing now (a burst ending).
- Where no window finds a leak, the regime's floors since the warm-up are searched for a
  staircase (``Detector._staircase``): four or more steps of 2.5 % of the level, evenly
  spaced, of like size, still going and giving nothing back. A leak retained a block at a
  time (leaked tensors under a caching allocator) holds two or three steps in any window,
  which make a ratchet; a working set's new peaks, a ratchet's steps, come ever more rarely.
  Three such steps are enough where the next one or two reach the limit (a fourth to confirm
  would leave no warning). Its forecast is the step that does not fit.
- A leak must also have been watched for long enough to trust it: 10 minutes of the growth
  itself (a window's flat opening does not count), 12 % of the time it forecasts to OOM (a
  fill that stops early never gets there), and 30 minutes while the process is younger than
  90 minutes unless the limit is near. Once a leak, the verdict stays leak while the lower
  envelope keeps rising, over a window as long as the one that called it or twice that: while
  its floor now stands above every floor of the window's first half (by 1 % of the level),
  however slowly it got there (a quiet night, segment-sized steps), or above every floor of
  the episode's first two thirds, or while it shows a trend at z >= 1 and 35 % of the
  leak's rate. A leak that paused, was left and resumed has shown its rhythm: later pauses
  up to 1.25 times as long are bridged. Leaving takes positive evidence that the growth
  stopped, over a span like the entry's (so never before that span has passed since the call),
  and it must say so for 3 minutes in a row, so verdicts do not flap during a leak.
- A drop below the regime's floor (a restart) starts a new regime with a 15 minute warm-up,
  once the next bucket shows that the fall stayed. The level the old regime had settled at
  (flat over its last quarter) is kept: a new process climbing back to it (a recycled worker
  rebuilding its caches) is no leak; one that ended still growing (killed at its limit)
  leaves none. A fall across which the request count goes on is no restart, nor is any fall
  where the series is known to be one process's (``DetectorConfig.one_process``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal, TypeAlias

State = Literal["insufficient_data", "warming_up", "steady", "growing", "bounded_growth", "leak"]

BUCKET_SECONDS = 30.0
NO_GROWTH = "no sustained growth"
POINTS_PER_WIDTH = 48
MAX_GROUPS = 12
MIN_GROUPS = 6
#: A standing leak goes on while its envelope rises at this share of its own rate or more,
#: with a trend of this Mann-Kendall z or more (calling one takes min_trend_z, 3).
HOLD_SHARE_OF_OWN_RATE = 0.35
HOLD_MIN_TREND_Z = 1.0
#: ... on this many bucket closes in a row (3 minutes).
LEAK_EXIT_BUCKETS = 6
#: A standing leak is judged over its entry window's span, and over this many of the
#: shortest windows at least (20 minutes): the wait after the call and the window judged.
HOLD_MIN_WINDOWS = 2.0
#: Over a called leak's whole episode, new ground may be as little as this share of the
#: calling rise, where the minima's noise is that small (``_continuing``).
EPISODE_MIN_RISE_SHARE = 0.25
#: A leak that has paused and resumed is held through later pauses up to this many times as
#: long as its longest (``Detector._pause``); one that pauses for over this many times as
#: long as it had grown is a new growth, not the same leak's rhythm.
PAUSE_BRIDGE = 1.25
PAUSE_MAX_SHARE_OF_SPELL = 2.0
#: A staircase (``Detector._staircase``) has this many steps at least, each a rise of the
#: floor by this many noise units (and by this share of the level) within this many points,
#: that stays; its spacings and sizes agree within these factors, and its last step
#: came within this many spacings of now. Its steps are found anew at least this often, and
#: it is asked this often. Where the limit is under this many steps above its top, this many
#: steps are enough: a fourth to confirm it would come with one step's warning or none.
STAIR_MIN_STEPS = 4
STAIR_NEAR_LIMIT_ROOM = 2.0
STAIR_NEAR_LIMIT_STEPS = 3
STAIR_STEP_NOISE = 6.0
STAIR_STEP_POINTS = 2
STAIR_STEP_SHARE = 0.025
STAIR_SPACING_SPREAD = 2.0
STAIR_SIZE_SPREAD = 2.0
STAIR_ONGOING = 1.5
STAIR_REFRESH_SECONDS = 1800.0
STAIR_EVERY_SECONDS = 120.0
#: No gauge reads a value this large (bytes stay under 2**64, about 1.8e19), and the fits
#: square the readings: a sample beyond it, or not a number at all, is taken for corruption.
MAX_READING = 1e100
#: The request rate varied across a window when its range is this share of its mean.
LOAD_VARIES = 0.2
#: A fill slows as it nears its bound (its rate falls with the room left, as hits replace
#: misses); a leak's rate holds or follows load. Growth whose last third climbs at under this
#: share of its middle third's rate, and slower by this many noise units (about two standard
#: errors of the difference), is slowing down (``_last_third_slower``).
FILL_SLOWING_SHARE = 0.75
FILL_SLOWING_NOISE = 3.0
#: Drops are a regular sawtooth's when the upper quartile of their spacings is within this
#: factor of the lower quartile (``Detector._sawtooth_period``).
SAWTOOTH_SPREAD = 3.0
#: The most lag-one correlation of a fit's residuals that widens the rate's standard error
#: (by sqrt(1.9 / 0.1), 4.4 times): from 6 to 12 minima, a higher estimate is too unsure.
MAX_RESIDUAL_CORRELATION = 0.9
#: After one of diag's dumps ends, the host still settles from it (requests queued during the
#: pause run at once) for about this long: memory samples are held back until then.
SETTLE_SECONDS = 3.0
#: A regime has settled where its last quarter's floors, over this long at least, stay level.
SETTLED_MIN_SECONDS = 1800.0
#: ... and how far apart its floors may be, as a share of the highest, to count as one level.
SETTLED_SPREAD = 0.02


@dataclass(frozen=True)
class DetectorConfig:
    #: Higher is more eager (more lead time, more false alerts); 1.0 is the tuned default. It
    #: divides how long growth must be watched (min_leak_seconds, young_min_leak_seconds and
    #: watched_share_of_forecast); the other durations, and the trend test's z, are left
    #: alone (12 groups cannot reach much beyond z = 4).
    sensitivity: float = 1.0
    #: The shortest growth that can be called a leak, and the share of the predicted time to
    #: OOM it must have been watched for.
    min_leak_seconds: float = 600.0
    watched_share_of_forecast: float = 0.12
    #: After a start or restart, growth is warm-up for this long.
    warmup_seconds: float = 900.0
    #: Until a process is this old, a leak must have been watched at least this long.
    young_seconds: float = 5400.0
    young_min_leak_seconds: float = 1800.0
    #: Mann-Kendall z the group minima must reach.
    min_trend_z: float = 3.0
    #: A rise smaller than this share of the level is noise, whatever its trend.
    min_rise_share: float = 0.01
    #: Growth that would take longer than this to reach the limit is reported, not alerted on.
    max_forecast_seconds: float = 30 * 86400.0
    #: Demos only: every clock reading is multiplied by it, so an hour of a real service's
    #: life plays in a minute (60). Rates and forecasts come back in real seconds.
    time_scale: float = 1.0
    #: The series is one process's life, as the agent inside it, ``diag watch`` on its pid and
    #: a history run see it: no fall is a restart (a restart ends the series), so a big fall
    #: is a big free. A CSV or a Prometheus export may span several processes: there a fall
    #: that stays down starts a new regime.
    one_process: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    t: float  # when it was reached: an unchanged verdict is the same object, with its time
    state: State
    reason: str
    rate: float | None = None  # bytes per second of the current regime
    seconds_to_oom: float | None = None
    seconds_to_oom_low: float | None = None
    seconds_to_oom_high: float | None = None
    window_seconds: float | None = None  # how long the growth behind the verdict was watched

    def fields(self) -> dict[str, Any]:
        """Everything but its time: what a history event or a JSON line records of it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "t"}


@dataclass(frozen=True, slots=True)
class Alert:
    """An episode during which the verdict was ``leak``; the forecast is the one at its start."""

    series: str
    start: float
    end: float | None
    seconds_to_oom: float | None
    seconds_to_oom_low: float | None
    seconds_to_oom_high: float | None

    def to_json(self) -> dict[str, float | str | None]:
        """The documented alert object of ``diag analyze --json`` and ``diag report --json``."""
        return {
            "start": self.start,
            "end": self.end,
            "series": self.series,
            "seconds_to_oom": self.seconds_to_oom,
            "seconds_to_oom_low": self.seconds_to_oom_low,
            "seconds_to_oom_high": self.seconds_to_oom_high,
        }


@dataclass(frozen=True, slots=True)
class _Stair:
    """A staircase's steps (``Detector._staircase``): how many, their median size and
    spacing, when the last came, and how much sizes and spacings varied (standard
    deviations)."""

    count: int
    size: float
    spacing: float
    last: float
    size_sd: float
    spacing_sd: float

    def forecast(self, headroom: float, now: float) -> tuple[float, float, float]:
        """When the step that does not fit comes (not where the mean rate crosses the
        limit), and its bounds: two standard errors of the size and pace as estimated from
        these steps, and two deviations of one step's own timing."""
        pace_se = self.spacing_sd / math.sqrt(self.count - 1)

        def due(size: float, spacing: float) -> float:
            return self.last + (math.floor(headroom / size) + 1) * spacing - now

        jitter = 2 * self.spacing_sd
        return (
            max(due(self.size, self.spacing), 0.0),
            max(due(self.size + 2 * self.size_sd, self.spacing - 2 * pace_se) - jitter, 0.0),
            due(max(self.size - 2 * self.size_sd, self.size / 2), self.spacing + 2 * pace_se)
            + jitter,
        )


@dataclass(frozen=True, slots=True)
class _Window:
    """What one candidate window says; ``evaluated_at`` lets it be reused until stale."""

    seconds: float
    evaluated_at: float
    significant: bool
    onset_inside: bool  # its first half is flat: the growth began inside it
    decelerating: bool
    steps: bool  # a ratchet: the rise came in a few jumps, ever more rarely
    load: str | None  # what the request counts say of the growth (see _load_of); None: no counts
    rate: float
    rate_se: float  # the rate's standard error: the minima's scatter, and how they stray together
    #: How far the rate moved between the window's halves (a load cycle, a wandering working
    #: set, a leak speeding up or slowing): the forecast's bounds allow for as much again.
    drift: float
    top: float  # the upper envelope now: what the limit is compared with
    #: A standing leak's window only (``_continuing``): the floor now stands above every floor
    #: of the window's first half by more than noise, whatever the rate that took it there.
    rising: bool = False
    #: How long the growth has gone on: the window less its opening stretch at its first floor.
    growing_for: float = math.inf
    #: A staircase's (``Detector._staircase``).
    staircase: _Stair | None = None

    @classmethod
    def quiet(cls, seconds: float, now: float) -> _Window:
        return cls(seconds, now, False, False, False, False, None, 0.0, 0.0, 0.0, 0.0)


def _median(values: list[float]) -> float:
    values.sort()
    n = len(values)
    if n == 0:
        return 0.0
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


def _mann_kendall_z(ys: Sequence[float]) -> float:
    n = len(ys)
    s = sum((b > a) - (b < a) for a, b in combinations(ys, 2))
    if s == 0:
        return 0.0
    return (s - 1 if s > 0 else s + 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)


def _ratchet(ys: Sequence[float]) -> bool:
    """Growth concentrated in a few jumps that come ever more rarely: an allocator's reserved
    memory meeting new peaks, a burst's residue. A per-request staircase rises in many steps,
    or in a few evenly spaced ones."""
    jumps = sorted(
        ((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(ys)) if b > a), reverse=True
    )
    total = sum(size for size, _ in jumps)
    if total <= 0:
        return False
    covered, count = 0.0, 0
    for size, _ in jumps:
        covered += size
        count += 1
        if covered >= 0.8 * total:
            break
    if count <= 2:
        return True
    where = sorted(i for _, i in jumps[:count])
    if where[-1] - where[0] == count - 1 and where[-1] < len(ys) - 1 - len(ys) // 4:
        # One climb over neighbouring groups, and level since for a quarter of the window:
        # a load burst that ramped up over minutes and holds, one step however many groups
        # its ramp took. A leak does not stop at a new level.
        return True
    if count > 4:
        return False
    gaps = [b - a for a, b in itertools.pairwise(where)]
    return gaps[-1] > 1.5 * gaps[0]


def _last_third_slower(ts: Sequence[float], ys: Sequence[float]) -> bool:
    """Whether the last third of a window's minima climbs clearly slower than its middle
    third: by ``FILL_SLOWING_SHARE`` and by more than noise, the minima's scatter taken from
    their second differences (a smooth curve's are small, noise's are not). Not against the
    first third: a warm-up's tail on a leak's first stretch makes that one fast, and a leak
    then climbs at its own constant rate, while a fill keeps slowing."""
    k = len(ys) // 3
    if k < 2:
        return False
    middle = _end_rate(ts[k : 2 * k + 1], ys[k : 2 * k + 1])
    last = _end_rate(ts[2 * k :], ys[2 * k :])
    if not last < FILL_SLOWING_SHARE * middle:
        return False
    return middle - last > FILL_SLOWING_NOISE * _minima_noise(ys) / ((ts[-1] - ts[0]) / 3)


def _minima_noise(ys: Sequence[float]) -> float:
    """A robust standard deviation of one minimum, from the minima's second differences: a
    smooth curve's are small, noise's are not."""
    curvature = _median([abs(c - 2 * b + a) for a, b, c in zip(ys, ys[1:], ys[2:], strict=False)])
    return curvature / 0.6745 / math.sqrt(6)


def _stalled(ts: Sequence[float], ys: Sequence[float], rate: float) -> bool:
    """Whether the window's last third rose by under a quarter of what its rate says, short
    by more than noise: the growth has stopped (a burst's ramps done, a fill at its bound).
    A leak's minima go on rising in the last third too; unlike ``_last_third_slower`` this
    asks for a stop, not a slowdown, so a staircase's uneven thirds and a daily cycle's
    quieter hours rarely pass for one."""
    k = len(ys) // 3
    if k < 3 or rate <= 0:
        return False
    # The last third's own points, two at each end (as _end_rate).
    span = (ts[-1] + ts[-2] - ts[-k] - ts[-k + 1]) / 2
    rise = (ys[-1] + ys[-2] - ys[-k] - ys[-k + 1]) / 2
    expected = rate * span
    if not rise < 0.25 * expected:
        return False
    return expected - rise > FILL_SLOWING_NOISE * _minima_noise(ys)


def _without_largest_rise(ys: Sequence[float]) -> list[float]:
    """``ys`` with the largest rise between neighbours taken out (every later point lowered
    by it): what remains of a series besides its biggest step."""
    rise, at = max((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(ys)))
    if rise <= 0:
        return list(ys)
    return [*ys[: at + 1], *(y - rise for y in ys[at + 1 :])]


def _steps(ends: Sequence[float], lows: Sequence[float], jump: float) -> list[tuple[float, float]]:
    """When the floor rose to a new level and by how much: by ``jump`` or more above its level
    so far (the mean of its floors since the last step: a dip under it is no level) within
    ``STAIR_STEP_POINTS`` points, and still as high at the next point (a step stays). A climb
    over neighbouring points is one step."""
    steps: list[tuple[float, float]] = []
    level = [lows[0]]
    total = lows[0]  # of the level's floors: their mean is the level (a flat stair's)
    i = 1
    while i < len(lows):
        base = total / len(level)
        if lows[i] <= base - jump:
            down = i + 1
            while down < len(lows) and lows[down] <= base - jump:
                down += 1
            if down - i >= STAIR_STEP_POINTS + 1:
                # The floor gave memory back and kept it so (a burst's end, a cycle's night):
                # no staircase leads here; one may begin from the new level.
                steps.clear()
                level = [lows[i]]
                total = lows[i]
                i += 1
            else:
                i = down  # a dip that came back (a cache emptied and filled again): no level
            continue
        stays = i + 1 >= len(lows) or lows[i + 1] >= base + jump
        if lows[i] >= base + jump and stays:
            # The new level: where the climb ends (the points that keep rising by a jump's
            # share within the step's few points).
            top = i
            while (
                top + 1 < len(lows)
                and top + 1 - i < STAIR_STEP_POINTS
                and (lows[top + 1] - lows[top] >= jump / 2)
            ):
                top += 1
            if max(level) - min(level) > jump / 2:
                steps.clear()  # the floor crept up before it: a curve, not a flat stair
            steps.append((ends[i], lows[top] - base))
            level = [lows[top]]
            total = lows[top]
            i = top + 1
            continue
        level.append(lows[i])
        total += lows[i]
        i += 1
    return steps


def _leak_reason(window: _Window) -> str:
    if window.staircase is not None:
        if window.staircase.count < STAIR_MIN_STEPS:
            return STAIRCASE_NEAR_LIMIT_REASON
        return STAIRCASE_REASON
    return LEAK_REASONS[window.load]


def _end_rate(ts: Sequence[float], ys: Sequence[float]) -> float:
    """The rise from the first two points to the last two, per second."""
    span = (ts[-1] + ts[-2] - ts[0] - ts[1]) / 2
    return (ys[-1] + ys[-2] - ys[0] - ys[1]) / 2 / span if span > 0 else 0.0


def _half_rates(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Each half's rise end to end, per second (the halves share the middle point): not
    robust slopes, since a staircase's flat stretches have none, yet it rises in each half."""
    half = len(ts) // 2
    return _end_rate(ts[: half + 1], ys[: half + 1]), _end_rate(ts[half:], ys[half:])


def _theil_sen(ts: Sequence[float], ys: Sequence[float]) -> float:
    return _median(
        [(b - a) / (tb - ta) for (ta, a), (tb, b) in combinations(zip(ts, ys, strict=True), 2)]
    )


def _spread(
    ts: Sequence[float], ys: Sequence[float], tops: Sequence[float], rate: float, now: float
) -> tuple[float, float]:
    """The rate's standard error, from the spread of the minima around the robust line, and
    the upper envelope now: the fitted floor plus the largest recent gap above it."""
    y_mean = sum(ys) / len(ys)
    t_mean = sum(ts) / len(ts)
    intercept = y_mean - rate * t_mean
    sxx = sum((x - t_mean) ** 2 for x in ts)
    residuals = [y - intercept - rate * x for x, y in zip(ts, ys, strict=True)]
    residual = sum(r**2 for r in residuals)
    se = math.sqrt(residual / max(len(ts) - 2, 1) / sxx) if sxx > 0 else 0.0
    if residual > 0:
        # Minima that stray together (a working set wandering with the load, a sawtooth's
        # phase) are fewer independent points than they look: the error grows by the
        # residuals' lag-one autocorrelation, as in an AR(1) model.
        rho = sum(a * b for a, b in itertools.pairwise(residuals)) / residual
        rho = min(max(rho, 0.0), MAX_RESIDUAL_CORRELATION)
        se *= math.sqrt((1 + rho) / (1 - rho))
    half = len(ts) // 2
    gaps = sorted(
        top - (intercept + rate * x) for x, top in zip(ts[half:], tops[half:], strict=True)
    )
    # The envelope is a height the series keeps reaching (a sawtooth's tops, once a group at
    # least): the second-highest group's, so that one transient (a big request's allocation,
    # freed by the next sample) does not set the headroom left.
    gap = gaps[-2] if len(gaps) >= 3 else gaps[-1]
    return se, intercept + rate * now + max(gap, 0.0)


class Detector:
    def __init__(
        self,
        limit: float | None = None,
        config: DetectorConfig | None = None,
        *,
        start_time: float | None = None,
    ) -> None:
        self.limit = _usable_limit(limit)
        self.config = config or DetectorConfig()
        # The exponential histogram, as parallel lists (slices and bisect run at C speed):
        # each point's end time, floor and maximum, oldest first; counts per width class.
        # A point's floor is its minimum unless that is a one-bucket dip (``_push``).
        self._ends: list[float] = []
        self._lows: list[float] = []
        self._newest_low = math.nan  # the newest point's own minimum, until it is judged
        self._highs: list[float] = []
        self._requests: list[float] = []  # cumulative requests at each point's end; nan: none
        self._counts: list[int] = [0]
        # [start, min, max, deepest fall inside, cumulative requests at the last sample]
        self._bucket: list[float] | None = None
        self._regime_start = start_time
        self._regime_floor = math.inf  # the lowest value since the regime began
        #: The level the process before the last restart had settled at (``_settled``).
        self._settled_before: float | None = None
        #: A fall that looks like a restart, until the next bucket confirms it: its bucket's
        #: start, the level it fell from, the gap before it.
        self._restart_at: tuple[float, float, float] | None = None
        #: A fall that looks like a collection's, until the next bucket confirms it: its
        #: bucket's start and the level it fell from.
        self._drop_at: tuple[float, float] | None = None
        self._drops: deque[float] = deque(maxlen=8)
        self._windows: dict[int, _Window] = {}
        #: The staircase's steps as last found (``_staircase``): the regime's start, when, the
        #: highest floor then, the least step, and the steps.
        self._stair: tuple[float, float, float, float, list[tuple[float, float]]] | None = None
        #: ... and what it last said: when, in which regime, and its window (None: none).
        self._stair_window: tuple[float, float | None, _Window | None] | None = None
        # The trailing run of points that all hold one value: that value (None: the newest
        # point moved inside it), and the end of the newest point outside the run. A resource
        # count that does not move is steady without a window search (``_flat_since``).
        self._flat_value: float | None = None
        self._moved_until = -math.inf
        # The window lengths' ladder, 10 min then √2 apart, extended as needed.
        self._ladder = [self.config.min_leak_seconds]
        self._last_t = -math.inf
        self._entry = (0.0, 0.0)  # the standing leak's window length and rate when called
        self._entry_reason = ""
        self._confirmed = 0.0  # the longest window that called the standing leak as it grew
        self._called_at = 0.0
        self._stopped = 0  # bucket closes in a row on which a standing leak's growth had stopped
        #: The last leak left in this regime: when its growth began, when its floor reached
        #: the level it then held (its pause began) and that level. None: none left, or
        #: called again since.
        self._left: tuple[float, float, float] | None = None
        #: The longest pause a leak in this regime has shown and then resumed from.
        self._pause = 0.0
        self.verdict = Verdict(0.0, "insufficient_data", "no samples yet")
        self._scaled = (self.verdict, self.verdict)  # time_scale != 1: the last one unscaled

    # -- samples in -----------------------------------------------------------------------

    def update(
        self, t: float, value: float, limit: float | None = None, requests: float | None = None
    ) -> Verdict:
        """Add one sample; returns the current verdict (re-evaluated when a bucket closes).
        ``requests``: the process's cumulative request count at ``t``, where it counts them;
        with it, growth that follows load is told apart from growth that outlasts it."""
        scale = self.config.time_scale
        if scale == 1.0:
            return self._update(t, value, limit, requests)
        verdict = self._update(t * scale, value, limit, requests)
        if self._scaled[0] is verdict:
            return self._scaled[1]  # unchanged: the same object, as unscaled
        scaled = dataclasses.replace(
            verdict,
            t=verdict.t / scale,
            rate=None if verdict.rate is None else verdict.rate * scale,
            seconds_to_oom=_unscale(verdict.seconds_to_oom, scale),
            seconds_to_oom_low=_unscale(verdict.seconds_to_oom_low, scale),
            seconds_to_oom_high=_unscale(verdict.seconds_to_oom_high, scale),
            window_seconds=_unscale(verdict.window_seconds, scale),
        )
        self._scaled = (verdict, scaled)
        return scaled

    def _update(
        self, t: float, value: float, limit: float | None = None, requests: float | None = None
    ) -> Verdict:
        if limit is not None:
            self.limit = _usable_limit(limit)
        # MAX_READING as literals, here and for the count: four global lookups a sample cost
        # the replay 5 %.
        if not (-1e100 < value < 1e100 and -1e100 < t < 1e100):
            # Not a reading (nan, an infinity, a corrupt field): ignored as an out-of-order
            # sample is. Taken in, one at an infinite time would make every later sample out
            # of order, or as the first make the regime endless, and nan compares false with
            # every floor it should have set.
            return self.verdict
        if requests is not None and not -1e100 < requests < 1e100:
            requests = None  # a count that is no number says nothing of the load
        if t < self._last_t:
            return self.verdict  # out of order: ignore rather than corrupt the history
        self._last_t = t
        bucket = self._bucket
        if bucket is not None and t < bucket[0] + BUCKET_SECONDS:
            if requests is not None:
                bucket[4] = requests
            if value < bucket[1]:
                bucket[1] = value
                if bucket[2] - value > bucket[3]:
                    bucket[3] = bucket[2] - value  # the deepest fall inside the bucket
            elif value > bucket[2]:
                bucket[2] = value
            return self.verdict
        if bucket is not None:
            self._close_bucket(bucket, t)
        if self._regime_start is None:
            self._regime_start = t
            self.verdict = Verdict(t, "insufficient_data", "fewer than 3 minutes of samples")
        self._bucket = [t, value, value, 0.0, math.nan if requests is None else requests]
        return self.verdict

    def extend(self, samples: Iterable[tuple[float, float]]) -> Verdict:
        """Add samples in turn (without request counts); returns the last verdict."""
        verdict = self.verdict
        for t, value in samples:
            verdict = self.update(t, value)
        return verdict

    # -- history --------------------------------------------------------------------------

    def _close_bucket(self, bucket: list[float], now: float) -> None:
        start, low, high, fell_inside, requests = bucket
        end = min(now, start + BUCKET_SECONDS)
        if self._ends:
            previous_high = self._highs[-1]
            gap = start - self._ends[-1]
            fell = previous_high - low
            # A restart is a fall that stays: the bucket after it must be as low, against the
            # level before the fall. A gauge read once between batches is no restart.
            pending, self._restart_at = self._restart_at, None
            # A collection's sawtooth rises again from its trough, slowly; a gauge read once
            # between batches comes back at once. So a fall is a drop once the next bucket's
            # minimum is still down from where it fell by as much (2 %). The sawtooth's period
            # comes from these; one that straddles two buckets is one drop, not two.
            dropped, self._drop_at = self._drop_at, None
            if (
                dropped is not None
                and dropped[1] - low > 0.02 * dropped[1]
                and (not self._drops or dropped[0] - self._drops[-1] > 1.5 * BUCKET_SECONDS)
            ):
                self._drops.append(dropped[0])
            # A restart resets the process's request counter (the agent's starts again with
            # it): a fall across which the count goes on is the same process freeing a big
            # block (a buffer reallocated and the old one freed, a batch's arrays dropped).
            same_process = (
                self.config.one_process or requests >= self._requests[-1]  # False with a nan
            )
            if pending is not None and self._fell_away(pending[1], low, pending[2]):
                self._restart(pending[0])
            elif not same_process and self._fell_away(previous_high, low, gap):
                self._restart_at = (start, previous_high, gap)
            elif max(fell, fell_inside) > 0.02 * previous_high:
                self._drop_at = (start, previous_high if fell >= fell_inside else high)
        if self._restart_at is None:  # a fall to be confirmed does not set the floor yet
            self._regime_floor = min(self._regime_floor, low)
        self._push(end, low, high, requests)
        if self._settled_before is not None:
            self._forget_predecessor(end)
        self.verdict = self._decide(end)

    def _fell_away(self, high: float, low: float, gap: float) -> bool:
        """Whether a fall from ``high`` to ``low`` (after ``gap`` seconds without samples)
        is a restart's: by over a third, or below the regime's floor by a tenth after a
        sharp fall or a gap (a restart's lost samples)."""
        fell = high - low
        return fell > 0.35 * high or (
            low < 0.9 * self._regime_floor and (fell > 0.2 * high or gap > 120)
        )

    def _restart(self, t: float) -> None:
        self._settled_before = self._settled(t)
        self._regime_start = t
        self._regime_floor = math.inf
        self._drops.clear()
        self._windows.clear()
        self._left, self._pause = None, 0.0

    def _forget_predecessor(self, now: float) -> None:
        """Forget the level the process before the restart settled at, once this one has
        settled at a lower level of its own (a smaller model, fewer workers' buffers): from
        there, a climb back to the old level is new ground for this process, and a leak
        must be called as it would be in a process that never restarted."""
        assert self._regime_start is not None and self._settled_before is not None
        own = self._settled(now)
        # Lower by more than a level's own spread: a slow fill that creeps within that spread
        # (the predecessor's level not reached yet) has not settled anywhere of its own.
        if own is not None and own < (1 - SETTLED_SPREAD) * self._settled_before:
            self._settled_before = None

    def _push(self, end: float, low: float, high: float, requests: float) -> None:
        ends, lows, highs, counts = self._ends, self._lows, self._highs, self._counts
        if not low == high == self._flat_value:  # the trailing run of one value ends here
            self._moved_until = ends[-1] if ends else -math.inf
            if low == high:
                self._flat_value = low  # and a new one begins
            else:
                self._flat_value = None
                self._moved_until = end
        ends.append(end)
        if lows:
            # A minimum below both neighbours' floors is a dip (a gauge read between batches,
            # a scrape during a brief free): the floor is what the series comes back to, so a
            # point's floor is the median of its minimum and its neighbours' floors, judged
            # once the next point is in. A GC's drop or a restart stays low in the next point
            # too and keeps its depth. Until then the newest point's floor is its minimum.
            lows[-1] = max(self._newest_low, min(lows[-2] if len(lows) > 1 else low, low))
        lows.append(low)
        self._newest_low = low
        highs.append(high)
        self._requests.append(requests)
        counts[0] += 1
        width = 0
        while counts[width] > POINTS_PER_WIDTH:
            # The oldest two points of this width sit right after all wider (older) ones;
            # they merge into one point of the next width.
            i = sum(counts[width + 1 :])
            if ends[i] <= self._moved_until < ends[i + 1]:
                self._moved_until = ends[i + 1]  # a moved point merged into the run's first
            ends[i] = ends[i + 1]
            lows[i] = min(lows[i], lows[i + 1])
            highs[i] = max(highs[i], highs[i + 1])
            # Cumulative counts: the merged point keeps the later one.
            del ends[i + 1], lows[i + 1], highs[i + 1], self._requests[i]
            counts[width] -= 2
            if width + 1 == len(counts):
                counts.append(0)
            counts[width + 1] += 1
            width += 1

    def _sawtooth_period(self, now: float) -> float:
        """The period of a regular sawtooth, or 0: drops must be recent and evenly spaced."""
        drops = list(self._drops)
        if len(drops) < 4:
            return 0.0
        spacings = sorted(b - a for a, b in itertools.pairwise(drops))
        period = spacings[len(spacings) // 2]
        if now - drops[-1] > 3 * period or spacings[-1] > 4 * max(period, BUCKET_SECONDS):
            return 0.0  # occasional drops (bursts ending, noise) are not a sawtooth
        # Collections come about evenly (jitter, a missed drop), so the middle half of the
        # spacings agree; transients (a big request's allocation, freed at once) come at
        # random, their spacings spread like a Poisson process's (quartiles ~5x apart). A
        # fall seen over two samples is one collection: drops closer than a quarter of the
        # period are one.
        kept = [drops[0]]
        for drop in drops[1:]:
            if drop - kept[-1] >= period / 4:
                kept.append(drop)
        even = sorted(b - a for a, b in itertools.pairwise(kept))
        m = len(even)
        if m < 3 or even[(3 * m) // 4] > SAWTOOTH_SPREAD * even[m // 4]:
            return 0.0
        return period

    def _groups(
        self, start: float, seconds: float, groups: int
    ) -> tuple[list[float], list[float], list[float]]:
        """Cut [start, start + seconds] into ``groups`` spans: each span's middle time, lowest
        and highest value (spans without samples are left out)."""
        ends, lows, highs = self._ends, self._lows, self._highs
        first = bisect_right(ends, start)
        span = seconds / groups
        ts: list[float] = []
        ys: list[float] = []
        tops: list[float] = []
        for g in range(groups):
            # Points whose end falls in this group's span: found by bisect, reduced by slices.
            last = bisect_right(ends, start + (g + 1) * span, first)
            if last > first:
                ts.append(start + (g + 0.5) * span)
                ys.append(min(lows[first:last]))
                tops.append(max(highs[first:last]))
            first = last
        return ts, ys, tops

    def _window(self, seconds: float, now: float, period: float) -> _Window | None:
        start = now - seconds
        groups = min(MAX_GROUPS, int(seconds / max(period, BUCKET_SECONDS)))
        if groups < MIN_GROUPS or len(self._ends) - bisect_right(self._ends, start) < MIN_GROUPS:
            return None
        ts, ys, tops = self._groups(start, seconds, groups)
        if len(ts) < MIN_GROUPS:
            return None
        cfg = self.config
        rise = ys[-1] - ys[0]
        y_mean = sum(ys) / len(ys)
        # No rise, or no trend: the common case, answered without the slopes (and without
        # the trend test's pairs where the ends already say no).
        min_rise = self._margin(y_mean)
        if rise <= min_rise or _mann_kendall_z(ys) < cfg.min_trend_z:
            return _Window.quiet(seconds, now)
        # One jump between neighbouring groups that makes half the window's rise or more is a
        # step (a caching allocator reserving a segment for a new peak batch, a burst's
        # fragmentation residue), and a step is no rate: fitted through it, the slope is the
        # step's size over the window's length, and a short window's forecast puts the limit
        # minutes away. The trend is what rises without it; where nothing does, a ratchet.
        stepped = False
        without = _without_largest_rise(ys)
        if rise - (without[-1] - without[0]) >= 0.5 * rise:
            if without[-1] - without[0] <= min_rise or _mann_kendall_z(without) < cfg.min_trend_z:
                stepped = True
            else:
                ys = without
        half = len(ts) // 2
        rate = _theil_sen(ts, ys)
        first_rate, second_rate = _half_rates(ts, ys)
        # ... and by robust slopes too: a slowdown must show both ways, or it is noise.
        robust_first = _theil_sen(ts[:half], ys[:half])
        robust_second = _theil_sen(ts[half:], ys[half:])
        regime_start = start if self._regime_start is None else self._regime_start
        # ... and, in a young process, each half again with its largest rise set aside. There
        # the warm-up's tail and a caching allocator's first steps overlap (new peak batches
        # come ever more rarely, so its steps come early): a step props up the half it falls
        # in while the tail flattens behind it. Later in life, a leak's segment-sized steps
        # can fall unevenly in the halves, and this would read them as slowing.
        slows_without_steps = False
        if now - regime_start < cfg.young_seconds:
            second_ys = _without_largest_rise(ys[half:])
            slows_without_steps = _end_rate(ts[half:], second_ys) < 0.5 * _end_rate(
                ts[: half + 1], _without_largest_rise(ys[: half + 1])
            ) and _theil_sen(ts[half:], second_ys) < 0.5 * _theil_sen(
                ts[:half], _without_largest_rise(ys[:half])
            )
        # Filling toward a bound: the last third clearly slower than the middle one. Judged in
        # a process's first 90 minutes, where caches and pools fill: there a short, confident
        # forecast would pass the young-process watch, and a cache's rate has not yet fallen
        # to half (the halves above) when it is called; growth is a warm-up until it has shown
        # that its rate does not decay. And over the shortest window at any age: a load ramp
        # reaching its height slows in the last minutes before it holds (a ratchet once it
        # has held for a quarter of the window). Later, over longer windows, a staircase's
        # Poisson steps and its daily cycle make thirds too uneven to judge this way.
        fill_slowing = (
            now - regime_start < cfg.young_seconds or seconds <= cfg.min_leak_seconds
        ) and _last_third_slower(ts, ys)
        # The same length just before this window, warm-up included: growth that was clearly
        # faster then is slowing down (a warm-up's tail, a cache nearing its bound).
        prior_start = max(start - seconds, regime_start)
        prior_rate = None
        if start - prior_start >= seconds / 2:
            pts, pys, _ = self._groups(prior_start, start - prior_start, groups)
            if len(pts) >= MIN_GROUPS:
                prior_rate = _end_rate(pts, pys)
        steps = stepped or _ratchet(ys)
        se, top = _spread(ts, ys, tops, rate, now)
        # Where the growth began: after the opening groups whose floors have not yet risen by
        # half a group's share of the window's rise (a load ramp's or a leak's onset inside).
        began = start
        for t_group, y in zip(ts[1:], ys[1:], strict=False):
            if y - ys[0] > 0.5 * (ys[-1] - ys[0]) / (len(ys) - 1):
                break
            began = t_group + seconds / groups / 2
        load = self._load_of(start, seconds / groups, ts, ys)
        if load == "steady" and self._busiest_yet(start, seconds):
            load = "steady_peak"
        return _Window(
            seconds=seconds,
            evaluated_at=now,
            significant=rate > 0,
            onset_inside=rate > 0 and first_rate < 0.6 * second_rate,
            decelerating=rate > 0
            and (
                (second_rate < 0.5 * first_rate and robust_second < 0.5 * robust_first)
                # The floor has come down from its high by more than noise: what rose is going
                # (a burst ending, a cache evicting). A leak's floor does not give memory back.
                or max(ys) - ys[-1] > min_rise
                or slows_without_steps
                or fill_slowing
                or _stalled(ts, ys, rate)
                or (prior_rate is not None and _end_rate(ts, ys) < 0.75 * prior_rate)
            ),
            steps=steps,
            load=load,
            rate=rate,
            rate_se=se,
            drift=abs(second_rate - first_rate),
            top=top,
            growing_for=now - began,
        )

    def _load_of(
        self, start: float, span: float, ts: Sequence[float], ys: Sequence[float]
    ) -> str | None:
        """What the request counts say of a rising window's group minima: None without
        counts (or across a counter reset); "steady" when the request rate did not move by
        as much as could explain the rise, and the counts would have shown it if it had, so
        the growth stands on its own; "unclear" when too few requests were counted to rule
        such a change out; "follows" when the minima track the request rate and nothing
        keeps rising once it is accounted for (a burst, a busy hour: memory that follows
        load is working set); "outlasts" when growth remains across load levels."""
        rates = []
        for t in ts:
            served = self._served(t - span / 2, t + span / 2)
            if served is None:
                return None
            rates.append(served[0] / served[1])
        mean = sum(rates) / len(rates)
        if mean <= 0:
            return None  # no traffic at all: the counts say nothing
        # The least change of the request rate that could explain the rise: were all the
        # memory proportional to load, the rate must have moved by the rise's share of the
        # level (a fifth of the mean, LOAD_VARIES, is a varied load whatever the rise).
        # The level is floored at 1 as in _margin: a series about zero (a CSV given to `diag
        # analyze`) would divide by it.
        y_mean = sum(ys) / len(ys)
        matters = min(LOAD_VARIES, max(ys[-1] - ys[0], 0.0) / max(y_mean, 1.0)) * mean
        # Varied: by that much, and by more than counting noise would (Poisson arrivals: a
        # group of n requests varies by about sqrt(n)).
        noise = 5 * math.sqrt(mean / span)
        if max(rates) - min(rates) < max(matters, noise):
            # A group may count too few requests to show a slow ramp (a daily cycle's
            # morning) above that noise; the window's first and last thirds count more.
            k = len(ts) // 3  # two groups at least: a window has MIN_GROUPS
            first = self._served(ts[0] - span / 2, ts[k - 1] + span / 2)
            last = self._served(ts[-k] - span / 2, ts[-1] + span / 2)
            if first is None or last is None:
                return "unclear"
            (n_first, s_first), (n_last, s_last) = first, last
            change = abs(n_last / s_last - n_first / s_first)
            sd = math.sqrt(n_first / s_first**2 + n_last / s_last**2)
            if change < max(matters, 3 * sd):
                # No change seen: steady only where one that could explain the rise would
                # have shown; where the counts are too few to rule it out, unclear.
                return "steady" if 3 * sd < matters else "unclear"
        # Least squares of the minima on the request rate; what it leaves must not rise.
        srr = sum((r - mean) ** 2 for r in rates)
        if srr <= 0:
            return "steady"  # the thirds differ, the groups all alike: nothing to fit
        slope = sum((r - mean) * (y - y_mean) for r, y in zip(rates, ys, strict=True)) / srr
        left = [y - slope * (r - mean) for r, y in zip(rates, ys, strict=True)]
        if slope > 0 and _mann_kendall_z(left) < self.config.min_trend_z:
            return "follows"
        return "outlasts"

    def _busiest_yet(self, start: float, seconds: float) -> bool:
        """Whether the window served requests faster, by more than counting noise (three
        standard errors of its Poisson count), than every span as long before it since the
        warm-up; False where no such span came before. Memory sized by the peak load (pools
        that grow to the peak concurrency, caches of the busiest hour's keys) rises at a
        steady rate that is the highest yet, as a leak would."""
        assert self._regime_start is not None
        served = self._served(start, start + seconds)
        if served is None or served[1] <= 0:
            return False
        rate = served[0] / served[1]
        earliest = self._regime_start + self.config.warmup_seconds + seconds
        highest = None
        for end in self._ends[bisect_right(self._ends, earliest) : bisect_right(self._ends, start)]:
            before = self._served(end - seconds, end)
            if before is not None and before[1] > 0:
                highest = max(highest or 0.0, before[0] / before[1])
        return highest is not None and rate > highest + 3 * math.sqrt(served[0]) / served[1]

    def _served(self, begin: float, end: float) -> tuple[float, float] | None:
        """Requests counted between the points nearest before ``begin`` and ``end``, and the
        seconds between those points; None where the counts cannot say (before the first
        point, no point in between, no counts, a counter reset)."""
        ends, counts = self._ends, self._requests
        first = bisect_right(ends, begin) - 1
        last = bisect_right(ends, end) - 1
        if first < 0 or last <= first:
            return None
        served = counts[last] - counts[first]
        if not served >= 0:  # nan (no counts) or negative (a reset)
            return None
        return served, ends[last] - ends[first]

    def _revisited(self, window: _Window, now: float, period: float) -> str | None:
        """Why the floor now is no new ground (the reason to say), or None: it is no higher
        (by 1 %) than a floor this process held before the window (since its warm-up): a
        working set that steps up and down, a burst come back, a daily peak repeated; or than
        the level the process before a restart settled at (a recycled worker rebuilding its
        caches). A leak takes memory where the process has never been; until the floor passes
        every earlier one, the rise is within the process's own range."""
        assert self._regime_start is not None
        span = max(period, window.seconds / MAX_GROUPS, BUCKET_SECONDS)
        _, recent, _ = self._groups(now - span, span, 1)
        if not recent:
            return None
        # Within noise of a level counts as the same level: a leak leaves it clearly behind.
        margin = 1 + self.config.min_rise_share
        if self._settled_before is not None and recent[0] <= self._settled_before * margin:
            return "rising back to where the process settled before its restart"
        since = self._regime_start + self.config.warmup_seconds
        groups = int((now - window.seconds - since) / span)
        if groups < 1:
            return None
        _, earlier, _ = self._groups(since, groups * span, groups)
        if earlier and recent[0] <= max(earlier) * margin:
            return "rising back to a level it held before"
        return None

    def _settled(self, before: float) -> float | None:
        """The level this regime had settled at before ``before`` (a restart): its floor, where
        the floors of its last quarter (30 minutes at least) stayed within 2 % of each other.
        None where they did not: a process that was still growing when it ended (a leak killed
        at its limit) leaves no level that a successor may climb back to unremarked."""
        assert self._regime_start is not None
        span = max(SETTLED_MIN_SECONDS, (before - self._regime_start) / 4)
        if before - span < self._regime_start + self.config.warmup_seconds:
            return None
        _, floors, _ = self._groups(before - span, span, MIN_GROUPS)
        if len(floors) < MIN_GROUPS or max(floors) - min(floors) > SETTLED_SPREAD * max(floors):
            return None
        return max(floors)

    def _continuing(
        self, seconds: float, now: float, period: float, episode: bool = False
    ) -> _Window | None:
        """The growth over the last ``seconds``, trend test or not: a standing leak is judged
        on whether it goes on, not on whether it could be called afresh. ``rising``: the floor
        now stands above every floor of the span's first half, or over a whole ``episode``
        (the span since the call) of its first two thirds."""
        groups = min(MAX_GROUPS, int(seconds / max(period, BUCKET_SECONDS)))
        if groups < MIN_GROUPS:
            return None
        ts, ys, tops = self._groups(now - seconds, seconds, groups)
        if len(ts) < MIN_GROUPS:
            return None
        # End to end as well as robustly: a staircase's or an allocator's few steps leave most
        # pairs of groups flat, so its robust slope can be zero while it keeps rising.
        rate = max(_theil_sen(ts, ys), _end_rate(ts, ys))
        se, top = _spread(ts, ys, tops, rate, now)
        first_rate, second_rate = _half_rates(ts, ys)
        # New ground: a leak's floor goes where it has not been, at any pace; a fill that
        # stopped (a cache at its bound, a false alert's ratchet) stays within its earlier
        # floors. The margin is the calling rise's (noise moves the minima by less).
        new_ground = self._margin(sum(ys) / len(ys))
        compared = 0.5
        if episode:
            compared = 2 / 3
            # Over a whole episode, a slow leak (one decelerating for hours) climbs less than
            # the calling margin in a third of it while its floor stays clear of noise: there
            # new ground is three noise units above the earlier floors (a quarter of the
            # margin at least), which flat minima do not reach by chance.
            noise = FILL_SLOWING_NOISE * _minima_noise(ys)
            new_ground = min(new_ground, max(noise, EPISODE_MIN_RISE_SHARE * new_ground))
        return _Window(
            seconds=seconds,
            evaluated_at=now,
            # Weak evidence of a rise: enough to keep a standing leak, never to call one.
            significant=rate > 0 and _mann_kendall_z(ys) >= HOLD_MIN_TREND_Z,
            onset_inside=False,
            decelerating=False,
            steps=False,
            load=None,
            rate=rate,
            rate_se=se,
            drift=abs(second_rate - first_rate),
            top=top,
            rising=ys[-1] > max(ys[: max(1, int(len(ys) * compared))]) + new_ground,
        )

    def _candidate_lengths(self, regime: float) -> list[float]:
        """Window lengths ending now: ``min_leak_seconds`` (10 min), then each √2 times the
        last (14 min, 20 min, ...) up to the regime's length, and the whole regime when it is
        over 1.25 times the longest."""
        ladder = self._ladder
        while ladder[-1] <= regime + 1e-9:  # grown as the regime outlasts it (rarely)
            ladder.append(ladder[-1] * math.sqrt(2))
        lengths = ladder[: bisect_right(ladder, regime + 1e-9)]
        if lengths and regime > lengths[-1] * 1.25:
            lengths.append(regime)  # the whole regime, for the slowest leaks
        return lengths

    # -- verdicts -------------------------------------------------------------------------

    def _decide(self, now: float) -> Verdict:
        verdict = self._judge(now)
        previous = self.verdict
        if verdict.state == "leak":
            window_seconds = verdict.window_seconds or 0.0
            if previous.state != "leak":
                self._resumed()
                self._entry = (window_seconds, verdict.rate or 0.0)
                self._entry_reason = verdict.reason
                self._called_at = now
                self._confirmed = window_seconds
            elif window_seconds > self._confirmed and self._growing_now(now):
                # Evidence gathered since the entry window began, not the quiet hours before.
                since_entry = now - self._called_at + self._entry[0]
                self._confirmed = min(window_seconds, since_entry)
            return verdict
        if previous.state == "leak" and verdict.state in ("growing", "bounded_growth", "steady"):
            held = self._hold(now)
            if held is not None:
                self._stopped = 0
                return held
            # ... and for minutes in a row: one evaluation near a burst's end is not a stop.
            self._stopped += 1
            if self._stopped < LEAK_EXIT_BUCKETS:
                return dataclasses.replace(previous, t=now)
            began = self._called_at - self._entry[0]
            self._left = (began, *self._plateau(began))
        self._stopped = 0
        if (
            verdict.rate is None
            and previous.rate is None
            and verdict.state == previous.state
            and verdict.reason == previous.reason
        ):
            # The same verdict again (steady, warming up): the same object, dated when it was
            # first reached, so that those who act on a change (gauges, replays) can tell by
            # identity that nothing did.
            return previous
        return verdict

    def _plateau(self, since: float) -> tuple[float, float]:
        """The highest floor reached after ``since``, and when the floor first came within
        the new-ground margin of it: where a stopped growth's plateau began."""
        high = max(self._lows[bisect_right(self._ends, since) :], default=-math.inf)
        near = high - self._margin(high)
        began = self._first_floor(since, lambda low: low >= near)
        return (since if began is None else began), high

    def _first_floor(self, since: float, meets: Callable[[float], bool]) -> float | None:
        """When the floor first met ``meets`` after ``since``, or None if it has not."""
        first = bisect_right(self._ends, since)
        return next(
            (
                end
                for end, low in zip(self._ends[first:], self._lows[first:], strict=True)
                if meets(low)
            ),
            None,
        )

    def _margin(self, level: float) -> float:
        """The least rise that counts at this level: below it, noise, whatever its trend."""
        return self.config.min_rise_share * max(level, 1.0)

    def _resumed(self) -> None:
        """A leak called again where the last one left in this regime had paused: the time
        from the start of its plateau to the first floor clear above it is the leak's pause,
        its rhythm (a leak fed by a nightly batch, by bursts of traffic) when no longer than
        twice the growth before it. Later pauses as long are bridged (``_hold``)."""
        if self._left is None:
            return
        grew_from, paused_from, high = self._left
        self._left = None
        above = high + self._margin(high)
        resumed = self._first_floor(paused_from, lambda low: low > above)
        if resumed is None:
            return  # no new ground: the climb back is not the leak going on
        pause = resumed - paused_from
        if pause <= PAUSE_MAX_SHARE_OF_SPELL * (paused_from - grew_from):
            self._pause = max(self._pause, pause)

    def _hold_span(self) -> float:
        """The span a standing leak is first judged over: its entry window's, 20 minutes at
        least (under noise, one short window's evidence that the growth stopped is no stronger
        than its evidence was that it began)."""
        return max(self._entry[0], HOLD_MIN_WINDOWS * self.config.min_leak_seconds)

    def _growing_now(self, now: float) -> bool:
        """Whether a standing leak still grows over its hold span: a longer window that calls
        it again adds evidence only then, not when its own trend is hours of growth that
        stopped since."""
        window = self._continuing(self._hold_span(), now, self._sawtooth_period(now))
        return window is not None and (window.rising or window.significant)

    def _hold(self, now: float) -> Verdict | None:
        """A standing leak stays one while its growth goes on. Leaving it takes evidence over
        a span like the one that entered it that the growth stopped, not merely a failed fresh
        trend test (noise, a slowdown, a step, a quiet night). Not before a span of the
        entry window's length (20 minutes at least) has passed since the call. Then, over the
        last window of that length, over twice that, or over the longest window that called
        it again while it grew (a leak judged afresh on two hours of growth stands on two
        hours of evidence), the lower envelope still rises if:

        - its floor now stands above every floor of the window's first half, by more than
          noise: new ground, however slowly reached. A leak that slows to a tenth at night, or
          grows a segment at a time, keeps reaching it; a rate share alone would end it
          wherever the call's rate was overstated (a busy hour, the onset's ramp, a peak
          batch's step in the entry window). A stopped fill leaves it within a window's
          span: a false alert does not stick;
        - or it shows a trend at a low bar and a rate of a third of the leak's own, which is
          the slower of the rate it was called at and its rate since (a short entry window
          under a sawtooth can overstate it): steady growth whose floor is too noisy to clear
          the new-ground margin. Both: either alone comes by chance on a flat series too
          often. Not over twice the entry's span where that is most of the time since the
          call began: its rate would be the entry's own rise over again.

        An operator who sees the verdict leave "leak" in the middle of a leak stops trusting
        it."""
        entry_rate = self._entry[1]
        assert self._regime_start is not None  # a leak was called in this regime
        regime = now - self._regime_start - self.config.warmup_seconds
        seconds = self._hold_span()
        if now - self._called_at < seconds:
            # No span like the entry's has passed since the call: nothing can say yet that
            # the growth stopped (a burst's end, a dip under a short entry window).
            return dataclasses.replace(self.verdict, t=now)
        period = self._sawtooth_period(now)
        span_called = min(now - self._called_at + seconds, regime)
        since_called = self._continuing(span_called, now, period)
        if since_called is None:
            # Too few samples to say anything (a gap): no evidence either way, so it stands.
            return dataclasses.replace(self.verdict, t=now)
        if since_called.rate <= 0:
            return None
        # New ground over the whole episode: the floor stands above every floor of its first
        # two thirds. A burst's end or a quiet hour cannot take that back; a leak that stopped
        # loses it once those reach its level, about half as long after the stop as the
        # episode had lasted before it.
        span = min(max(now - self._called_at, seconds), regime)
        episode = self._continuing(span, now, period, episode=True)
        if episode is not None and episode.rising:
            return self._verdict(now, "leak", self._entry_reason, episode)
        if self._pause > 0:
            # A leak that paused before and resumed: new ground against the floors from before
            # a pause as long as its longest, and a quarter more. Its floor stands there while
            # it pauses, and stops standing there once it has paused for longer.
            span = min(2 * PAUSE_BRIDGE * self._pause, regime)
            bridge = self._continuing(span, now, period)
            if bridge is not None and bridge.rising:
                return self._verdict(now, "leak", self._entry_reason, bridge)
        own_rate = min(entry_rate, since_called.rate)
        # Twice as long too: a leak that follows a daily load cycle slows down at night. And
        # over the longest window that called it: a leak called on a fast stretch's 28
        # minutes and confirmed over two hours since, whose rate then fell to a fifth, shows
        # no new ground beyond noise in an hour but does in two.
        spans = [seconds, 2 * seconds]
        if self._confirmed > spans[-1]:
            spans.append(self._confirmed)
        judged = False
        for span in spans:
            # Mostly the entry window itself: its rate would only repeat the call's.
            repeats = span > 0.75 * span_called and span > seconds
            window = self._continuing(min(span, regime), now, period)
            if window is None:
                continue
            judged = True
            if window.rising or (
                not repeats
                and window.significant
                and window.rate >= HOLD_SHARE_OF_OWN_RATE * own_rate
            ):
                # The reason it was called still holds: the same words, not a new story.
                return self._verdict(now, "leak", self._entry_reason, window)
        return None if judged else dataclasses.replace(self.verdict, t=now)

    def _judge(self, now: float) -> Verdict:
        cfg = self.config
        if self._regime_start is None or len(self._ends) < MIN_GROUPS:
            return Verdict(now, "insufficient_data", "fewer than 3 minutes of samples")
        since_start = now - self._regime_start
        if since_start < cfg.warmup_seconds:
            return Verdict(now, "warming_up", "within the warm-up grace after (re)start")
        # Windows never reach back into the warm-up: its rise is not the leak's.
        lengths = self._candidate_lengths(since_start - cfg.warmup_seconds)
        if not lengths:
            return Verdict(now, "insufficient_data", "no full window since the warm-up yet")
        if self._flat_since(now - lengths[-1]):
            # Every window would find no rise: the common case of a resource count that does
            # not move, answered without the search (and the standing verdict kept as is).
            if self.verdict.state == "steady" and self.verdict.reason == NO_GROWTH:
                return self.verdict
            return Verdict(now, "steady", NO_GROWTH)
        period = self._sawtooth_period(now)
        best: _Window | None = None
        bounded: _Window | None = None
        followed: _Window | None = None
        slowing = 0
        for index, seconds in enumerate(lengths):
            # The last, whole-regime window grows every bucket: keyed by its rank, not length.
            window = self._windows.get(index)
            if window is None or now - window.evaluated_at >= window.seconds / 8:
                window = self._window(seconds, now, period)
                if window is None:
                    continue
                self._windows[index] = window
            if not window.significant:
                continue
            if window.onset_inside:
                break  # longer windows reach into the flat time before the growth began
            if best is not None and abs(window.rate - best.rate) > 0.3 * best.rate:
                break  # a different regime: the rate is fitted only after the change
            if window.decelerating:
                bounded = bounded or window
                slowing += 1
                if slowing >= 2:
                    break  # slowing down now: a longer, older view cannot make it a leak
                continue  # one slowing window alone may be noise: ask the next, longer one
            slowing = 0
            if window.steps:
                bounded = bounded or window
                continue
            if window.load == "follows":
                followed = followed or window
                continue
            best = window
        if best is None:
            # Between a staircase's steps its windows are flat or stalled, and over one its
            # few steps make a ratchet: the steps are judged over the whole regime instead,
            # every STAIR_EVERY_SECONDS (as a window is re-evaluated every eighth of its span).
            last = self._stair_window
            if (
                last is None
                or now - last[0] >= STAIR_EVERY_SECONDS
                or last[1] != self._regime_start
            ):
                self._stair_window = last = (now, self._regime_start, self._staircase(now))
            best = last[2]
        if best is None:
            if bounded is not None:
                why = "rising in a few steps" if bounded.steps else "growth is slowing down"
                return self._verdict(now, "bounded_growth", why, bounded)
            if followed is not None:
                why = "growth follows load: it rises and falls with the request rate"
                return self._verdict(now, "growing", why, followed)
            return Verdict(now, "steady", NO_GROWTH)
        revisited = self._revisited(best, now, period) if self.verdict.state != "leak" else None
        if revisited is not None:
            return self._verdict(now, "growing", revisited, best)
        forecast = self._forecast(best)
        # The shortest growth that can be a leak is measured on the growth, not the window: a
        # window that opens flat holds a rise younger than itself, and a load ramp of a few
        # minutes would otherwise pass as ten minutes of growth. (The longer watches below
        # count the window: they ask how long the level has been followed.)
        watched = min(best.seconds, best.growing_for)
        watched_enough = watched >= cfg.min_leak_seconds / cfg.sensitivity
        if since_start < cfg.young_seconds:
            # A young process fills caches and pools: its growth must last longer to count,
            # unless the limit is near enough that waiting would forfeit the warning.
            young_needed = cfg.young_min_leak_seconds / cfg.sensitivity
            if forecast is not None:
                young_needed = min(young_needed, 0.25 / cfg.sensitivity * forecast[0])
            watched_enough = watched_enough and best.seconds >= young_needed
        if forecast is not None:
            tto = forecast[0]
            if tto > cfg.max_forecast_seconds:
                return self._verdict(now, "growing", "too slow to reach the limit soon", best)
            needed = cfg.watched_share_of_forecast / cfg.sensitivity * tto
            watched_enough = watched_enough and best.seconds >= needed
        if not watched_enough and self.verdict.state != "leak":
            # Once a leak, a leak while the growth goes on: as the onset slides through the
            # windows the longest clean one can shrink for a while, and alerts must not flap.
            return self._verdict(now, "growing", "steady growth, watched too briefly yet", best)
        return self._verdict(now, "leak", _leak_reason(best), best)

    def _staircase(self, now: float) -> _Window | None:
        """The regime's floor rising in evenly spaced steps of like size, still going: a leak
        that is retained a block at a time (a caching allocator reserving a segment for each
        few leaked tensors, a batch job's results kept each run). A ratchet's steps are new
        peaks of a working set, which come ever more rarely (the records of a random series);
        a burst's residue comes when a burst beats every earlier one, as rarely. A window
        holds too few steps to tell them apart (two make a ratchet), so they are found over
        the whole regime since its warm-up, the last ones that agree."""
        assert self._regime_start is not None
        first = bisect_right(self._ends, self._regime_start + self.config.warmup_seconds)
        lows = self._lows[first:]
        least = STAIR_NEAR_LIMIT_STEPS if self.limit is not None else STAIR_MIN_STEPS
        if len(lows) < 2 * least:
            return None
        # Quick answers first (this is asked wherever no window found a leak): the floor must
        # stand near its highest, and the steps must have risen by their least total.
        high = max(lows)
        if lows[-1] < (1 - STAIR_STEP_SHARE) * high or (
            high - min(lows) < least * STAIR_STEP_SHARE * high
        ):
            return None
        ends = self._ends[first:]
        # Steps of a few percent of the level at least: smaller ones are many before an OOM,
        # and the windows judge them (a gauge that wanders by its resolution, a page or an
        # allocator's block, makes one-unit "steps" that its merged history shows as clean).
        # They are found anew once the floor has risen by half a step above its highest when
        # they were last found (a new step), or after STAIR_REFRESH_SECONDS (merged history,
        # the noise); between, a flat stair's steps are what they were, and this is asked
        # wherever no window found a leak. (A floor that fell from its high fails above.)
        cached = self._stair
        if (
            cached is not None
            and cached[0] == self._regime_start
            and now - cached[1] < STAIR_REFRESH_SECONDS
            and lows[-1] < cached[2] + cached[3] / 2
        ):
            jump, steps = cached[3], cached[4]
        else:
            jump = max(STAIR_STEP_NOISE * _minima_noise(lows), STAIR_STEP_SHARE * _median(lows))
            steps = _steps(ends, lows, jump)
            self._stair = (self._regime_start, now, high, jump, steps)
        # The last steps that agree: evenly spaced, of like size, none later than due.
        run = len(steps)
        while run > least - 1:
            chosen = steps[-run:]
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(chosen)]
            sizes = [size for _, size in chosen]
            if (
                max(gaps) <= STAIR_SPACING_SPREAD * min(gaps)
                and gaps[-1] <= 1.5 * gaps[0]
                and max(sizes) <= STAIR_SIZE_SPREAD * min(sizes)
            ):
                break
            run -= 1
        if run < least:
            return None
        spacing = _median(gaps)
        if now - chosen[-1][0] > STAIR_ONGOING * spacing:
            return None  # it stopped
        _, _, tops = self._groups(now - spacing, spacing, 1)
        top = max(tops) if tops else self._highs[-1]
        if run < STAIR_MIN_STEPS and (
            self.limit is None or self.limit - top > STAIR_NEAR_LIMIT_ROOM * _median(sizes)
        ):
            return None  # three steps are few, and the limit is far enough to wait for a fourth
        began = chosen[0][0] - spacing
        # A leak's floor gives nothing back: falls half a step deep, as many as the steps
        # (noise the steps' size, a gauge that wanders by its resolution), are no staircase;
        # a dip or two may come (a cache emptied and filled again).
        since = bisect_right(ends, began)
        falls = sum(a - b >= jump / 2 for a, b in itertools.pairwise(lows[since:]))
        if falls > run // 2 - 1:
            return None
        rate = sum(sizes[1:]) / (chosen[-1][0] - chosen[0][0])
        stair = _Stair(
            run,
            _median(sizes),
            spacing,
            chosen[-1][0],
            statistics.pstdev(sizes),
            statistics.pstdev(gaps),
        )
        return _Window(
            seconds=now - began,
            evaluated_at=now,
            significant=True,
            onset_inside=False,
            decelerating=False,
            steps=False,
            load=None,
            rate=rate,
            rate_se=0.0,  # the forecast's bounds come from the steps (``_Stair.forecast``)
            drift=0.0,
            top=top,
            growing_for=now - began,
            staircase=stair,
        )

    def _flat_since(self, start: float) -> bool:
        """Whether every point that ends after ``start`` (one at least) holds one value."""
        return self._moved_until <= start < self._ends[-1]

    def _forecast(self, window: _Window) -> tuple[float, float, float] | None:
        """The time to the limit at the window's rate, and its bounds. These carry two
        uncertainties of the rate: its estimate's (two standard errors) and its wander (it
        moved by ``drift`` between the window's halves, and may move as much again, either
        way: a load cycle turns, a working set wanders back). Without the wander, a rate that
        changes with the load gets bounds that are precise about the wrong rate. Not carried
        further over the forecast's horizon: the drift often is an onset inside the window,
        a change already over, and a constant leak's bounds then spanned tenfold."""
        if self.limit is None or window.rate <= 0:
            return None
        headroom = max(self.limit - window.top, 0.0)
        if window.staircase is not None:
            return window.staircase.forecast(headroom, window.evaluated_at)
        spread = math.hypot(2 * window.rate_se, window.drift)
        return (
            headroom / window.rate,
            headroom / (window.rate + spread),
            headroom / max(window.rate - spread, 0.1 * window.rate),
        )

    def _verdict(self, now: float, state: State, reason: str, window: _Window) -> Verdict:
        forecast = self._forecast(window)
        return Verdict(
            now,
            state,
            reason,
            rate=window.rate,
            seconds_to_oom=forecast[0] if forecast else None,
            seconds_to_oom_low=forecast[1] if forecast else None,
            seconds_to_oom_high=forecast[2] if forecast else None,
            window_seconds=window.seconds,
        )


STAIRCASE_REASON = (
    "rising in evenly spaced steps of like size that go on: retained a block at a time, not a "
    "working set's new peaks (those come ever more rarely)"
)
STAIRCASE_NEAR_LIMIT_REASON = (
    "rising in evenly spaced steps of like size, three so far, and the next one or two reach "
    "the limit: too few steps to tell a leak from a working set's new peaks, too close to wait"
)
LEAK_REASONS = {
    None: "steady growth of the lower envelope",
    "steady": "steady growth of the lower envelope at a steady request rate",
    "steady_peak": "steady growth of the lower envelope at a steady request rate, the highest "
    "yet (memory sized by the peak load, pools and caches, grows so too)",
    "unclear": "steady growth of the lower envelope (too few requests counted to tell whether "
    "load explains it)",
    "outlasts": "steady growth of the lower envelope that outlasts changes in load "
    "(retained per request at every load level)",
}


class RecentRate:
    """A growth rate usable within seconds, for people watching live: the Theil-Sen slope of
    the last ``seconds`` of samples (every n-th of them: fewer than 80 points). The detector's
    rate needs ten minutes of evidence; this one answers "how fast right now" from the start."""

    def __init__(self, seconds: float = 120.0, min_points: int = 8) -> None:
        self.seconds = seconds
        self.min_points = min_points
        self._points: deque[tuple[float, float]] = deque()

    def update(self, t: float, value: float) -> float | None:
        points = self._points
        points.append((t, value))
        while points and t - points[0][0] > self.seconds:
            points.popleft()
        if len(points) < self.min_points or points[-1][0] - points[0][0] <= 0:
            return None
        step = max(1, len(points) // 40)
        picked = list(points)[::step]
        return _theil_sen([p[0] for p in picked], [p[1] for p in picked])


class DisturbanceDiscount:
    """Keeps diag's own disturbances out of a memory series before a detector sees it.

    A dump pauses the host (queued requests then run at once, each thread's arena keeps what
    it used) and a traced window adds tracemalloc's tables: the process's RSS steps up by tens
    of MB and often stays there. Fed as is, that step reads as growth, and a window opened
    because a verdict turned "growing" could turn it into a leak by itself.

    So samples taken while disturbed are held back (``adjust`` returns None), and the step
    between the level before (the lowest of the last few samples) and the first sample after
    is subtracted from every later sample. The offset shrinks as the process gives that memory
    back: the adjusted series never falls below the level before because of it. A leak that
    goes on during the disturbance loses only what it grew meanwhile; its rate is untouched,
    and forecasts are too (the limit is judged as headroom above the adjusted value).
    """

    def __init__(self, recent: int = 8) -> None:
        self.offset = 0.0
        self._floor: float | None = None  # the adjusted level before the last disturbance
        self._holding = False
        self._recent: deque[float] = deque(maxlen=recent)

    def adjust(self, value: float, disturbed: bool) -> float | None:
        if disturbed:
            if not self._holding:
                self._holding = True
                self._floor = min(self._recent) if self._recent else None
            return None
        floor = self._floor
        if self._holding:
            self._holding = False
            if floor is not None:
                self.offset += max(value - self.offset - floor, 0.0)
        if floor is not None and value - self.offset < floor:
            self.offset = max(value - floor, 0.0)  # given back: less of the step remains
        adjusted = value - self.offset
        self._recent.append(adjusted)
        return adjusted


def _usable_limit(limit: float | None) -> float | None:
    """A limit to forecast against, or None: nan and infinities are none (no limit)."""
    return limit if limit is not None and -MAX_READING < limit < MAX_READING else None


def _unscale(seconds: float | None, scale: float) -> float | None:
    return None if seconds is None else seconds / scale


#: One verdict as episodes are cut from it: its time, its state and its forecast (seconds to
#: OOM, low and high bounds).
VerdictPoint: TypeAlias = tuple[float, str, float | None, float | None, float | None]


def leak_episodes(series: str, verdicts: Iterable[VerdictPoint]) -> list[Alert]:
    """The leak episodes in a series' verdicts, in time order. An episode starts at a ``leak``
    verdict, with that verdict's forecast, and ends at the next verdict that is not ``leak``;
    the last one is still open (``end`` None) if none came."""
    alerts: list[Alert] = []
    open_alert: Alert | None = None
    for t, state, seconds_to_oom, low, high in verdicts:
        if state == "leak" and open_alert is None:
            open_alert = Alert(series, t, None, seconds_to_oom, low, high)
            alerts.append(open_alert)
        elif state != "leak" and open_alert is not None:
            alerts[-1] = dataclasses.replace(open_alert, end=t)
            open_alert = None
    return alerts


def _verdict_changes(
    detector: Detector,
    times: Sequence[float],
    values: Sequence[float],
    requests: Sequence[float] | None = None,
) -> Iterator[VerdictPoint]:
    """The detector's verdicts as it takes the samples in turn, each new one once."""
    last: Verdict | None = None
    update = detector.update
    if requests is None:
        verdicts = (update(t, v) for t, v in zip(times, values, strict=True))
    else:
        verdicts = (update(t, v, None, n) for t, v, n in zip(times, values, requests, strict=True))
    for verdict in verdicts:
        if verdict is last:
            continue  # unchanged between bucket closes: the common, cheap case
        last = verdict
        yield (
            verdict.t,
            verdict.state,
            verdict.seconds_to_oom,
            verdict.seconds_to_oom_low,
            verdict.seconds_to_oom_high,
        )


def replay(
    times: Sequence[float],
    values: Sequence[float],
    limit: float | None = None,
    *,
    series: str = "value",
    config: DetectorConfig | None = None,
    detector: Detector | None = None,
    requests: Sequence[float] | None = None,
) -> list[Alert]:
    """Run one detector over a recorded series; the leak episodes, in order. ``requests``:
    the cumulative request count at each sample, where the process counts them. Pass
    ``detector`` to read its final verdict afterwards."""
    detector = detector or Detector(limit, config)
    return leak_episodes(series, _verdict_changes(detector, times, values, requests))
