"""What users run today: a Prometheus ``predict_linear`` alert rule, evaluated faithfully.

    - alert: MemoryWillHitLimit
      expr: predict_linear(process_resident_memory_bytes[RANGE], HORIZON) > LIMIT
            and on() (time() - process_start_time_seconds > RANGE)     # the uptime guard
      for: 5m

Prometheus evaluates the rule every ``evaluation_interval`` (30 s here) at times aligned to it.
``predict_linear(v[R], h)`` fits a least-squares line to the raw samples in (t - R, t] (left-open
as in Prometheus 3; 2.x also took a sample exactly at t - R) and returns the line's value at
t + h; it needs at least two samples. The uptime guard gives no result until the process has
been up for more than R since its last (re)start. ``for: 5m``: the alert is pending from the first
evaluation where the condition holds and fires at the first evaluation at least 5 min later if
it held at every evaluation in between; it resolves at the first evaluation where it does not
hold (an absent result included). The forecast a user reads off the firing rule is when the
fitted line reaches the limit: (limit - fit(t)) / slope.

Every evaluation costs O(1): prefix sums over the samples. Sums of raw timestamps and byte
counts would cancel catastrophically (x*y ~ 1e20), so each sample is expressed relative to the
start of its R-long time block and to the block's first value; a window spans at most two
blocks, whose sums are shifted to a common origin (t, the window's last block value) exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diag.detect import Alert

EVALUATION_INTERVAL = 30.0
FOR = 300.0


@dataclass(frozen=True)
class Rule:
    range_s: float
    horizon_s: float
    for_s: float = FOR
    interval_s: float = EVALUATION_INTERVAL
    uptime_guard: bool = True

    @property
    def name(self) -> str:
        guard = "" if self.uptime_guard else " (no uptime guard)"
        return f"predict_linear[{self.range_s / 60:.0f}m] {self.horizon_s / 3600:g}h{guard}"

    @property
    def short(self) -> str:
        return f"pl{self.range_s / 60:.0f}m/{self.horizon_s / 3600:g}h"


VARIANTS = tuple(Rule(r * 60.0, h * 3600.0) for r in (30, 60) for h in (1, 4, 12, 24))


@dataclass(frozen=True)
class Fits:
    """The least-squares line over (t - R, t] at every evaluation time t."""

    evals: np.ndarray  # evaluation times
    valid: np.ndarray  # a result exists: >= 2 samples at distinct times (and the uptime guard)
    slope: np.ndarray  # bytes per second
    level: np.ndarray  # the fitted line's value at t


def fit_windows(
    times, values, range_s: float, starts=(0.0,), uptime_guard=True, left_open=True
) -> Fits:
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    first = math.ceil(times[0] / EVALUATION_INTERVAL)
    last = math.floor(times[-1] / EVALUATION_INTERVAL)
    evals = np.arange(first, last + 1) * EVALUATION_INTERVAL

    # Block-local coordinates; the boundaries array is compared against by both the samples
    # and the evaluation times, so the two agree on which block a sample is in.
    boundaries = np.arange(math.floor(times[0] / range_s), math.floor(times[-1] / range_s) + 2)
    boundaries = boundaries * range_s
    block = np.searchsorted(boundaries, times, side="right") - 1
    new_block = np.r_[True, block[1:] != block[:-1]]
    x0 = boundaries[block]
    y0 = values[new_block][np.cumsum(new_block) - 1]
    x = times - x0
    y = values - y0

    def prefix(a: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(a)))

    cx, cy, cxy, cxx = prefix(x), prefix(y), prefix(x * y), prefix(x * x)
    lo = np.searchsorted(times, evals - range_s, side="right" if left_open else "left")
    hi = np.searchsorted(times, evals, side="right")
    eval_block = np.searchsorted(boundaries, evals, side="right") - 1
    mid = np.clip(np.searchsorted(times, boundaries[eval_block], side="left"), lo, hi)
    ref = y0[np.maximum(hi - 1, 0)]  # the window's origin: (t, its last block's first value)

    n_tot = np.zeros(len(evals))
    sx, sy, sxy, sxx = (np.zeros(len(evals)) for _ in range(4))
    for a, b in ((lo, mid), (mid, hi)):  # the older block's part, then the current block's
        n = (b - a).astype(np.float64)
        i = np.minimum(a, len(times) - 1)
        dx = np.where(n > 0, x0[i] - evals, 0.0)
        dy = np.where(n > 0, y0[i] - ref, 0.0)
        px, py = cx[b] - cx[a], cy[b] - cy[a]
        pxy, pxx = cxy[b] - cxy[a], cxx[b] - cxx[a]
        n_tot += n
        sx += px + n * dx
        sy += py + n * dy
        sxy += pxy + dx * py + dy * px + n * dx * dy
        sxx += pxx + 2 * dx * px + n * dx * dx

    with np.errstate(divide="ignore", invalid="ignore"):
        var = sxx - sx * sx / n_tot
        slope = (sxy - sx * sy / n_tot) / var
        level = ref + sy / n_tot - slope * sx / n_tot
    valid = (n_tot >= 2) & (var > 1e-9 * np.maximum(n_tot, 1))
    if uptime_guard:
        starts_arr = np.asarray(starts, dtype=np.float64)
        last_start = starts_arr[np.maximum(np.searchsorted(starts_arr, evals, "right") - 1, 0)]
        valid &= evals - last_start > range_s
    return Fits(evals, valid, np.where(valid, slope, 0.0), np.where(valid, level, 0.0))


def alerts_from_fits(fits: Fits, rule: Rule, limit: float, series: str = "") -> list[Alert]:
    """The rule's firing episodes, with the forecast at the moment each starts firing."""
    cond = fits.valid & (fits.level + fits.slope * rule.horizon_s > limit)
    hold = math.ceil(rule.for_s / rule.interval_s - 1e-9)  # evaluations from pending to firing
    # Runs of consecutive true evaluations: [run_start, run_end).
    edges = np.diff(np.r_[0, cond.astype(np.int8), 0])
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = []
    for s, e in zip(run_starts, run_ends, strict=True):
        fire = s + hold
        if fire >= e:
            continue  # resolved while pending
        slope, level = fits.slope[fire], fits.level[fire]
        forecast = max(0.0, (limit - level) / slope) if slope > 0 else None
        end = float(fits.evals[e]) if e < len(fits.evals) else None
        out.append(Alert(series or rule.name, float(fits.evals[fire]), end, forecast, None, None))
    return out


