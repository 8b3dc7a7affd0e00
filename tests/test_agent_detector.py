"""The detector inside the agent: verdict gauges, the change hook, growth per request."""

import subprocess

import pytest

import probes
from diag.model import Sample
from diag.settings import Settings
from diag.testing import FakeClock, FakeProbe
from probes import analysis
from probes.agent import Agent
from probes.requests import RequestStats
from tests.conftest import require_tool

MiB = 1024 * 1024
GiB = 1024 * MiB
LABELS = (("series", "process_resident_memory_bytes"),)


def _leaking_service(per_request: float, requests_per_tick: int, hours: float, step=10.0):
    """An agent over a scripted service: RSS = 1 GiB + what the requests retained, under a
    4 GiB limit that the cgroup's usage tracks. The clock is fake: hours pass in a second."""
    clock = FakeClock(0.0)
    stats = RequestStats()
    probe = FakeProbe("fake")
    # No traced windows: they run in real time, while this clock races through hours.
    agent = Agent(Settings(escalation_window=0), probes=[probe], clock=clock, requests=stats)
    changes = []
    agent.on_verdict_change(lambda series, old, new: changes.append((series, new.state)))
    rss = 1.0 * GiB
    for _ in range(int(hours * 3600 / step)):
        for _ in range(requests_per_tick):
            stats.record("/talk", 0.02)
        rss += per_request * requests_per_tick
        probe.samples = [
            Sample("process_resident_memory_bytes", rss),
            Sample("memory_limit_bytes", 4.0 * GiB),
            Sample("memory_limit_usage_bytes", rss + 100 * MiB),
        ]
        tick = agent.sampler.tick()
        clock.advance(step)
    return agent, tick, changes, rss


def test_a_leak_is_flagged_with_a_forecast_and_growth_per_request():
    # 2 requests per 10 s, each keeping 0.5 MiB: 6 MiB/min; 2.9 GiB of headroom: ~8.3 h.
    _agent, tick, changes, rss = _leaking_service(0.5 * MiB, 2, hours=1.5)
    assert tick.value("leak_suspected", LABELS) == 1.0
    rate = tick.value("growth_bytes_per_second", LABELS)
    assert abs(rate - 0.1 * MiB) < 0.01 * MiB
    true_seconds_to_oom = (4 * GiB - (rss + 100 * MiB)) / (0.1 * MiB)
    low = tick.value("seconds_to_oom_low", LABELS)
    high = tick.value("seconds_to_oom_high", LABELS)
    forecast = tick.value("seconds_to_oom", LABELS)
    assert low <= forecast <= high
    assert abs(forecast / true_seconds_to_oom - 1) < 0.1
    retained = tick.value("retained_bytes_per_request", (("endpoint", "/talk"),))
    assert abs(retained - 0.5 * MiB) < 0.05 * MiB
    states = [state for series, state in changes if series == "process_resident_memory_bytes"]
    assert states[0] == "insufficient_data" and states[-1] == "leak"
    assert "leak" not in states[:-1]  # one change into leak, no flapping before it


def test_flat_memory_is_not_a_leak():
    _, tick, changes, _ = _leaking_service(0.0, 2, hours=3)
    assert tick.value("leak_suspected", LABELS) == 0.0
    assert "leak" not in [state for _, state in changes]


def test_the_agent_judges_memory_with_its_request_counters_as_the_load_covariate():
    """Memory that follows load (a working set per request in flight) under slow bursts, close
    to the limit: with the agent's own request counters the detector sees it follow the load."""
    from tests.test_detect import _bursty_rate

    clock = FakeClock(0.0)
    stats = RequestStats()
    probe = FakeProbe("fake")
    agent = Agent(Settings(escalation_window=0), probes=[probe], clock=clock, requests=stats)
    changes, reasons = [], set()
    agent.on_verdict_change(lambda series, old, new: changes.append((series, new.state)))
    step, owed = 10.0, 0.0
    for i in range(int(18 * 3600 / step)):
        t = i * step
        owed += _bursty_rate(t) * step
        while owed >= 1:
            stats.record("/talk", 0.02)
            owed -= 1
        rss = 1.0 * GiB + 12 * MiB * _bursty_rate(t)
        probe.samples = [
            Sample("process_resident_memory_bytes", rss),
            Sample("memory_limit_bytes", 1.6 * GiB),
            Sample("memory_limit_usage_bytes", rss),
        ]
        agent.sampler.tick()
        reasons.add(agent.analyzer.verdicts["process_resident_memory_bytes"].reason)
        clock.advance(step)
    assert "leak" not in [state for series, state in changes]
    assert "growth follows load: it rises and falls with the request rate" in reasons


