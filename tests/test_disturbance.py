"""diag's own dumps must not read as growth of the process they examine.

A dump pauses the host and a traced window adds tracemalloc's tables: measured on the reference
TTS service under load, a census leaves RSS ~20 MB higher and a 4 s window ~60 MB higher
(`examples/tts_service_fixed.py`, 12 requests/s). The detectors hold samples back while a dump
runs and until it settles, and discount the step across it.
"""

import os
import random

from diag.detect import SETTLE_SECONDS, DisturbanceDiscount, Verdict
from diag.model import Sample
from diag.testing import FakeClock
from probes.analysis import GrowthAnalyzer
from probes.escalation import DumpRequest, Escalation
from probes.watcher import DumpSettling, Watcher
from tests.conftest import resident_block

MiB = 1024 * 1024
GiB = 1024 * MiB


def test_held_samples_and_the_step_across_them_are_discounted():
    discount = DisturbanceDiscount()
    for value in (100.0, 102.0, 101.0):
        assert discount.adjust(value, disturbed=False) == value
    assert discount.adjust(150.0, disturbed=True) is None  # held back while disturbed
    assert discount.adjust(170.0, disturbed=True) is None
    # The first sample after: the step from the level before (100, the lowest) is discounted.
    assert discount.adjust(160.0, disturbed=False) == 100.0
    assert discount.offset == 60.0
    assert discount.adjust(165.0, disturbed=False) == 105.0  # later growth is kept whole


def test_the_discount_shrinks_as_the_memory_is_given_back():
    discount = DisturbanceDiscount()
    discount.adjust(100.0, disturbed=False)
    discount.adjust(140.0, disturbed=True)
    assert discount.adjust(140.0, disturbed=False) == 100.0
    # The allocator returns half of the step: the adjusted level does not fall below 100.
    assert discount.adjust(120.0, disturbed=False) == 100.0
    assert discount.offset == 20.0
    # All of it and more (a cache emptied): the offset is gone, the fall is the process's own.
    assert discount.adjust(90.0, disturbed=False) == 90.0
    assert discount.offset == 0.0
    assert discount.adjust(95.0, disturbed=False) == 95.0


def _run(growth_per_second, disturbed_by_dumps, hours=4.0, step=5.0, seed=3):
    """An analyzer over RSS = 1 GiB + growth + noise, under a 4 GiB limit; from the first
    hour an operator dumps every 10 minutes, each dump leaving 40 MB more resident (the
    residue of a paused host catching up) and disturbing 10 s of samples."""
    rng = random.Random(seed)
    dumps = [3600.0 + 600.0 * k for k in range(int((hours - 1) * 6))]

    def disturbed(t):
        return any(d <= t < d + 10 + SETTLE_SECONDS for d in dumps)

    analyzer = GrowthAnalyzer(disturbed=disturbed if disturbed_by_dumps else lambda t: False)
    states = []
    t = 0.0
    while t < hours * 3600:
        residue = 40 * MiB * sum(d <= t for d in dumps)
        rss = 1 * GiB + growth_per_second * t + residue + rng.gauss(0, 2 * MiB)
        analyzer.analyze(
            t,
            [
                Sample("process_resident_memory_bytes", rss),
                Sample("memory_limit_bytes", 4 * GiB),
                Sample("memory_limit_usage_bytes", rss),
            ],
        )
        states.append(analyzer.verdicts["process_resident_memory_bytes"].state)
        t += step
    return states, analyzer.verdicts["process_resident_memory_bytes"]


def test_an_operator_dumping_a_healthy_service_raises_no_leak():
    states, _ = _run(0.0, disturbed_by_dumps=True)
    assert "leak" not in states
    # The same residues, not known as diag's own: a staircase that reads as a leak. This is
    # what the discount prevents (and why the scenario is worth testing).
    undiscounted, _ = _run(0.0, disturbed_by_dumps=False)
    assert "leak" in undiscounted


def test_a_real_leak_dumped_meanwhile_is_still_a_leak_at_its_own_rate():
    rate = 2 * MiB / 60  # 2 MiB a minute: ~25 h to the limit
    _states, verdict = _run(rate, disturbed_by_dumps=True, hours=6.0)
    assert verdict.state == "leak"
    assert verdict.rate is not None and abs(verdict.rate - rate) < 0.2 * rate


