import re

from diag.metrics import BY_NAME, CATALOG, spec_of_sample
from diag.settings import Settings
from diag.testing import FakeCudaModule
from probes.agent import Agent, default_probes
from probes.cuda import CudaProbe

# Base units, counts and 0/1 flags: every name says what its number is.
UNITS = (
    *("bytes", "seconds", "total", "objects", "blocks", "info", "series"),
    *("enabled", "suspected", "full", "active"),
    # resources: counts of what they name, and a rate per second
    *("fds", "sockets", "threads", "tasks", "processes", "maps", "usage", "limit", "second"),
)


def test_names_follow_prometheus_conventions():
    assert len(BY_NAME) == len(CATALOG)
    for spec in CATALOG:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert set(spec.name.split("_")) & set(UNITS), f"{spec.name} names no unit"
        assert "pid" not in spec.labels and "address" not in spec.labels
        assert spec.help.endswith(".")


def test_every_emitted_sample_is_in_the_catalog_with_its_labels():
    probes = [
        CudaProbe(cuda=lambda: FakeCudaModule()) if p.name == "cuda" else p
        for p in default_probes(Settings())
    ]
    agent = Agent(Settings(), probes=probes)
    tick = agent.sampler.tick()
    names = {s.name for s in tick.samples}
    for sample in tick.samples:
        spec = spec_of_sample(sample.name)
        assert spec is not None, sample
        keys = tuple(k for k, _ in sample.labels)
        if spec.series_labels:
            assert set(spec.labels) <= set(keys), sample
        elif spec.kind == "histogram" and sample.name.endswith("_bucket"):
            assert keys == tuple(sorted((*spec.labels, "le"))), sample
        else:
            assert keys == spec.labels, sample
    emitted_probes = {spec_of_sample(n).probe for n in names}
    assert {"process", "heap", "limits", "cuda", "agent", "detector"} <= emitted_probes
