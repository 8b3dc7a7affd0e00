"""The diagnostic shapes (benchmarks/detector/shapes.py): each draw keeps the Trace contract
the scorer relies on, and the report covers every shape against both baseline rules."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.detector import shapes

HOUR = 3600.0


@pytest.mark.parametrize("index,shape", list(enumerate(shapes.SHAPES)))
def test_every_shape_draws_a_trace_the_scorer_can_judge(index, shape):
    for seed in range(2):
        trace = shapes.SHAPES[shape](np.random.default_rng([index, seed]), f"{shape}/{seed:03d}")
        t, v = trace.times, trace.values
        assert trace.family == shape and t.shape == v.shape
        assert np.all(np.diff(t) > 0) and np.all(np.isfinite(v)) and np.all(v > 0)
        if trace.kind == "leak":
            # It ends at its OOM, the first sample at or above the limit, an hour or more
            # after the onset: a leak the benchmark's recall counts.
            assert v[-1] >= trace.limit and np.all(v[:-1] < trace.limit)
            assert trace.t_oom == t[-1] and trace.t_oom - trace.t_leak >= HOUR
        else:
            assert trace.kind == "quiet" and trace.t_leak is None
            assert v.max() < trace.limit
        if trace.requests is not None:
            assert trace.requests.shape == t.shape and np.all(np.diff(trace.requests) >= 0)


def test_the_same_seed_draws_the_same_trace():
    for index, draw in enumerate(shapes.SHAPES.values()):
        a = draw(np.random.default_rng([index, 0]), "a/000")
        b = draw(np.random.default_rng([index, 0]), "b/000")
        assert np.array_equal(a.values, b.values)


def test_the_report_gives_every_shape_a_row_for_diag_both_ways_and_both_rules(capsys):
    assert shapes.main(["--seeds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1]
    assert "diag (default)" in header and "diag, one process" in header
    assert all(rule.short in header for rule in shapes.RULES)
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(shapes.SHAPES)
    for index, (shape, draw) in enumerate(shapes.SHAPES.items()):
        kind = draw(np.random.default_rng([index, 0]), f"{shape}/000").kind
        # A quiet shape's cells count false episodes; a leak's, the lead and leaks caught.
        cell = " false (" if kind == "quiet" else "/1)"
        assert rows[shape].count(cell) == 2 + len(shapes.RULES), rows[shape]


def test_the_benchmark_judges_as_the_agent_with_one_process(monkeypatch):
    """``python -m benchmarks.detector --one-process``: every trace judged as the agent and
    diag watch judge one process, so a flushed cache's falls are frees, not restarts (the
    draw the shapes report counts 3 false alerts on, judged as an export)."""
    from benchmarks.detector import score

    trace = shapes.flushed_cache_without_counts(np.random.default_rng([7, 3]), "flushed/003")
    (as_export,), _ = score.run_detector([trace], 1.0)
    monkeypatch.setattr(score, "JUDGED_AS_ONE_PROCESS", [True])
    (as_one_process,), _ = score.run_detector([trace], 1.0)
    assert score.judge(trace, as_export).false_episodes > 0
    assert score.judge(trace, as_one_process).false_episodes == 0