@pytest.mark.e2e
def test_the_exposition_with_verdicts_and_requests_passes_promtool():
    promtool = require_tool("promtool")
    agent, _, _, _ = _leaking_service(0.5 * MiB, 2, hours=1.5)
    text = agent.metrics_text()
    for name in (
        'diag_leak_suspected{series="process_resident_memory_bytes"} 1.0',
        'diag_requests_total{endpoint="/talk"}',
        'diag_request_duration_seconds_bucket{endpoint="/talk",le="0.025"}',
        "# TYPE diag_request_duration_seconds histogram",
        'diag_retained_bytes_per_request{endpoint="/talk"}',
        'diag_seconds_to_oom_high{series="process_resident_memory_bytes"}',
    ):
        assert name in text, name
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_request_context_manager_decorator_and_errors():
    stats = probes.requests.default_stats()
    before = stats.samples()

    @probes.request("decorated")
    def handler(x):
        return x * 2

    @probes.request("async")
    async def async_handler():
        return 1

    import asyncio

    assert handler(21) == 42
    assert asyncio.run(async_handler()) == 1
    with probes.request("ctx"):
        pass
    try:
        with probes.request("ctx"):
            raise ValueError("boom")
    except ValueError:
        pass
    totals = stats.totals()
    assert totals["decorated"] >= 1 and totals["async"] >= 1 and totals["ctx"] >= 2
    errors = {dict(s.labels)["endpoint"]: s.value for s in stats.samples()
              if s.name == "request_errors_total"}  # fmt: skip
    assert errors["ctx"] >= 1
    assert before is not None


def test_endpoints_are_bounded():
    stats = RequestStats(max_endpoints=4)
    for i in range(100):
        stats.record(f"/user/{i}", 0.01)
    assert set(stats.totals()) == {"/user/0", "/user/1", "/user/2", "other"}
    assert stats.totals()["other"] == 97


# -- the detector fed only what can change it, against fed every sample ------------------------


def _resource_trace(seed: int, ticks: int, step: float) -> list[tuple[float, float, float | None]]:
    """(t, value, limit) of a count the way the agent sees one: long flat stretches, single
    opens and closes, a leak, a pool filling to its bound, a restart, a limit raised, a limit
    missing for a while, and a few samples whose clock stepped back."""
    import random

    rng = random.Random(seed)
    out: list[tuple[float, float, float | None]] = []
    t, value, limit = 1000.0, 40.0, 1024.0
    leak = 0.0
    for i in range(ticks):
        t += step * rng.choice((1.0,) * 20 + (0.5, 2.0, 7.0))
        if 1500 <= i < 3500:
            leak += rng.choice((0.0, 0.2, 0.4))  # a leak: about 2.4 fds a minute at 5 s
        elif i == 4500:
            value, leak = 40.0, 0.0  # restarted
        if rng.random() < 0.03:
            value += rng.choice((-1.0, 1.0, 2.0, -2.0))  # one connection more or less
        if i == 4000:
            limit *= 2  # RLIMIT_NOFILE raised
        reading = max(value + int(leak), 0.0)
        stamp = t - rng.choice((3.0, 40.0)) if rng.random() < 0.003 else t  # stepped back
        missing = 2000 <= i < 2100 or 4001 <= i < 4010  # no limit read (the raise then)
        out.append((stamp, reading, None if missing else limit))
    return out


