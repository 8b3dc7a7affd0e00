"""The tune_b corpus keeps its ground truth: a leak ends at its OOM, a quiet trace never gets
there, restarts and request counters are consistent, and a seed gives the same traces."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.detector import traces_tune_b as tb
from benchmarks.detector.traces import HOUR, MINUTE, Trace


@pytest.fixture(scope="module")
def corpus() -> list[Trace]:
    return tb.generate(seed=0, quick=True)


def test_deterministic_per_seed(corpus: list[Trace]) -> None:
    again = tb.generate(seed=0, quick=True)
    assert [t.name for t in again] == [t.name for t in corpus]
    for a, b in zip(corpus, again, strict=True):
        assert np.array_equal(a.times, b.times)
        assert np.array_equal(a.values, b.values)
        assert a.limit == b.limit and a.t_leak == b.t_leak and a.starts == b.starts
        assert (a.requests is None) == (b.requests is None)
        if a.requests is not None:
            assert np.array_equal(a.requests, b.requests)
    other = tb.generate(seed=1, quick=True)
    assert any(not np.array_equal(a.values, b.values) for a, b in zip(corpus, other, strict=True))


def test_every_family_present_with_quick_counts(corpus: list[Trace]) -> None:
    for family, kind, count, _make in tb.FAMILIES:
        ts = [t for t in corpus if t.family == family]
        assert len(ts) == max(1, count // 4)
        assert {t.kind for t in ts} == {kind}
        assert [t.name for t in ts] == [f"tune_b/{family}/{i:03d}" for i in range(len(ts))]
    full = sum(count for *_, count, _make in tb.FAMILIES)
    assert 230 <= full <= 290
    leaks = sum(count for _f, kind, count, _m in tb.FAMILIES if kind == "leak")
    assert 0.3 <= leaks / full <= 0.5


def test_metadata_and_sampling(corpus: list[Trace]) -> None:
    for t in corpus:
        assert t.source == "tune_b" and t.ood is False
        assert t.times.dtype == np.float64 and t.values.dtype == np.float64
        assert len(t.times) == len(t.values) <= tb.MAX_SAMPLES
        assert np.all(np.diff(t.times) > 0), t.name
        assert np.all(np.isfinite(t.values)) and np.all(t.values > 0), t.name
        assert t.limit > 0


def test_leaks_end_at_the_first_sample_over_the_limit(corpus: list[Trace]) -> None:
    for t in (t for t in corpus if t.kind == "leak"):
        assert t.t_leak is not None and t.t_oom is not None
        assert t.t_oom == t.times[-1]
        assert t.t_leak < t.t_oom
        assert t.values[-1] >= t.limit, t.name
        assert np.all(t.values[:-1] < t.limit), t.name
        assert t.t_leak - t.times[0] <= 12 * HOUR + MINUTE
        assert t.t_oom - t.t_leak <= 80 * HOUR
        # the leak-free prefix is quiet: well under the limit
        before = t.values[t.times <= t.t_leak]
        assert before.size == 0 or before.max() <= 0.9 * t.limit * (1 + 1e-9), t.name
        # restarts only before the onset
        assert all(s <= t.t_leak for s in t.starts), t.name


def test_quiet_traces_stay_under_the_limit(corpus: list[Trace]) -> None:
    for t in (t for t in corpus if t.kind == "quiet"):
        assert t.t_leak is None and t.t_oom is None
        assert t.values.max() <= 0.9 * t.limit * (1 + 1e-9), t.name
        assert 4 * HOUR - MINUTE <= t.times[-1] - t.times[0] <= 48 * HOUR, t.name


def test_starts_recorded_within_the_trace(corpus: list[Trace]) -> None:
    restarted = 0
    for t in corpus:
        assert t.starts[0] == t.times[0]
        assert list(t.starts) == sorted(set(t.starts))
        assert all(t.times[0] <= s < t.times[-1] for s in t.starts), t.name
        for s in t.starts[1:]:  # samples are lost around a restart
            assert not np.any(np.abs(t.times - s) < 1e-9), t.name
        restarted += len(t.starts) > 1
    assert restarted > 0
    gunicorn = [t for t in corpus if t.family == "gunicorn"]
    assert all(len(t.starts) > 1 for t in gunicorn)


def test_requests_cumulative_per_process(corpus: list[Trace]) -> None:
    with_counter = [t for t in corpus if t.requests is not None]
    assert 0 < len(with_counter) < len(corpus)
    drops = 0
    for t in with_counter:
        assert t.requests is not None and len(t.requests) == len(t.times)
        assert t.requests[0] >= 0
        bounds = [*t.starts[1:], np.inf]
        for lo, hi in zip(t.starts, bounds, strict=True):
            seg = t.requests[(t.times >= lo) & (t.times < hi)]
            assert np.all(np.diff(seg) >= 0), t.name
        for s in t.starts[1:]:  # the counter starts again with each process
            i = int(np.searchsorted(t.times, s))
            drops += bool(t.requests[i] < t.requests[i - 1])
    assert drops > 0
