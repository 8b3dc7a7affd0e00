"""Score ``diag.detect.replay`` against the predict_linear rule on the same traces, in one run.

Figures, per method (our detector at each sensitivity, and each predict_linear variant):

- false-alert episodes per trace-hour: alert episodes on quiet traces, and those starting before
  the onset on leak traces, over the quiet hours plus the pre-onset hours;
- recall: of the leaks with >= 1 h from onset to OOM, the share with an alert starting in
  [t_leak, t_oom - 10 min] (an episode that started before the onset does not count: it was a
  false alert that happened to stay open);
- lead fraction (t_oom - t_alert) / (t_oom - t_leak) at the first alert starting in
  [t_leak, t_oom], median and P10 over the same leaks, a missed leak counting 0 (leaks of
  20-60 min are reported apart, as "fast");
- forecast error |log2(predicted / actual time to OOM)| at that first alert, median over the
  leaks caught (a missing forecast counts as infinitely wrong), and for our detector how often
  the actual time lies in its [low, high] interval, and that interval's median width (high /
  low: what the coverage costs in precision);
- matched false-alert rate: for every predict_linear variant that catches anything, our best
  lead-fraction median among the sensitivities whose false-alert rate is at most the
  variant's; the target asks to beat every variant (so whichever one is called "best");
- replay throughput: samples / detector wall time on a week of 1 s samples (604,800, the
  issue's yardstick), timed alternately with a plain Python EWMA loop over the same samples
  (the same-run baseline; the ratio is printed), best of three; the same figure over all the
  split's traces is printed too.

Our detector sees each trace as one stream, restarts included (the drop to the floor and the new
warm-up are in the samples; it is not told about them); predict_linear has the
process_start_time_seconds series its uptime guard needs.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from benchmarks.detector import baseline
from benchmarks.detector.intervals import binomial_interval, poisson_interval, quantile_interval
from benchmarks.detector.traces import (
    HOUR,
    MINUTE,
    Trace,
    generate,
    load_real,
    week_at_one_hertz,
)
from diag.detect import Alert, DetectorConfig, replay

OURS = "diag.detect"
SENSITIVITIES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0, 8.0)
QUICK_SENSITIVITIES = (0.5, 1.0, 2.0)
#: The held-out corpora's sweep: the README's trade-off table (their long-interval traces close
#: a bucket on every sample, so a full sweep there would take minutes more). It reaches 4 and
#: 8 as the splits' does: the comparison at matched false-alert rates takes our best lead at
#: or below each predict_linear variant's rate, and the eager variants alert 0.1-0.6 times an
#: hour there, where sensitivity 2 stops near 0.02.
HELD_OUT_SENSITIVITIES = (0.25, 0.5, 0.7, 1.0, 2.0, 4.0, 8.0)
RECALL_MIN_ONSET_TO_OOM = HOUR
RECALL_MARGIN = 10 * MINUTE

TARGET_FA_RATE = 0.01
TARGET_RECALL = 1.0
TARGET_LEAD_MEDIAN = 0.85
TARGET_LEAD_P10 = 0.65
TARGET_FORECAST_ERROR = 0.25
TARGET_THROUGHPUT = 500_000.0
TARGET_CHANGES = 0.0


# --- judging one trace, then many ----------------------------------------------------------


@dataclass
class Outcome:
    false_episodes: int
    judged_hours: float
    caught: bool | None = None  # leaks only: an alert in [t_leak, t_oom - 10 min]
    lead: float | None = None  # leaks only; 0 when missed
    t_alert: float | None = None
    predicted: float | None = None
    actual: float | None = None
    forecast_error: float | None = None  # None when missed
    covered: bool | None = None  # actual within [low, high], when the alert gave both
    width: float | None = None  # high / low: what the coverage cost in precision
    changes: int | None = None  # caught leaks: verdict changes after the first call, to the OOM


def judge(trace: Trace, alerts: list[Alert]) -> Outcome:
    false = [a for a in alerts if trace.t_leak is None or a.start < trace.t_leak]
    out = Outcome(len(false), trace.judged_hours)
    if trace.kind != "leak":
        return out
    t_leak, t_oom = trace.t_leak, trace.t_oom
    assert t_leak is not None and t_oom is not None
    first = next((a for a in alerts if t_leak <= a.start <= t_oom), None)
    out.caught = first is not None and first.start <= t_oom - RECALL_MARGIN
    if first is None:
        out.lead = 0.0
        return out
    out.t_alert = first.start
    out.changes = verdict_changes_after(first, alerts, t_oom)
    out.lead = (t_oom - first.start) / (t_oom - t_leak) if t_oom > t_leak else 0.0
    out.actual = t_oom - first.start
    out.predicted = first.seconds_to_oom
    if out.predicted is not None and out.predicted > 0 and out.actual > 0:
        out.forecast_error = abs(math.log2(out.predicted / out.actual))
    else:
        out.forecast_error = math.inf
    low, high = first.seconds_to_oom_low, first.seconds_to_oom_high
    if low is not None and high is not None:
        out.covered = low <= out.actual <= high
        out.width = high / low if low > 0 else math.inf
    return out


def verdict_changes_after(first: Alert, alerts: list[Alert], t_oom: float) -> int:
    """How often the verdict left ``leak`` or came back to it between the first call and the
    OOM: each episode that ends before the OOM is one change, each later one starting before
    it another. A leak called once and held to the end scores 0."""
    later = [a for a in alerts if first.start <= a.start <= t_oom]
    changes = 0
    for i, alert in enumerate(later):
        if i > 0:
            changes += 1  # came back
        if alert.end is not None and alert.end < t_oom:
            changes += 1  # left
    return changes


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


@dataclass
class Figures:
    false_episodes: int = 0
    judged_hours: float = 0.0
    leaks: int = 0  # with >= 1 h from onset to OOM
    caught: int = 0
    leads: list[float] = field(default_factory=list)
    fast_leads: list[float] = field(default_factory=list)
    forecast_errors: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    changes: list[int] = field(default_factory=list)  # per caught leak, any time to OOM

    @property
    def changes_per_leak(self) -> float:
        return sum(self.changes) / len(self.changes) if self.changes else math.nan

    @property
    def fa_rate(self) -> float:
        return self.false_episodes / self.judged_hours if self.judged_hours else math.nan

    @property
    def fa_rate_interval(self) -> tuple[float, float]:
        """95 %, exact for a Poisson count: the least uncertainty the episodes leave."""
        if not self.judged_hours:
            return math.nan, math.nan
        low, high = poisson_interval(self.false_episodes)
        return low / self.judged_hours, high / self.judged_hours

    @property
    def recall(self) -> float:
        return self.caught / self.leaks if self.leaks else math.nan

    @property
    def recall_interval(self) -> tuple[float, float]:
        return binomial_interval(self.caught, self.leaks)

    @property
    def lead_median(self) -> float:
        return _pct(self.leads, 50)

    @property
    def lead_p10(self) -> float:
        return _pct(self.leads, 10)

    @property
    def lead_p10_interval(self) -> tuple[float | None, float | None]:
        return quantile_interval(self.leads, 0.10)

    @property
    def forecast_median(self) -> float:
        return _pct(self.forecast_errors, 50)

    @property
    def coverage(self) -> float:
        return sum(self.covered) / len(self.covered) if self.covered else math.nan

    @property
    def width_median(self) -> float:
        return _pct(self.widths, 50)

    def summary(self) -> dict:
        return {
            "false_episodes": self.false_episodes,
            "judged_hours": round(self.judged_hours, 1),
            "fa_per_hour": self.fa_rate,
            "fa_per_hour_95": list(self.fa_rate_interval),
            "leaks": self.leaks,
            "recall": self.recall,
            "recall_95": list(self.recall_interval),
            "lead_median": self.lead_median,
            "lead_p10": self.lead_p10,
            "lead_p10_95": list(self.lead_p10_interval),
            "fast_leaks": len(self.fast_leads),
            "fast_lead_median": _pct(self.fast_leads, 50),
            "forecast_error_median": self.forecast_median,
            "interval_coverage": self.coverage,
            "interval_width_median": self.width_median,
            "verdict_changes_per_caught_leak": self.changes_per_leak,
        }


def aggregate(traces: list[Trace], outcomes: list[Outcome]) -> Figures:
    f = Figures()
    for trace, o in zip(traces, outcomes, strict=True):
        f.false_episodes += o.false_episodes
        f.judged_hours += o.judged_hours
        if trace.kind != "leak":
            continue
        assert o.lead is not None
        if o.changes is not None:
            f.changes.append(o.changes)
        if (trace.onset_to_oom or 0.0) < RECALL_MIN_ONSET_TO_OOM:
            f.fast_leads.append(o.lead)
            continue
        f.leaks += 1
        f.caught += bool(o.caught)
        f.leads.append(o.lead)
        if o.forecast_error is not None:
            f.forecast_errors.append(o.forecast_error)
        if o.covered is not None:
            f.covered.append(o.covered)
        if o.width is not None:
            f.widths.append(o.width)
    return f


# --- running the methods -------------------------------------------------------------------


def _ewma_loop(times: list[float], values: list[float]) -> float:
    """The throughput yardstick: the cheapest per-sample Python a detector could be."""
    level, last = values[0], times[0]
    for t, v in zip(times, values, strict=True):  # reads both series, as a detector must
        level += 0.05 * (v - level)
        last = t
    return level + 0.0 * last


def _requests(trace: Trace) -> list[float] | None:
    """The request covariate, where the trace has one: the agent feeds its detectors the
    process's request counter, so the replay does too."""
    return None if trace.requests is None else trace.requests.tolist()