@pytest.mark.parametrize("time_scale", [1.0, 60.0])
@pytest.mark.parametrize("seed", range(4))
def test_a_detector_fed_only_what_changes_it_gives_every_verdict_of_one_fed_everything(
    seed, time_scale
):
    from diag.detect import Detector, DetectorConfig
    from probes.analysis import RESOURCE_VERDICT, _Judged

    config = DetectorConfig(time_scale=time_scale)
    step = 5.0 / time_scale
    labels = (("resource", "fds"), ("series", "resource_usage"))
    every = Detector(1024.0, config)
    judged = _Judged("resource_usage{resource=fds}", Detector(1024.0, config), labels,
                     RESOURCE_VERDICT)  # fmt: skip
    fed = 0
    real_update = judged.detector.update

    def counted(t, value, limit=None, requests=None):
        nonlocal fed
        fed += 1
        return real_update(t, value, limit, requests)

    judged.detector.update = counted
    states = set()
    trace = _resource_trace(seed, 6000, step)
    for t, value, limit in trace:
        expected = every.update(t, value, limit)
        got = judged.update(t, value, limit)
        assert got == expected, (t, value, limit)
        assert judged.samples_of(got) == analysis.verdict_samples(expected, labels,
                                                                  RESOURCE_VERDICT)  # fmt: skip
        assert judged.detector.limit == every.limit
        states.add(got.state)
    assert {"warming_up", "steady", "leak"} <= states  # the trace visits the verdicts that matter
    assert fed < len(trace) / 2  # most samples are not fed: they could not change anything


def test_the_analyzer_exports_and_notifies_as_with_every_sample_fed():
    """The agent's analyzer over hours of fd counts (flat, then leaking) gives, tick by tick,
    the gauges and the verdict changes of a detector fed every sample."""
    from diag.detect import Detector

    fds = (("resource", "fds"),)
    labels = (("resource", "fds"), ("series", "resource_usage"))
    analyzer = analysis.GrowthAnalyzer()
    heard = []
    analyzer.on_change(lambda key, old, new: heard.append((key, new.state, new.t)))
    reference = Detector(None, analyzer.config)  # the agent's: one process, no restarts
    expected_changes = []
    last_state = None
    for i, (t, value, limit) in enumerate(_resource_trace(7, 5000, 5.0)):
        samples = [Sample("resource_usage", value, fds)]
        if limit is not None:
            samples.append(Sample("resource_limit", limit, fds))
        out = analyzer.analyze(t, samples)
        verdict = reference.update(t, value, limit)
        assert out == analysis.verdict_samples(verdict, labels, analysis.RESOURCE_VERDICT), i
        if verdict.state != last_state:
            expected_changes.append(("resource_usage{resource=fds}", verdict.state, verdict.t))
            last_state = verdict.state
    assert heard == expected_changes
    assert analyzer.verdicts["resource_usage{resource=fds}"] == reference.verdict
    assert "leak" in [state for _, state, _ in heard]


def test_sites_that_come_and_go_never_keep_a_later_series_from_being_judged():
    """Allocation sites leave the top and new ones come: all detectors taken by sites gone
    for good, a series that appears later (a resource the host starts using, a GPU) must
    still be judged. A site gone longer than STALE_SECONDS makes room; a live one never."""
    analyzer = analysis.GrowthAnalyzer()
    rss = Sample("process_resident_memory_bytes", 1e9)
    t = 0.0
    for wave in range(3):  # 3 x 63 sites, each wave present for 20 minutes, then gone
        for _ in range(120):
            t += 10.0
            sites = [
                Sample("tracemalloc_top_bytes", 1e6, (("site", f"app.py:{wave}{i:02d}"),))
                for i in range(analysis.MAX_DETECTORS - 1)
            ]
            analyzer.analyze(t, [rss, *sites])
    assert len(analyzer._series) == analysis.MAX_DETECTORS  # still bounded
    assert "process_resident_memory_bytes" in analyzer.verdicts  # seen every tick: kept
    fds = Sample("resource_usage", 12.0, (("resource", "fds"),))
    t += 10.0
    analyzer.analyze(t, [rss, fds])  # the third wave is live: no room yet
    assert "resource_usage{resource=fds}" not in analyzer.verdicts
    t += analysis.STALE_SECONDS + 10.0
    analyzer.analyze(t, [rss, fds])  # the third wave has gone stale
    assert "resource_usage{resource=fds}" in analyzer.verdicts
    assert not any(
        key.startswith("tracemalloc_top_bytes{site=app.py:0") for key in analyzer.verdicts
    )