def evaluate(times, values, limit: float, starts=(0.0,), rules=VARIANTS) -> dict[Rule, list]:
    """Every rule's alerts on one trace; the fits are shared between rules of the same range."""
    fits: dict[tuple[float, bool], Fits] = {}
    out = {}
    for rule in rules:
        key = (rule.range_s, rule.uptime_guard)
        if key not in fits:
            fits[key] = fit_windows(times, values, rule.range_s, starts, rule.uptime_guard)
        out[rule] = alerts_from_fits(fits[key], rule, limit)
    return out


def self_check(verbose: bool = True) -> bool:
    """A clean linear trace, where the analytic answer is known: every variant must first fire
    at the first aligned evaluation t (with t > R, the uptime guard) at which
    v(t + h) > limit, plus ``for``; its forecast must be the exact time left; and after a
    restart nothing may fire until R has passed."""
    v0, rate, limit = 1e9, 2e5, 8e9  # 1 GB, 200 kB/s: crosses the limit at t = 35,000 s
    times = np.arange(0.0, 40_000.0, 1.0)
    values = v0 + rate * times
    crossing = (limit - v0) / rate
    ok = True
    for rule in VARIANTS:
        condition_from = max(crossing - rule.horizon_s, rule.range_s)
        first_true = (math.floor(condition_from / EVALUATION_INTERVAL) + 1) * EVALUATION_INTERVAL
        expected = first_true + rule.for_s
        alerts = evaluate(times, values, limit, rules=(rule,))[rule]
        got = alerts[0].start if alerts else None
        forecast = alerts[0].seconds_to_oom if alerts else None
        good = (
            len(alerts) == 1
            and got == expected
            and forecast is not None
            and abs(forecast - (crossing - expected)) < 1e-3
        )
        ok &= good
        if verbose:
            print(
                f"  {rule.name:<24} fires at {got} s (analytic {expected:.0f} s), forecast "
                f"{forecast if forecast is None else round(forecast, 3)} s "
                f"(analytic {crossing - expected:.0f} s) {'ok' if good else 'WRONG'}"
            )
    # A restart at 20,000 s, then a fast leak: the 1 h variant must stay silent for an hour of
    # uptime (its condition holds from the first evaluation the guard lets through).
    restarted = np.where(times < 20_000, values, 5e8 + 2e6 * (times - 20_000))
    rule = Rule(3600.0, 4 * 3600.0)
    alerts = evaluate(times, restarted, 20e9, starts=(0.0, 20_000.0), rules=(rule,))[rule]
    expected = math.ceil(23_600 / EVALUATION_INTERVAL) * EVALUATION_INTERVAL + FOR
    good = len(alerts) == 1 and alerts[0].start == expected
    ok &= good
    if verbose:
        got = alerts[0].start if alerts else None
        verdict = "ok" if good else "WRONG"
        print(f"  after a restart: fires at {got} s (expected {expected:.0f} s) {verdict}")
    return ok