#: How each trace is judged: as ``diag analyze`` judges an export (False: a fall that stays
#: may be a restart), or as the agent and ``diag watch`` judge one process's life (True:
#: ``--one-process``). Set once by ``main``; forked sweep workers inherit it.
JUDGED_AS_ONE_PROCESS = [False]


def _config(sensitivity: float) -> DetectorConfig:
    return DetectorConfig(sensitivity=sensitivity, one_process=JUDGED_AS_ONE_PROCESS[0])


def run_detector(traces: list[Trace], sensitivity: float) -> tuple[list[list[Alert]], dict]:
    """Our detector over every trace (as Python lists, how the agent holds samples), each run
    interleaved with the EWMA loop so that both see the same machine state."""
    config = _config(sensitivity)
    alerts, detector_s, ewma_s, samples = [], 0.0, 0.0, 0
    for trace in traces:
        times, values = trace.times.tolist(), trace.values.tolist()
        t0 = time.perf_counter()
        _ewma_loop(times, values)
        t1 = time.perf_counter()
        alerts.append(
            replay(
                times,
                values,
                trace.limit,
                series=trace.name,
                config=config,
                requests=_requests(trace),
            )
        )
        t2 = time.perf_counter()
        ewma_s, detector_s, samples = ewma_s + t1 - t0, detector_s + t2 - t1, samples + len(times)
    speed = {
        "samples": samples,
        "detector_s": detector_s,
        "samples_per_s": samples / detector_s if detector_s else math.inf,
        "ewma_samples_per_s": samples / ewma_s if ewma_s else math.inf,
        "cost_in_ewma_loops": detector_s / ewma_s if ewma_s else math.nan,
    }
    return alerts, speed


