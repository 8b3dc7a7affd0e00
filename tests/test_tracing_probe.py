import tracemalloc

import pytest

from probes.base import Cadence, ProbeUnavailable
from probes.tracing import TracemallocProbe, site_label

_HOST_START = tracemalloc.start


@pytest.fixture
def tracing():
    was_tracing = tracemalloc.is_tracing()
    yield
    if not was_tracing:
        tracemalloc.stop()


def test_off_by_default_and_says_how_to_turn_it_on():
    assert not tracemalloc.is_tracing()
    probe = TracemallocProbe()
    with pytest.raises(ProbeUnavailable, match="trace=True or DIAG_TRACE=1") as info:
        probe.sample()
    assert not info.value.permanent
    assert not tracemalloc.is_tracing()  # the probe never starts it on its own


def _make_sites():
    # Twelve distinct allocation sites, each holding a different amount.
    held = []
    held.append([bytearray(1000) for _ in range(120)])
    held.append([bytearray(1000) for _ in range(110)])
    held.append([bytearray(1000) for _ in range(100)])
    held.append([bytearray(1000) for _ in range(90)])
    held.append([bytearray(1000) for _ in range(80)])
    held.append([bytearray(1000) for _ in range(70)])
    held.append([bytearray(1000) for _ in range(60)])
    held.append([bytearray(1000) for _ in range(50)])
    held.append([bytearray(1000) for _ in range(40)])
    held.append([bytearray(1000) for _ in range(30)])
    held.append([bytearray(1000) for _ in range(20)])
    held.append([bytearray(1000) for _ in range(10)])
    return held


def test_top_sites_are_bounded_with_the_rest_as_other(tracing):
    probe = TracemallocProbe(start=True, top=3, cadence=Cadence(0.0, budget=1.0))
    assert not tracemalloc.is_tracing()  # not before the first tick
    probe.sample()
    held = _make_sites()
    samples = probe.sample()
    sites = {dict(s.labels)["site"]: s.value for s in samples if s.name == "tracemalloc_top_bytes"}
    assert len(sites) == 4  # top 3 + other
    assert "other" in sites
    top = [site for site in sites if site != "other"]
    assert all(site.startswith("tests/test_tracing_probe.py:") for site in top)
    assert min(sites[s] for s in top) >= 100 * 1000
    values = {s.name: s.value for s in samples if not s.labels}
    assert values["tracemalloc_traced_bytes"] >= 780 * 1000
    assert values["tracemalloc_peak_bytes"] >= values["tracemalloc_traced_bytes"]
    del held
    probe.close()
    assert not tracemalloc.is_tracing()  # it stops what it started


def test_leaves_a_users_own_tracing_alone(tracing):
    tracemalloc.start()
    probe = TracemallocProbe(start=True)
    probe.sample()
    probe.close()
    assert tracemalloc.is_tracing()
    tracemalloc.stop()


def test_tracing_the_host_stops_or_claims_is_the_hosts(tracing):
    """trace=True starts tracing once. A host that stops it decided so: it is not started
    again under it. A host that calls tracemalloc.start() while the agent's tracing runs (a
    no-op then) believes tracing is its own: the agent no longer stops it."""
    probe = TracemallocProbe(start=True)
    probe.sample()
    assert tracemalloc.is_tracing()
    tracemalloc.stop()  # the host pauses it
    with pytest.raises(ProbeUnavailable):
        probe.sample()
    assert not tracemalloc.is_tracing()  # not restarted under the host
    probe.close()
    assert tracemalloc.start is _HOST_START  # nothing of the agent's left in tracemalloc

    claimed = TracemallocProbe(start=True)
    claimed.sample()
    tracemalloc.start(5)  # the host's own start, while the agent's tracing runs
    claimed.close()
    assert tracemalloc.is_tracing()  # the host's now: its take_snapshot() still works
    tracemalloc.take_snapshot()
    assert tracemalloc.start is _HOST_START
    tracemalloc.stop()


def test_site_label_keeps_two_path_parts():
    assert site_label("/srv/app/tts_service.py", 42) == "app/tts_service.py:42"
    assert site_label("x.py", 1) == "x.py:1"