def test_the_escalation_disturbs_while_it_dumps_and_until_it_settles():
    clock = FakeClock(1000.0)
    seen_during = []

    def series(name):  # read by the dump's cause, while it runs
        seen_during.append(escalation.disturbs(0.0))
        return []

    escalation = Escalation(requests=lambda: {}, series=series, clock=clock)
    assert not escalation.disturbs(1000.0)
    escalation.dump(DumpRequest(time_budget=2.0))
    assert seen_during and all(seen_during)
    assert escalation.disturbs(1000.0 + SETTLE_SECONDS - 0.5)
    assert not escalation.disturbs(1000.0 + SETTLE_SECONDS + 0.5)
    counts = {s.name: s.value for s in escalation.samples() if not s.labels}
    assert counts["dumps_total"] == 1 and counts["dump_active"] == 0


def test_watch_holds_its_samples_while_the_agent_dumps():
    settling = DumpSettling()
    assert not settling.disturbed(0.0, {"dumps_total": 4.0})  # dumps before the watch began
    assert not settling.disturbed(1.0, {"dumps_total": 4.0})
    assert settling.disturbed(2.0, {"dumps_total": 4.0, "dump_active": 1.0})
    assert settling.disturbed(3.0, None)  # no answer (paused by its census): still settling
    # A census that began and ended between two ticks shows as a new count.
    assert settling.disturbed(10.0, {"dumps_total": 5.0})
    assert settling.disturbed(10.0 + SETTLE_SECONDS - 0.5, {"dumps_total": 5.0})
    assert not settling.disturbed(10.0 + SETTLE_SECONDS + 0.5, {"dumps_total": 5.0})


def test_the_watcher_keeps_the_agents_dumps_out_of_its_verdict():
    """Through the watcher itself, with the agent reader injected: RSS that steps up while the
    agent in the target dumps is discounted once the dump has settled (this test process is
    the target, and 64 MiB of its own stands for the step)."""
    readings = {6.0: {"dumps_total": 0.0, "dump_active": 1.0}}
    now = [0.0]
    watcher = Watcher(
        os.getpid(),
        history="off",
        read_agent=lambda pid: readings.get(now[0], {"dumps_total": 0.0}),
    )
    step = None
    for now[0] in (5.0, 6.0, 7.0, 6.0 + SETTLE_SECONDS + 1.0):
        if now[0] == 7.0:
            step = resident_block(64 * 2**20)
        assert watcher.tick(now[0]) is not None
    assert step is not None
    assert watcher.discount.offset >= 48 * 2**20
    step.close()


def test_held_series_keep_their_last_verdict_gauges():
    """A Prometheus alert's `for` timer restarts when its series disappears: a held series
    must keep exporting its last verdict."""
    disturbed = {"now": False}
    analyzer = GrowthAnalyzer(disturbed=lambda t: disturbed["now"])
    sample = Sample("process_resident_memory_bytes", 1 * GiB)
    first = analyzer.analyze(0.0, [sample])
    disturbed["now"] = True
    held = analyzer.analyze(5.0, [sample])
    assert [s.name for s in held] == [s.name for s in first]
    assert isinstance(analyzer.verdicts["process_resident_memory_bytes"], Verdict)


def test_the_watcher_reads_the_load_covariate_from_the_agents_request_counters():
    """``diag watch`` feeds its detector the agent's requests so far, all endpoints summed, so
    growth that follows load is told from a leak as in the agent."""
    from probes.watcher import requests_served

    agent = {"requests_total{endpoint=tts}": 120.0, "requests_total{endpoint=asr}": 30.0}
    assert requests_served(agent | {"dumps_total": 2.0}) == 150.0
    assert requests_served({"dumps_total": 2.0}) is None  # an agent that counts no requests
    assert requests_served(None) is None


def test_the_watcher_takes_no_fall_of_its_target_for_a_restart():
    """``diag watch`` follows one pid: half its RSS freed at once (this test process is the
    target, 512 MiB its cache) is a big free there, with no fresh warm-up as a restart in a
    recording gets."""
    watcher = Watcher(os.getpid(), history="off", read_agent=lambda pid: None)
    cache = resident_block(512 * 2**20)
    for t in range(0, 1800, 10):
        watcher.tick(float(t))
    assert watcher.detector._regime_start == 0.0
    cache.close()
    for t in range(1800, 2400, 10):
        watcher.tick(float(t))
    assert watcher.detector._regime_start == 0.0
    assert watcher.detector.verdict.state != "warming_up"
