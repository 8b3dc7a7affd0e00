"""The benchmark's perturbations change how a trace is measured, never its ground truth."""

import numpy as np
import pytest

from benchmarks.detector import perturb
from benchmarks.detector.traces import generate


@pytest.fixture(scope="module")
def traces():
    picked = generate(0, "tune", 0.1)
    return [t for t in picked if t.kind == "leak"][:3] + [t for t in picked if t.kind == "quiet"][
        :3
    ]


@pytest.mark.parametrize("name", list(perturb.PERTURBATIONS))
def test_a_perturbation_keeps_the_ground_truth(traces, name):
    out = perturb.perturbed(traces, name)
    again = perturb.perturbed(traces, name)
    for before, after, same in zip(traces, out, again, strict=True):
        assert np.array_equal(after.times, same.times)  # seeded per trace
        assert np.array_equal(after.values, same.values)
        assert (after.t_leak, after.t_oom, after.limit, after.starts, after.kind) == (
            before.t_leak,
            before.t_oom,
            before.limit,
            before.starts,
            before.kind,
        )
        assert np.all(np.diff(after.times) > 0)
        assert after.times[0] >= before.times[0] and after.times[-1] <= before.times[-1]
        if before.kind == "leak":  # it still ends at its OOM sample
            assert after.times[-1] == before.t_oom
            assert after.values[-1] >= after.limit


def test_resampling_and_quantising_do_what_they_say(traces):
    coarse = perturb.perturbed(traces, "dt-60s")
    for before, after in zip(traces, coarse, strict=True):
        if np.median(np.diff(before.times)) < 60:
            assert 40 < np.median(np.diff(after.times)) < 80
    step = 20 * perturb.MiB
    for before, after in zip(traces, perturb.perturbed(traces, "quant-20MiB"), strict=True):
        rounded = after.values[:-1] if before.kind == "leak" else after.values
        assert np.allclose(rounded % step, 0) or np.allclose(
            rounded / step, np.round(rounded / step)
        )
