"""Fast checks of the real-trace library recorder: its plan and its loader (no recording)."""

from __future__ import annotations

import csv
import gzip
import json

from benchmarks.detector import record_library as rl


def test_plan_meets_the_brief():
    leaks = {n: s for n, s in rl.SPECS.items() if s.kind == "leak"}
    quiet = {n: s for n, s in rl.SPECS.items() if s.kind == "quiet"}
    assert len(leaks) >= 5 and len(quiet) >= 8
    for spec in rl.SPECS.values():
        assert 300 <= spec.limit_mib <= 900
        assert spec.interval in (1.0, 2.0, 5.0, 10.0)
    for spec in leaks.values():
        assert 15 <= spec.onset <= 35 and 60 <= spec.oom_after <= 90
        assert spec.onset + spec.oom_after < spec.minutes
    planned = sum(s.minutes for s in quiet.values()) + sum(
        s.onset + s.oom_after for s in leaks.values()
    )
    assert planned / 60 >= 24
    for name in rl.SPECS:
        assert callable(getattr(rl, f"serve_{name}"))


def _write(directory, name, kind, t_oom, rows):
    with gzip.open(directory / f"{name}.csv.gz", "at", newline="") as f:
        csv.writer(f).writerow(["t", "value", "requests"])
    with gzip.open(directory / f"{name}.csv.gz", "at", newline="") as f:  # a second member
        csv.writer(f).writerows(rows)
    meta = {
        "name": name,
        "family": "cache",
        "kind": kind,
        "limit": 1000,
        "t_leak": 1.0 if kind == "leak" else None,
        "t_oom": t_oom,
        "starts": [0.0],
        "recorded": {},
    }
    (directory / f"{name}.json").write_text(json.dumps(meta))


def test_load_library(tmp_path):
    _write(tmp_path, "a", "quiet", None, [(0, 10, 0), (1, 20, 3)])
    _write(tmp_path, "b", "leak", 2.0, [(0, 10, 0), (1, 500, 5), (2, 990, 9)])
    _write(tmp_path, "c", "leak", None, [(0, 10, 0)])  # not OOM-killed: left out
    (tmp_path / "d.json.part").write_text("{}")  # still recording: left out
    traces = rl.load_library(tmp_path)
    assert [t.name for t in traces] == ["real2/a", "real2/b"]
    b = traces[1]
    assert b.source == "real" and b.t_oom == 2.0 and b.limit == 1000.0
    assert list(b.values) == [10, 500, 990] and list(b.requests) == [0, 5, 9]


def test_a_later_take_is_the_same_service_run_anew():
    spec = rl.SPECS["lru_small"]
    assert rl.take_name("lru_small", 1) == "lru_small"
    assert rl.take_name("lru_small", 2) == "lru_small_take2"
    intervals = [rl.take_interval(spec, take) for take in (1, 2, 3, 4, 5)]
    assert intervals[0] == spec.interval and intervals[4] == spec.interval
    assert sorted(intervals[:4]) == sorted(rl.INTERVALS)  # each take samples differently
    first, second = (rl._seed_text("lru_small", take) for take in (1, 2))
    assert first == "lru_small" and second != first  # take 1 keeps the recorded draws


def test_the_tuning_library_is_other_services_on_the_same_recorder(tmp_path):
    from benchmarks.detector import record_tune as rt

    assert not set(rt.SPECS) & set(rl.SPECS)  # the test library's services stay unseen
    leaks = [s for s in rt.SPECS.values() if s.kind == "leak"]
    assert len(leaks) >= 5 and len(rt.SPECS) - len(leaks) >= 5
    assert sum(s.limit_mib for s in rt.SPECS.values()) <= 8192  # beside the test library
    for name, spec in rt.SPECS.items():
        assert spec.interval in rl.INTERVALS
        assert callable(getattr(rt, f"serve_{name}"))
    for spec in leaks:
        assert spec.onset + spec.oom_after < spec.minutes  # killed before the recording ends
    _write(tmp_path, "x", "quiet", None, [(0, 10, 0), (1, 20, 3)])
    assert [t.name for t in rt.load_tune_library(tmp_path)] == ["real_tune/x"]