def measure_throughput(repeats: int = 3) -> dict:
    """Replay of a week of 1 s samples, alternating with the EWMA loop; best of ``repeats``."""
    trace = week_at_one_hertz()
    times, values = trace.times.tolist(), trace.values.tolist()
    detector_s = ewma_s = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ewma_loop(times, values)
        t1 = time.perf_counter()
        replay(times, values, trace.limit, series=trace.name)
        t2 = time.perf_counter()
        ewma_s, detector_s = min(ewma_s, t1 - t0), min(detector_s, t2 - t1)
    return {
        "samples": len(times),
        "detector_s": detector_s,
        "samples_per_s": len(times) / detector_s,
        "ewma_samples_per_s": len(times) / ewma_s,
        "cost_in_ewma_loops": detector_s / ewma_s,
    }


_SHARED: list[Trace] = []  # inherited by forked sweep workers instead of pickled


def _replay_some(job: tuple[float, list[int]]) -> list[tuple[int, list[Alert]]]:
    sensitivity, indices = job
    config = _config(sensitivity)
    out = []
    for i in indices:
        trace = _SHARED[i]
        alerts = replay(
            trace.times.tolist(),
            trace.values.tolist(),
            trace.limit,
            config=config,
            requests=_requests(trace),
        )
        out.append((i, alerts))
    return out


