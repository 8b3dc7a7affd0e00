"""The detector inside the agent: verdict gauges, the change hook, growth per request."""

import subprocess

import pytest

import probes
from diag.model import Sample
from diag.settings import Settings
from diag.testing import FakeClock, FakeProbe
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