@pytest.mark.parametrize("time_scale", [1.0, 60.0])
def test_a_probe_handing_out_the_same_tuple_again_is_judged_as_if_fed_each_sample(time_scale):
    """The resource probe hands out the very same tuple while nothing in it moves; the
    analyzer then answers for all its series at once (``_Repeat``) until a bucket closes or a
    limit changes. Tick by tick, the gauges and the verdict changes must be those of
    detectors fed every sample; the limits come in another chunk, new each tick, so that a
    limit changing under a repeated tuple is seen."""
    from diag.detect import Detector, DetectorConfig

    config = DetectorConfig(time_scale=time_scale)
    step = 5.0 / time_scale
    kinds = ("fds", "threads")
    traces = {
        kind: _resource_trace(seed, 5000, step) for kind, seed in zip(kinds, (3, 11), strict=True)
    }
    analyzer = analysis.GrowthAnalyzer(config)
    heard = []
    analyzer.on_change(lambda key, old, new: heard.append((key, new.state, new.t)))
    references = {kind: Detector(None, analyzer.config) for kind in kinds}  # one process
    expected_changes = []
    last_states: dict[str, str] = {}
    repeated = 0
    real_holds = analysis._Repeat.holds

    def counting(self, scaled, readings):
        nonlocal repeated
        held = real_holds(self, scaled, readings)
        repeated += held
        return held

    analysis._Repeat.holds = counting
    try:
        handed: tuple[Sample, ...] = ()
        for i in range(5000):
            t = traces["fds"][i][0]  # one clock: the fds trace's, stepped back now and then
            values = tuple(traces[kind][i][1] for kind in kinds)
            if tuple(s.value for s in handed) != values:
                handed = tuple(
                    Sample("resource_usage", v, (("resource", kind),))
                    for kind, v in zip(kinds, values, strict=True)
                )
            limits = [
                Sample("resource_limit", limit, (("resource", kind),))
                for kind in kinds
                if (limit := traces[kind][i][2]) is not None
            ]
            out = analyzer.analyze(t, (*handed, *limits), (handed, limits))
            expected = []
            for kind, value in zip(kinds, values, strict=True):
                verdict = references[kind].update(t, value, traces[kind][i][2])
                labels = (("resource", kind), ("series", "resource_usage"))
                expected += analysis.verdict_samples(verdict, labels, analysis.RESOURCE_VERDICT)
                key = f"resource_usage{{resource={kind}}}"
                if verdict.state != last_states.get(key):
                    expected_changes.append((key, verdict.state, verdict.t))
                    last_states[key] = verdict.state
            assert out == expected, i
    finally:
        analysis._Repeat.holds = real_holds
    assert sorted(heard, key=lambda c: (c[2], c[0])) == sorted(
        expected_changes, key=lambda c: (c[2], c[0])
    )
    assert "leak" in [state for _, state, _ in heard]
    assert repeated > 2500  # most ticks were answered at once


def test_the_agent_takes_no_fall_of_its_own_process_for_a_restart():
    """A cache flushed at once (half the RSS freed, no request counts to tell) is a big free
    in the process the agent lives in: no fresh warm-up, as a restart in a recording gets."""
    import random

    rng = random.Random(5)
    analyzer = analysis.GrowthAnalyzer()
    states = []
    for i in range(4 * 360):  # 4 h at 10 s, the flush at 2 h
        level = 1e9 if i < 720 else 0.5e9
        rss = Sample("process_resident_memory_bytes", level + rng.gauss(0, 2e6))
        analyzer.analyze(i * 10.0, [rss])
        states.append(analyzer.verdicts["process_resident_memory_bytes"].state)
    assert "warming_up" in states[:90]  # the process's own start
    assert "warming_up" not in states[720:]
    assert states[-1] == "steady"