def sweep(traces: list[Trace], sensitivities, workers: int) -> dict[float, list[list[Alert]]]:
    """The detector at several sensitivities, in parallel (fork: the traces are not copied)."""
    global _SHARED
    _SHARED = traces
    shards = max(1, 4 * workers)
    order = sorted(range(len(traces)), key=lambda i: -len(traces[i].times))
    jobs = [(s, order[k::shards]) for s in sensitivities for k in range(shards)]
    out: dict[float, list] = {s: [None] * len(traces) for s in sensitivities}
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_replay_some, jobs, chunksize=1)
    else:
        results = [_replay_some(job) for job in jobs]
    for (s, _), done in zip(jobs, results, strict=True):
        for i, alerts in done:
            out[s][i] = alerts
    return out


def run_baselines(traces: list[Trace]) -> tuple[dict[str, list[list[Alert]]], float]:
    out: dict[str, list] = {rule.short: [] for rule in baseline.VARIANTS}
    t0 = time.perf_counter()
    for trace in traces:
        per_rule = baseline.evaluate(trace.times, trace.values, trace.limit, trace.starts)
        for rule, alerts in per_rule.items():
            out[rule.short].append(alerts)
    return out, time.perf_counter() - t0


# --- printing ------------------------------------------------------------------------------


def _f(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _speed(speed: dict) -> str:
    return (
        f"{speed['samples_per_s'] / 1e3:,.0f}k samples/s ({speed['detector_s']:.2f} s for "
        f"{speed['samples']:,}); a plain EWMA loop {speed['ewma_samples_per_s'] / 1e6:.1f} M/s, "
        f"so the detector costs {speed['cost_in_ewma_loops']:.0f} EWMA loops"
    )


def _pct_s(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def _at_most(interval: tuple[float, float], target: float, digits: int) -> str:
    """A figure that must be at most ``target``: its interval, and what that shows."""
    low, high = interval
    if math.isnan(low):
        return ""
    shows = "met" if high <= target else "missed" if low > target else "cannot tell"
    return f"95 %: {_f(low, digits)}-{_f(high, digits)}, {shows}"


def _at_least(interval: tuple[float | None, float | None], target: float, digits: int) -> str:
    """A figure that must be at least ``target``; an open side (None) is too few values."""
    low, high = interval
    if low is None and high is None:
        return ""
    shows = (
        "met"
        if low is not None and low >= target
        else "missed"
        if high is not None and high < target
        else "cannot tell"
    )
    ends = ["?" if end is None else _f(end, digits) for end in (low, high)]
    return f"95 %: {ends[0]}-{ends[1]}, {shows}"


def print_methods(rows: list[tuple[str, Figures]]) -> None:
    print(
        f"  {'method':<22}{'FA/h':>8}{'FA eps':>8}{'recall':>8}{'lead med':>10}{'lead P10':>10}"
        f"{'fc err':>8}{'fast lead':>11}{'interval':>10}{'width':>7}{'flaps':>7}"
    )
    for name, f in rows:
        print(
            f"  {name:<22}{_f(f.fa_rate, 4):>8}{f.false_episodes:>8}{_pct_s(f.recall):>8}"
            f"{_f(f.lead_median, 2):>10}{_f(f.lead_p10, 2):>10}{_f(f.forecast_median, 2):>8}"
            f"{_f(_pct(f.fast_leads, 50), 2):>11}{_pct_s(f.coverage):>10}"
            f"{_f(f.width_median, 1):>7}"
            f"{_f(f.changes_per_leak, 2):>7}"
        )


def _group(trace: Trace) -> str:
    return trace.family + (" (ood)" if trace.ood else "")


def _label(method: str) -> str:
    return "ours" if method == OURS else method


def print_families(traces: list[Trace], outcomes: dict[str, list[Outcome]]) -> None:
    """Per family: false-alert rate (episodes) on quiet traces and pre-onset leak segments;
    lead fraction median and recall on leaks with >= 1 h to OOM."""
    methods = list(outcomes)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, trace in enumerate(traces):
        groups[_group(trace)].append(i)
    header = "".join(f"{_label(m):>12}" for m in methods)
    print("  false-alert episodes per trace-hour (episodes); leak families: before the onset")
    print(f"  {'family':<22}{'n':>4}{'hours':>7}{header}")
    for g, idx in groups.items():
        hours = sum(traces[i].judged_hours for i in idx)
        cells = ""
        for m in methods:
            eps = sum(outcomes[m][i].false_episodes for i in idx)
            cells += f"{f'{eps / hours:.3f} ({eps})' if hours else f'- ({eps})':>12}"
        print(f"  {g:<22}{len(idx):>4}{hours:>7.0f}{cells}")
    print("  lead fraction median / recall, leaks with >= 1 h to OOM (the fast ones apart)")
    print(f"  {'family':<22}{'n':>4}{'fast':>7}{header}")
    for g, idx in groups.items():
        if traces[idx[0]].kind != "leak":
            continue
        slow = [i for i in idx if (traces[i].onset_to_oom or 0) >= RECALL_MIN_ONSET_TO_OOM]
        cells = ""
        for m in methods:
            leads = [outcomes[m][i].lead or 0.0 for i in slow]
            caught = sum(bool(outcomes[m][i].caught) for i in slow)
            cell = f"{_f(_pct(leads, 50), 2)} {100 * caught / max(1, len(slow)):.0f}%"
            cells += f"{cell:>12}"
        print(f"  {g:<22}{len(slow):>4}{len(idx) - len(slow):>7}{cells}")


# --- one split -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: str
    ok: bool
    #: The figure's 95 % interval, and whether it shows the target met or missed, or cannot
    #: tell (the target lies inside it: the corpus is too small to say); "" where none.
    interval: str = ""


def score_split(
    split: str, seed: int, scale: float, sensitivities, workers: int
) -> tuple[dict, list[Target]]:
    traces = generate(seed, split, scale)
    report, targets = score_corpus(
        f"split {split} (seed {seed}, scale {scale:g})", traces, sensitivities, workers
    )
    return report | {"split": split, "seed": seed, "scale": scale}, targets


def score_corpus(
    title: str, traces: list[Trace], sensitivities, workers: int
) -> tuple[dict, list[Target]]:
    """Every figure on one corpus: our detector at each sensitivity and every predict_linear
    variant on the same traces, printed, with the targets at the default."""
    n_quiet = sum(t.kind == "quiet" for t in traces)
    samples = sum(len(t.times) for t in traces)
    hours = sum(t.judged_hours for t in traces)
    n_slow = sum((t.onset_to_oom or 0) >= RECALL_MIN_ONSET_TO_OOM for t in traces)
    print(
        f"\n=== {title}: {len(traces)} traces "
        f"({n_quiet} quiet, {len(traces) - n_quiet} leak; {n_slow} leaks with >= 1 h to OOM), "
        f"{samples / 1e6:.2f} M samples, {hours:,.0f} judged trace-hours"
    )

    alerts: dict[str, list[list[Alert]]] = {}
    alerts[OURS], speed = run_detector(traces, 1.0)
    baseline_alerts, baseline_s = run_baselines(traces)
    alerts.update(baseline_alerts)
    outcomes = {
        m: [judge(t, a) for t, a in zip(traces, al, strict=True)] for m, al in alerts.items()
    }
    figures = {m: aggregate(traces, o) for m, o in outcomes.items()}
    print(
        f"  replay over these traces: {_speed(speed)}; predict_linear (numpy, all "
        f"{len(baseline.VARIANTS)} variants) {baseline_s:.1f} s"
    )
    print_methods([(f"{OURS} (s=1)", figures[OURS])] + [(m, figures[m]) for m in baseline_alerts])
    print_families(traces, outcomes)

    # The sensitivity sweep, and each variant's lead at its own false-alert rate.
    started = time.perf_counter()
    others = [s for s in sensitivities if s != 1.0]
    swept = {1.0: figures[OURS]}
    for s, per_trace in sweep(traces, others, workers).items():
        swept[s] = aggregate(traces, [judge(t, a) for t, a in zip(traces, per_trace, strict=True)])
    swept = dict(sorted(swept.items()))
    print(f"  sensitivity sweep ({time.perf_counter() - started:.0f} s, {workers} workers):")
    print_methods([(f"{OURS} (s={s:g})", f) for s, f in swept.items()])
    print("  at matched false-alert rate (ours: the best lead among sensitivities with FA <= it):")
    matched, beaten = [], True
    for m in baseline_alerts:
        v = figures[m]
        if not v.lead_median > 0:
            print(f"  {m:<14} FA/h {_f(v.fa_rate, 4)}  lead 0: catches nothing, nothing to beat")
            continue
        eligible = [(f.lead_median, s) for s, f in swept.items() if f.fa_rate <= v.fa_rate]
        lead, s = max(eligible) if eligible else (math.nan, None)
        ours = swept[s] if s is not None else None
        better = ours is not None and lead > v.lead_median
        beaten &= better
        print(
            f"  {m:<14} FA/h {_f(v.fa_rate, 4)} lead {_f(v.lead_median, 2)} fc err "
            f"{_f(v.forecast_median, 2)} | ours "
            + (
                f"s={s:g}: FA/h {_f(ours.fa_rate, 4)} lead {_f(lead, 2)} fc err "
                f"{_f(ours.forecast_median, 2)}"
                if ours is not None
                else "no sensitivity reaches that FA rate"
            )
            + f"  {'better' if better else 'NOT better'}"
        )
        matched.append(
            {
                "variant": m,
                "variant_fa": v.fa_rate,
                "variant_lead": v.lead_median,
                "ours_sensitivity": s,
                "ours_lead": lead,
                "better": better,
            }
        )

    ours = figures[OURS]
    targets = [
        Target(
            f"false-alert episodes per trace-hour <= {TARGET_FA_RATE}",
            _f(ours.fa_rate, 4),
            ours.fa_rate <= TARGET_FA_RATE,
            _at_most(ours.fa_rate_interval, TARGET_FA_RATE, 4),
        ),
        Target(
            "recall (>= 1 h to OOM; alert >= 10 min before it) = 100%",
            _pct_s(ours.recall),
            ours.recall >= TARGET_RECALL,
            # A sample never shows a recall of 100 %: how low it may be is the figure.
            "95 %: {}-{}".format(*map(_pct_s, ours.recall_interval)),
        ),
        Target(
            f"lead fraction median >= {TARGET_LEAD_MEDIAN}",
            _f(ours.lead_median, 2),
            ours.lead_median >= TARGET_LEAD_MEDIAN,
        ),
        Target(
            f"lead fraction P10 >= {TARGET_LEAD_P10}",
            _f(ours.lead_p10, 2),
            ours.lead_p10 >= TARGET_LEAD_P10,
            _at_least(ours.lead_p10_interval, TARGET_LEAD_P10, 2),
        ),
        Target(
            f"forecast error median <= {TARGET_FORECAST_ERROR}",
            _f(ours.forecast_median, 2),
            ours.forecast_median <= TARGET_FORECAST_ERROR,
        ),
        Target(
            "more lead than every predict_linear variant at its FA rate",
            f"{sum(r['better'] for r in matched)}/{len(matched)}",
            beaten,
        ),
        Target(
            "verdict changes per caught leak after the first call = 0",
            _f(ours.changes_per_leak, 2),
            not ours.changes_per_leak > TARGET_CHANGES,
        ),
    ]
    report = {
        "title": title,
        "traces": len(traces),
        "samples": samples,
        "speed": speed,
        "methods": {m: f.summary() for m, f in figures.items()},
        "sweep": {str(s): f.summary() for s, f in swept.items()},
        "matched": matched,
        "families": {
            m: {
                g: aggregate(
                    [t for t in traces if _group(t) == g],
                    [o for t, o in zip(traces, outs, strict=True) if _group(t) == g],
                ).summary()
                for g in dict.fromkeys(_group(t) for t in traces)
            }
            for m, outs in outcomes.items()
        },
    }
    return report, targets


# --- corpora never tuned on --------------------------------------------------------------


def held_out_corpora(quick: bool) -> list[tuple[str, str, Callable[[], list[Trace]]]]:
    """(label, title, loader) of the test-only corpora: a second synthetic generator written
    independently of ``traces`` (another hand, other noise and shapes), and the library of
    real services recorded on this machine under real load (hours each, requests counted)."""

    def alt() -> list[Trace]:
        from benchmarks.detector import traces_alt

        return traces_alt.generate(seed=0, quick=quick)

    def library() -> list[Trace]:
        from benchmarks.detector import record_library

        return record_library.load_library()

    return [
        ("alt", "independent generator (benchmarks/detector/traces_alt.py)", alt),
        ("recorded", "real services recorded here (tests/data/traces/real)", library),
    ]


# --- real traces ---------------------------------------------------------------------------


def score_real() -> tuple[list[dict], list[Target]]:
    traces = load_real()
    if not traces:
        print("\n=== real traces: none under tests/data/traces")
        return [], []
    print("\n=== real traces (minutes long, so per-hour figures mean nothing: per-trace outcomes)")
    ours_alerts, _ = run_detector(traces, 1.0)
    base_alerts, _ = run_baselines(traces)
    rows, ok = [], True
    for i, trace in enumerate(traces):
        when = (
            f"t_leak {trace.t_leak:.0f} s, t_oom {trace.t_oom:.0f} s"
            if trace.kind == "leak"
            else "no leak"
        )
        print(
            f"  {trace.name} [{trace.family}, {trace.kind}]: {len(trace.times)} samples over "
            f"{trace.hours * 60:.1f} min, limit {trace.limit / 2**20:.0f} MiB, {when}"
        )
        row = {"name": trace.name, "family": trace.family, "kind": trace.kind}
        for method, alerts in [(OURS, ours_alerts[i])] + [
            (m, a[i]) for m, a in base_alerts.items()
        ]:
            o = judge(trace, alerts)
            row[method] = asdict(o) | {"alerts": len(alerts)}
            if trace.kind == "leak":
                caught = o.t_alert is not None
                text = (
                    f"alert at {o.t_alert:.0f} s, lead fraction {o.lead:.2f}, forecast "
                    f"{_f(o.predicted, 0)} s vs actual {o.actual:.0f} s"
                    if caught
                    else "missed"
                )
                # Like the recall figure: a leak with under an hour from onset to OOM is shown
                # but not required (the detector watches growth for 10-30 min before it calls
                # a leak, and a young process has a 15 min warm-up grace).
                fast = (trace.t_oom - trace.t_leak) < HOUR
                good = (caught or fast) and o.false_episodes == 0
                if fast:
                    text += " (under an hour from onset to OOM: not required)"
            else:
                text = "silent" if not alerts else f"{len(alerts)} false alert episode(s)"
                good = not alerts
            if method == OURS:
                ok &= good
            if method == OURS or alerts:
                print(f"    {method:<14} {text}; false episodes {o.false_episodes}")
        if not any(base_alerts[m][i] for m in base_alerts):
            shortest = min(r.range_s for r in baseline.VARIANTS) / 60
            print(f"    predict_linear: silent in every variant (uptime guard: {shortest:.0f} min)")
        rows.append(row)
    target = "real traces: quiet ones silent, leaks (>= 1 h to OOM) caught before OOM"
    return rows, [Target(target, "", ok)]


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", choices=("test", "tune", "both"), default="test")
    parser.add_argument(
        "--quick", action="store_true", help="a quarter of the traces, 3 sensitivities"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, help="traces per family relative to the default")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument(
        "--sensitivities",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        help=f"the sweep, comma-separated (default {','.join(map(str, SENSITIVITIES))}; "
        f"--quick: {','.join(map(str, QUICK_SENSITIVITIES))}); 1 is always run",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="judge each trace as the agent and diag watch judge one process's life (no fall "
        "is a restart), not as diag analyze judges an export",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = parser.parse_args(argv)
    JUDGED_AS_ONE_PROCESS[0] = args.one_process
    if args.one_process:
        print("every trace judged as one process's life (the agent's and diag watch's way)")
    scale = args.scale or (0.25 if args.quick else 1.0)
    sensitivities = args.sensitivities or (QUICK_SENSITIVITIES if args.quick else SENSITIVITIES)
    started = time.perf_counter()

    print("predict_linear self-check on a clean linear trace (analytic answers):")
    checked = baseline.self_check()
    report: dict = {"baseline_self_check": checked, "splits": {}}
    results: list[tuple[str, list[Target]]] = [
        ("baseline", [Target("predict_linear self-check matches the analytic answer", "", checked)])
    ]
    for split in ("tune", "test") if args.split == "both" else (args.split,):
        split_report, targets = score_split(split, args.seed, scale, sensitivities, args.workers)
        report["splits"][split] = split_report
        results.append((split, targets))
    # The two corpora nothing was ever tuned on, every run.
    report["corpora"] = {}
    for where, title, load in held_out_corpora(args.quick):
        traces = load()
        if not traces:
            print(f"\n=== {title}: no traces")
            results.append((where, [Target(f"{title}: traces present", "none", False)]))
            continue
        sweep_here = QUICK_SENSITIVITIES if args.quick else HELD_OUT_SENSITIVITIES
        report["corpora"][where], targets = score_corpus(title, traces, sweep_here, args.workers)
        results.append((where, targets))
    report["real"], real_targets = score_real()
    results.append(("real", real_targets))

    speed = measure_throughput(1 if args.quick else 3)
    report["throughput"] = speed
    print(f"\n=== throughput: a week of 1 s samples: {_speed(speed)}")
    rate = speed["samples_per_s"]
    target = Target(
        f"replay >= {TARGET_THROUGHPUT / 1e3:.0f}k samples/s (a week of 1 s samples)",
        f"{rate / 1e3:,.0f}k",
        rate >= TARGET_THROUGHPUT,
    )
    results.append(("speed", [target]))

    print(f"\n=== targets{' (quick run: few traces)' if args.quick else ''}")
    ok = True
    for where, targets in results:
        for target in targets:
            ok &= target.ok
            verdict = "PASS" if target.ok else "FAIL"
            interval = f"  ({target.interval})" if target.interval else ""
            print(f"  [{where:<8}] {target.name:<62}{target.value:>10}  {verdict}{interval}")
    print(f"  ({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_plain(report), f, indent=1)
    return 0 if ok else 1


def _plain(value):
    """JSON-safe: NaN and infinity as null, numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