def promtool_crosscheck(promtool: str = "promtool", verbose: bool = True) -> bool:
    """Ask Prometheus itself: ``promtool test rules`` with the rules above on a noisy 8 h trace
    with a restart and a leak, checking the alert's state at every evaluation against ours.
    promtool 2.x selects [t - R, t], closed, so our fit is told to do the same here."""
    import subprocess
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(7)
    step, n = 15.0, 1920  # 8 h at Prometheus's usual scrape interval
    t = np.arange(n) * step
    restart = 3 * 3600.0
    u = np.where(t < restart, t, t - restart)
    values = 2e9 - 1.5e9 * np.exp(-u / 600) + np.where(t > 5 * 3600, 4e5 * (t - 5 * 3600), 0)
    values += rng.normal(0, 3e7, n)  # noise large enough for the condition to flicker
    limit = 5e9
    rules = VARIANTS[1], VARIANTS[5]  # [30m] 4h and [60m] 4h
    with tempfile.TemporaryDirectory() as tmp:
        rule_lines = ["groups:", "- name: memory", "  rules:"]
        for rule in rules:
            r = f"{rule.range_s:.0f}s"
            rule_lines += [
                f"  - alert: {rule.short.replace('/', '_')}",
                f"    expr: predict_linear(process_resident_memory_bytes[{r}], "
                f"{rule.horizon_s:.0f}) > {limit:.0f} and on() "
                f"(time() - process_start_time_seconds > {rule.range_s:.0f})",
                f"    for: {rule.for_s:.0f}s",
            ]
        Path(tmp, "rules.yml").write_text("\n".join(rule_lines) + "\n")
        start_times = np.where(t < restart, 0.0, restart)
        test = [
            "rule_files: [rules.yml]",
            "evaluation_interval: 30s",
            "tests:",
            "- interval: 15s",
            "  input_series:",
            "  - series: 'process_resident_memory_bytes{job=\"svc\"}'",
            f"    values: '{' '.join(f'{v:.0f}' for v in values)}'",
            "  - series: 'process_start_time_seconds{job=\"svc\"}'",
            f"    values: '{' '.join(f'{v:.0f}' for v in start_times)}'",
            "  alert_rule_test:",
        ]
        firing_count = 0
        for rule in rules:
            fits = fit_windows(t, values, rule.range_s, (0.0, restart), left_open=False)
            firing = np.zeros(len(fits.evals), dtype=bool)
            for alert in alerts_from_fits(fits, rule, limit):
                end = np.inf if alert.end is None else alert.end
                firing |= (fits.evals >= alert.start) & (fits.evals < end)
            firing_count += int(firing.sum())
            for at, on in zip(fits.evals, firing, strict=True):
                expected = "[{exp_labels: {job: svc}}]" if on else "[]"
                test += [
                    f"  - eval_time: {at:.0f}s",
                    f"    alertname: {rule.short.replace('/', '_')}",
                    f"    exp_alerts: {expected}",
                ]
        Path(tmp, "test.yml").write_text("\n".join(test) + "\n")
        done = subprocess.run(
            [promtool, "test", "rules", "test.yml"], cwd=tmp, capture_output=True, text=True
        )
    ok = done.returncode == 0 and firing_count > 0
    if verbose:
        evaluations = sum(1 for line in test if "eval_time" in line)
        print(
            f"  promtool test rules: {evaluations} evaluations ({firing_count} firing) "
            f"{'agree' if ok else 'DISAGREE'}"
        )
        if not ok:
            print((done.stdout + done.stderr)[-3000:])
    return ok


if __name__ == "__main__":
    import shutil
    import sys

    good = self_check()
    if "--promtool" in sys.argv[1:]:
        if shutil.which("promtool"):
            good &= promtool_crosscheck()
        else:
            print("  promtool not found: cross-check skipped")
    raise SystemExit(0 if good else 1)
