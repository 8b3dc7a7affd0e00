"""The catalogue of watched series: every reader takes its list from it, and one limit rule."""

import pytest

from diag import watched
from diag.metrics import BY_NAME as METRICS
from diag.model import Sample, labels_of
from diag.testing import FakeClock
from probes.analysis import DISCOUNTED, JUDGED, GrowthAnalyzer

GiB = 2**30
DEVICE = labels_of(device="0")


def test_every_watched_series_is_an_exported_metric_and_every_total_too():
    for row in watched.CATALOGUE:
        assert row.name in METRICS, row.name
        assert row.readers, row.name
        assert (row.limit in ("device", "own")) == (row.total is not None), row.name
        if row.total is not None:
            assert row.total in METRICS
    assert len(watched.BY_NAME) == len(watched.CATALOGUE)


def test_the_readers_lists_come_from_the_catalogue():
    assert {r.name for r in watched.CATALOGUE if "detector" in r.readers} == JUDGED
    assert {r.name for r in watched.CATALOGUE if r.disturbed_by_dumps} == DISCOUNTED
    assert watched.names_read_by("report")[0] == "process_resident_memory_bytes"
    assert "gpu_process_used_bytes" in watched.names_read_by("report")
    assert "gpu_process_used_bytes" not in watched.names_read_by("analyze")
    assert "cuda_alloc_retries_total" in watched.names_read_by("cause")


def test_host_series_are_judged_against_their_value_plus_the_headroom():
    tick = {("memory_limit_bytes", ()): 8 * GiB, ("memory_limit_usage_bytes", ()): 6 * GiB}
    assert watched.limit_for("process_resident_memory_bytes", (), 1 * GiB, tick) == 3 * GiB
    # Usage past the limit (a cgroup reclaiming): no negative headroom.
    over = {**tick, ("memory_limit_usage_bytes", ()): 9 * GiB}
    assert watched.limit_for("malloc_in_use_bytes", (), 1 * GiB, over) == 1 * GiB
    assert watched.limit_for("process_resident_memory_bytes", (), 1 * GiB, {}) is None


def test_device_series_are_judged_against_their_own_devices_total():
    tick = {("cuda_total_bytes", DEVICE): 80 * GiB, ("cuda_total_bytes", labels_of(device="1")): 1}
    assert watched.limit_for("cuda_allocated_bytes", DEVICE, 5 * GiB, tick) == 80 * GiB
    assert watched.limit_for("gpu_process_used_bytes", DEVICE, 5 * GiB, tick) is None
    assert watched.limit_for("gc_tracked_objects", (), 5.0, tick) is None
    assert watched.limit_for("not_a_series", (), 5.0, tick) is None


def test_a_new_row_is_judged_by_the_agent_with_no_other_change(monkeypatch):
    """Adding a series is one row: the agent's analyzer judges it against its limit."""
    row = watched.Watched(
        "process_swap_bytes", "swap", "host", frozenset({"detector", "report"}), False, None
    )
    catalogue = (*watched.CATALOGUE, row)
    monkeypatch.setattr(watched, "CATALOGUE", catalogue)
    monkeypatch.setattr(watched, "BY_NAME", {r.name: r for r in catalogue})
    monkeypatch.setattr("probes.analysis.JUDGED", frozenset(watched.names_read_by("detector")))
    assert "process_swap_bytes" in watched.names_read_by("report")
    analyzer = GrowthAnalyzer()
    clock = FakeClock(0.0)
    out: list[Sample] = []
    for i in range(5):
        out = analyzer.analyze(
            clock(),
            [
                Sample("process_swap_bytes", 1e6 * (i + 1)),
                Sample("memory_limit_bytes", 8.0 * GiB),
                Sample("memory_limit_usage_bytes", 2.0 * GiB),
            ],
        )
        clock.advance(10.0)
    judged = [s for s in out if dict(s.labels).get("series") == "process_swap_bytes"]
    assert {s.name for s in judged} >= {"leak_suspected", "growth_bytes_per_second"}
    assert "process_swap_bytes" in analyzer.verdicts


@pytest.mark.parametrize("reader", ["detector", "report", "analyze", "watch", "cause"])
def test_each_reader_reads_something(reader):
    assert watched.read_by(reader)
