"""The tune split re-expressed the way another generator or a real service might show it.

``python -m benchmarks.detector.perturb [--corpus tune|tune_b|real_tune] [--quick]
[--only NAME,...] [--json FILE]``

``--corpus tune_b`` takes the second tuning corpus instead (``traces_tune_b.py``, written by
another hand from the issue's workload list and never shown the detector): the tuning data
that is not the first generator's habits. ``--corpus real_tune`` takes the recorded tuning
library (``record_tune.py``: fourteen real services, none of them the test library's, in
``tests/data/traces/real_tune``): real allocators and runtimes, which no generator draws.
None of them touches the held-out corpora.

Each perturbation takes a tune-split trace (``traces.generate(split="tune")``) and changes how
it is *measured*, never what the process does: the ground truth (leak onset, OOM time, limit,
restarts) is kept, and a leak trace still ends at its OOM sample, which stays at or above the
limit. What the detector was tuned on (1-15 s sampling, Gaussian noise of 1-6 MiB, plus some
correlated churn, few gaps, 2 MiB quantisation on allocator series only) is what these vary:

- ``dt-5s`` ... ``dt-60s``: sampled every 5-60 s (a scrape interval), each sample time jittered
  by up to a third of the interval (the value is the trace's sample nearest the scrape time);
  traces already sampled that coarsely keep their own samples;
- ``gaps``: 3-8 extra gaps of 3-20 minutes (a scraper or agent down), none in a leak's last
  20 minutes;
- ``t-noise``: Student-t noise (3 degrees of freedom) of twice the trace's own noise scale
  added: most samples near the line, a few far off in either direction;
- ``spikes``: about one sample in 200 jumps up by 2-20 % of the level for that sample only
  (a transient allocation: a big request, a temporary copy);
- ``dips``: as many samples fall by 1-10 % for that sample only (a gauge read while the
  process briefly holds less: CUDA memory allocated between batches, a freed arena);
- ``noise-x2.5``: white noise added so that the noise is 2.5 times the trace's own;
- ``mult-noise``: level-proportional noise, 0.3 % of the value (allocator churn that scales
  with the heap), so a leak's noise grows as it does;
- ``quant-2MiB``, ``quant-20MiB``: values rounded up to allocator pages / segments;
- ``mixed``: a per-trace random draw of one interval, gaps, one noise model and one
  quantisation, like a generator written by another hand.

The trace's own noise scale is estimated robustly from its first differences and kept within
1-6 MiB (noiseless allocator series get some; an aliased sawtooth is not noise). Every
perturbation is seeded per trace.
The figures are score.py's own (``judge``, ``aggregate``, ``print_methods``): false-alert
episodes per trace-hour, recall, lead fraction median and P10, forecast |log2| median,
verdict changes per caught leak; one row per perturbation, the unperturbed split first.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from benchmarks.detector import traces_tune_b
from benchmarks.detector.record_tune import load_tune_library
from benchmarks.detector.score import (
    Figures,
    Outcome,
    _plain,
    aggregate,
    judge,
    print_methods,
    run_detector,
)
from benchmarks.detector.traces import MINUTE, MiB, Trace, generate

Perturb = Callable[[Trace, np.random.Generator], Trace]


# --- helpers -------------------------------------------------------------------------------


def noise_scale(trace: Trace) -> float:
    """A robust standard deviation of the trace's sample-to-sample noise, within 1-6 MiB (the
    tune split's measurement noise): a sawtooth sampled coarsely moves by tens of MiB between
    samples, and that is the workload, not the measurement."""
    d = np.diff(trace.values)
    if len(d) < 2:
        return MiB
    mad = float(np.median(np.abs(d - np.median(d))))
    return min(max(mad / 0.6745 / math.sqrt(2.0), MiB), 6 * MiB)


def _with_values(trace: Trace, values: np.ndarray) -> Trace:
    """``trace`` with new values; a leak's last sample (its OOM) stays at or above the limit."""
    values = np.asarray(values, dtype=float)
    if trace.kind == "leak" and len(values):
        values[-1] = max(values[-1], trace.limit)
    return replace(trace, values=values)


