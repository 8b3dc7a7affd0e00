import logging
import threading

from diag.model import Sample
from diag.series import SeriesStore
from diag.testing import FakeClock, FakeProbe
from probes.base import ProbeUnavailable
from probes.sampler import Sampler


def test_tick_stamps_samples_with_the_injected_clock_and_stores_them():
    clock = FakeClock(1000.0)
    sampler = Sampler([FakeProbe("a", [Sample("process_resident_memory_bytes", 5.0)])], clock=clock)
    tick = sampler.tick()
    clock.advance(5)
    sampler.tick()
    assert tick.t == 1000.0
    assert tick.value("process_resident_memory_bytes") == 5.0
    assert sampler.store.get("process_resident_memory_bytes") == [(1000.0, 5.0), (1005.0, 5.0)]
    assert sampler.latest is not None and sampler.latest.t == 1005.0
    assert tick.value("last_tick_timestamp_seconds") == 1000.0
    assert tick.value("probe_enabled", (("probe", "a"),)) == 1.0


def test_failing_probe_is_counted_backed_off_then_disabled(caplog):
    probe = FakeProbe("bad", fail_with=lambda call: RuntimeError(f"boom {call}"))
    good = FakeProbe("good", [Sample("python_allocated_blocks", 1.0)])
    sampler = Sampler([probe, good], max_failures=4, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="diag"):
        calls_per_tick = []
        for _ in range(20):
            before = probe.calls
            tick = sampler.tick()  # never raises
            calls_per_tick.append(probe.calls - before)
            assert tick.value("python_allocated_blocks") == 1.0  # others keep sampling
    # Calls at ticks 1, 2, 4, 8 (skip 0, 1, 3 ticks between), then disabled for good.
    assert calls_per_tick[:8] == [1, 1, 0, 1, 0, 0, 0, 1]
    assert sum(calls_per_tick) == 4
    status = {s.name: s for s in sampler.status()}["bad"]
    assert not status.enabled
    assert status.errors == 4
    assert status.reason == "RuntimeError: boom 4"
    assert tick.value("probe_errors_total", (("probe", "bad"),)) == 4.0
    assert tick.value("probe_enabled", (("probe", "bad"),)) == 0.0
    # Reported once when it first failed, once when disabled: not once per failure.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "backing off" in messages[0] and "disabled after 4 failures" in messages[1]


def test_a_probe_that_recovers_is_not_disabled():
    probe = FakeProbe(
        "flaky",
        [Sample("python_allocated_blocks", 1.0)],
        fail_with=lambda call: OSError("busy") if call in (1, 3) else None,
    )
    sampler = Sampler([probe], max_failures=2, clock=FakeClock())
    for _ in range(10):
        sampler.tick()
    status = sampler.status()[0]
    assert status.enabled and status.errors == 2 and status.reason is None


def test_unavailable_is_not_an_error_and_permanent_disables():
    waiting = FakeProbe("cuda", fail_with=lambda call: ProbeUnavailable("no torch"))
    never = FakeProbe("nvml", fail_with=lambda call: ProbeUnavailable("no lib", permanent=True))
    sampler = Sampler([waiting, never], clock=FakeClock())
    for _ in range(10):
        sampler.tick()
    assert waiting.calls == 10  # re-checked every tick: the host may import torch later
    assert never.calls == 1
    status = {s.name: s for s in sampler.status()}
    assert status["cuda"].enabled and status["cuda"].errors == 0
    assert status["cuda"].reason == "no torch"
    assert not status["nvml"].enabled and status["nvml"].reason == "no lib"


def test_listener_failures_are_contained():
    sampler = Sampler([FakeProbe()], clock=FakeClock())
    seen = []
    sampler.add_listener(lambda tick: 1 / 0)
    sampler.add_listener(seen.append)
    sampler.tick()
    sampler.tick()
    assert len(seen) == 2


def test_own_memory_is_bounded_and_exported():
    many = FakeProbe(
        "many", [Sample("gc_tracked_objects", 1.0, (("x", str(i)),)) for i in range(50)]
    )
    store = SeriesStore(capacity=16, max_series=10)
    sampler = Sampler([many], clock=FakeClock(), store=store)
    for _ in range(100):
        tick = sampler.tick()
    assert len(store) == 10
    assert tick.value("agent_memory_bytes") == store.nbytes <= store.max_nbytes
    assert tick.value("agent_series") == 10
    assert tick.value("agent_dropped_series_total") == 40 * 100


def test_thread_ticks_and_stops_at_once():
    ticked = threading.Event()
    sampler = Sampler([FakeProbe()], interval=3600.0)
    sampler.add_listener(lambda tick: ticked.set())
    sampler.start()
    sampler.start()  # idempotent: one thread
    assert ticked.wait(5)  # the first tick runs at once
    names = [t.name for t in threading.enumerate()].count("diag-sampler")
    assert names == 1
    sampler.stop()  # wakes the hour-long wait immediately
    assert not sampler.running
    assert "diag-sampler" not in [t.name for t in threading.enumerate()]


def test_each_ticks_self_metrics_follow_the_probes_failures_and_recovery():
    """A probe's error count and enabled flag are repeated while they hold and change with it."""
    probe = FakeProbe(
        "flaky",
        [Sample("python_allocated_blocks", 1.0)],
        fail_with=lambda call: OSError("busy") if call in (2, 3) else None,
    )
    sampler = Sampler([probe], max_failures=5, clock=FakeClock())
    labels = (("probe", "flaky"),)
    seen = []
    for _ in range(8):
        tick = sampler.tick()
        seen.append((tick.value("probe_errors_total", labels), tick.value("probe_enabled", labels)))
    # Calls 2 and 3 fail, the second followed by one skipped tick; then it samples again.
    assert seen == [(0.0, 1.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.0)] + [(2.0, 1.0)] * 4
