"""The independently written alt trace corpus: determinism, the Trace contract, corpus totals."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from benchmarks.detector import traces_alt
from benchmarks.detector.traces import Trace

HOUR = 3600.0
MINUTE = 60.0
MiB = 1024.0**2
GiB = 1024.0**3


@pytest.fixture(scope="module")
def full() -> list[Trace]:
    return traces_alt.generate(0)


def _check_contract(trace: Trace) -> None:
    t, v = trace.times, trace.values
    assert trace.source == "alt"
    assert trace.ood is False
    assert re.fullmatch(rf"alt/{re.escape(trace.family)}/\d+", trace.name)
    assert t.ndim == 1 and t.shape == v.shape and len(t) >= 10
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(v))
    assert np.all(np.diff(t) > 0), "times strictly increasing (no duplicates)"
    assert np.all(v > 0)
    assert trace.limit > 0
    starts = np.asarray(trace.starts)
    assert starts[0] == t[0]
    assert np.all(np.diff(starts) > 0) and starts[-1] < t[-1]
    if trace.requests is not None:
        r = trace.requests
        assert r.shape == t.shape
        assert np.all(np.diff(r) >= 0) and r[0] >= 0
        assert r[-1] > r[0]
    if trace.kind == "quiet":
        assert trace.t_leak is None and trace.t_oom is None
        assert v.max() <= 0.9 * trace.limit
        assert 4.0 - 1e-6 <= trace.hours <= 48.0 + 1e-6
    else:
        assert trace.kind == "leak"
        assert trace.t_leak is not None and trace.t_oom is not None
        assert t[0] <= trace.t_leak < trace.t_oom
        assert trace.t_oom == t[-1]
        assert v[-1] >= trace.limit, "a leak trace ends at its OOM"
        assert np.all(v[:-1] < trace.limit), "... the first sample at or over the limit"
        assert trace.t_leak - t[0] <= 12 * HOUR + 1e-6
        assert np.sum(t > trace.t_leak) >= 5


def test_deterministic_for_a_seed():
    a = traces_alt.generate(5, quick=True)
    b = traces_alt.generate(5, quick=True)
    assert [x.name for x in a] == [x.name for x in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.times, y.times) and np.array_equal(x.values, y.values)
        assert x.limit == y.limit and x.t_leak == y.t_leak and x.t_oom == y.t_oom
        assert x.starts == y.starts
        assert (x.requests is None) == (y.requests is None)
        if x.requests is not None:
            assert np.array_equal(x.requests, y.requests)
    c = traces_alt.generate(6, quick=True)
    assert any(not np.array_equal(x.values, z.values) for x, z in zip(a, c, strict=True))


def test_quick_is_a_small_subset_of_the_full_corpus(full):
    quick = traces_alt.generate(0, quick=True)
    assert len(quick) <= len(full) / 5
    assert {x.family for x in quick} == {x.family for x in full}
    by_name = {x.name: x for x in full}
    for x in quick:  # the same traces, not a differently drawn small corpus
        assert np.array_equal(x.values, by_name[x.name].values)


@pytest.mark.parametrize("seed", [1, 2])
def test_contract_for_other_seeds(seed):
    for trace in traces_alt.generate(seed, quick=True):
        _check_contract(trace)


def test_contract_on_the_full_corpus(full):
    names = [x.name for x in full]
    assert len(names) == len(set(names))
    for trace in full:
        _check_contract(trace)


def test_corpus_totals(full):
    quiet = [x for x in full if x.kind == "quiet"]
    leaks = [x for x in full if x.kind == "leak"]
    assert sum(x.hours for x in quiet) >= 400
    assert len(leaks) >= 60
    assert {x.family for x in quiet} == set(traces_alt.QUIET_FAMILIES)
    assert {x.family for x in leaks} == set(traces_alt.LEAK_FAMILIES)

    d = np.array([x.onset_to_oom for x in leaks])
    long = (d >= 1 * HOUR) & (d <= 48 * HOUR)
    short = (d >= 20 * MINUTE) & (d < 60 * MINUTE)
    assert np.all(long | short)
    assert 0.78 <= long.mean() <= 0.92
    assert np.any(d > 24 * HOUR), "slow leaks of a day or more"

    prefix = np.array([x.t_leak - x.times[0] for x in leaks])
    assert np.sum(prefix == 0) >= 5, "some leak from the start"
    assert np.sum(prefix > 6 * HOUR) >= 5, "some after a long leak-free prefix"


def test_corpus_variety(full):
    levels = np.array([np.median(x.values) for x in full if x.kind == "quiet"])
    assert levels.min() < 400 * MiB and levels.max() > 20 * GiB
    steps = np.array([np.median(np.diff(x.times)) for x in full])
    assert steps.min() <= 2.0 and steps.max() >= 45.0
    irregular = [x for x in full if np.ptp(np.diff(x.times)) > 0.5 * np.median(np.diff(x.times))]
    assert len(irregular) >= len(full) // 3
    with_requests = [x for x in full if x.requests is not None]
    assert 0.75 * len(full) <= len(with_requests) < len(full)
    assert sum(len(x.starts) > 1 for x in full) >= 10, "restarts and worker recycling"
    quiet = [x for x in full if x.kind == "quiet"]
    fill = np.array([x.values.max() / x.limit for x in quiet])
    assert np.sum(fill > 0.75) >= 5, "some quiet traces run close to their limit"
    headroom = np.array([x.limit / np.median(x.values) for x in quiet])
    assert headroom.min() >= 1.2


def test_per_request_leaks_follow_the_request_counter(full):
    for trace in full:
        if trace.family != "leak_request":
            continue
        assert trace.requests is not None
        assert trace.t_leak is not None
        after = trace.times > trace.t_leak
        assert trace.requests[after][-1] > trace.requests[after][0]


def test_generation_is_fast():
    start = time.perf_counter()
    traces_alt.generate(11)
    assert time.perf_counter() - start < 30.0