def _select(trace: Trace, keep: np.ndarray) -> Trace:
    """The samples at indices ``keep`` (sorted, unique); a leak's OOM sample is always kept."""
    keep = np.unique(keep)
    if trace.kind == "leak" and (len(keep) == 0 or keep[-1] != len(trace.times) - 1):
        keep = np.append(keep, len(trace.times) - 1)
    requests = None if trace.requests is None else trace.requests[keep]
    return replace(trace, times=trace.times[keep], values=trace.values[keep], requests=requests)


# --- the perturbations ---------------------------------------------------------------------


def resample(interval: float, jitter: float = 1 / 3) -> Perturb:
    """Scraped every ``interval`` seconds, each scrape time off by up to ``jitter`` of it: the
    trace's sample nearest each scrape time. A trace sampled as coarsely already is kept."""

    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        t = trace.times
        if len(t) < 3 or float(np.median(np.diff(t))) >= interval:
            return trace
        grid = np.arange(t[0], t[-1], interval)
        grid = grid + rng.uniform(-jitter, jitter, len(grid)) * interval
        i = np.clip(np.searchsorted(t, grid), 1, len(t) - 1)
        nearest = np.where(grid - t[i - 1] < t[i] - grid, i - 1, i)
        # Scrapes that fall in a gap of the trace find no sample there: none is taken.
        ok = np.abs(t[nearest] - grid) <= interval
        return _select(trace, nearest[ok])

    return perturb


def gaps(count: tuple[int, int] = (3, 8), minutes: tuple[float, float] = (3.0, 20.0)) -> Perturb:
    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        t = trace.times
        t0, t1 = float(t[0]), float(t[-1])
        end = t1 - 20 * MINUTE if trace.kind == "leak" else t1
        keep = np.ones(len(t), dtype=bool)
        for _ in range(int(rng.integers(count[0], count[1] + 1))):
            length = rng.uniform(*minutes) * MINUTE
            if end - length <= t0 + 0.05 * (t1 - t0):
                continue
            at = rng.uniform(t0 + 0.05 * (t1 - t0), end - length)
            keep &= (t < at) | (t >= at + length)
        return _select(trace, np.flatnonzero(keep))

    return perturb


def student_t(df: float = 3.0, scale: float = 2.0) -> Perturb:
    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        s = scale * noise_scale(trace)
        return _with_values(trace, trace.values + s * rng.standard_t(df, len(trace.values)))

    return perturb


def spikes(
    per_sample: float = 1 / 200, height: tuple[float, float] = (0.02, 0.2), sign: float = 1.0
) -> Perturb:
    """One-sample excursions of a share of the median level: up (a big request's buffers,
    freed by the next scrape) or, with ``sign`` -1, down (a gauge read between requests, such
    as CUDA memory allocated while no batch is in flight)."""

    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        v = trace.values
        hit = rng.random(len(v)) < per_sample
        level = float(np.median(v))
        return _with_values(trace, v + sign * hit * rng.uniform(*height, len(v)) * level)

    return perturb


def scaled_noise(factor: float = 2.5) -> Perturb:
    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        s = math.sqrt(factor**2 - 1.0) * noise_scale(trace)
        return _with_values(trace, trace.values + s * rng.standard_normal(len(trace.values)))

    return perturb


def multiplicative(share: float = 0.003) -> Perturb:
    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        v = trace.values
        return _with_values(trace, v * (1.0 + share * rng.standard_normal(len(v))))

    return perturb


def quantise(step: float) -> Perturb:
    def perturb(trace: Trace, rng: np.random.Generator) -> Trace:
        return _with_values(trace, np.ceil(trace.values / step) * step)

    return perturb


def mixed(trace: Trace, rng: np.random.Generator) -> Trace:
    """One draw per trace of an interval, gaps, a noise model and a quantisation."""
    out = resample(float(rng.choice([5.0, 10.0, 20.0, 30.0, 60.0])))(trace, rng)
    if rng.random() < 0.5:
        out = gaps()(out, rng)
    noise = [student_t(), spikes(), scaled_noise(2.0), multiplicative(0.002)]
    out = noise[int(rng.integers(len(noise)))](out, rng)
    if rng.random() < 0.5:
        out = quantise(float(rng.choice([2.0, 20.0])) * MiB)(out, rng)
    return out


PERTURBATIONS: dict[str, Perturb] = {
    "dt-5s": resample(5.0),
    "dt-20s": resample(20.0),
    "dt-30s": resample(30.0),
    "dt-60s": resample(60.0),
    "gaps": gaps(),
    "t-noise": student_t(),
    "spikes": spikes(),
    "dips": spikes(height=(0.01, 0.1), sign=-1.0),
    "noise-x2.5": scaled_noise(2.5),
    "mult-noise": multiplicative(),
    "quant-2MiB": quantise(2 * MiB),
    "quant-20MiB": quantise(20 * MiB),
    "mixed": mixed,
}


def perturbed(traces: list[Trace], name: str, seed: int = 0) -> list[Trace]:
    """Every trace under perturbation ``name``, each with its own seeded generator."""
    perturb = PERTURBATIONS[name]
    key = sum(ord(c) * 31**i for i, c in enumerate(name)) % 2**31
    return [perturb(trace, np.random.default_rng([seed, key, i])) for i, trace in enumerate(traces)]


# --- scoring -------------------------------------------------------------------------------


def score(traces: list[Trace]) -> tuple[Figures, list[Outcome]]:
    """Our detector at the default over ``traces``: score.py's figures and per-trace outcomes."""
    alerts, _ = run_detector(traces, 1.0)
    outcomes = [judge(t, a) for t, a in zip(traces, alerts, strict=True)]
    return aggregate(traces, outcomes), outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detector.perturb",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--corpus",
        choices=("tune", "tune_b", "real_tune"),
        default="tune",
        help="the tune split (default), the second tuning corpus (traces_tune_b.py) or the "
        "recorded tuning library (record_tune.py)",
    )
    parser.add_argument("--quick", action="store_true", help="a quarter of the corpus")
    parser.add_argument("--scale", type=float, help="traces per family relative to the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        type=lambda text: [x for x in text.split(",") if x],
        help=f"comma-separated perturbations (default all: {','.join(PERTURBATIONS)}); "
        "the unperturbed corpus is always scored first, so `--only none` scores it alone",
    )
    parser.add_argument("--json", metavar="FILE", help="figures and per-trace outcomes to FILE")
    args = parser.parse_args(argv)
    scale = args.scale or (0.25 if args.quick else 1.0)
    names = [n for n in args.only or PERTURBATIONS if n != "none"]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        parser.error(f"unknown perturbation(s): {', '.join(unknown)}")
    if args.corpus == "real_tune":
        base = load_tune_library()
        what = f"recorded tuning library ({len({t.family for t in base})} families)"
    elif args.corpus == "tune_b":
        base = traces_tune_b.generate(args.seed, quick=args.quick)
        what = f"second tuning corpus (seed {args.seed}{', quick' if args.quick else ''})"
    else:
        base = generate(args.seed, "tune", scale)
        what = f"tune split (seed {args.seed}, scale {scale:g})"
    if not base:
        print(f"{what}: no traces (record them first)")
        return 1
    print(f"{what}: {len(base)} traces, our detector s=1")
    rows: list[tuple[str, Figures]] = []
    report: dict = {}
    started = time.perf_counter()
    for name in ["none", *names]:
        traces = base if name == "none" else perturbed(base, name, args.seed)
        t0 = time.perf_counter()
        figures, outcomes = score(traces)
        rows.append((name, figures))
        print(f"  {name:<14} scored in {time.perf_counter() - t0:.0f} s", flush=True)
        report[name] = {
            "figures": figures.summary(),
            "traces": {
                t.name: {
                    "false_episodes": o.false_episodes,
                    "caught": o.caught,
                    "lead": o.lead,
                    "forecast_error": o.forecast_error,
                    "changes": o.changes,
                }
                for t, o in zip(traces, outcomes, strict=True)
            },
        }
    print()
    print_methods(rows)
    print(f"  ({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_plain(report), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
