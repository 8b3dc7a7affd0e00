import re

from diag.metrics import BY_NAME, CATALOG
from diag.settings import Settings
from diag.testing import FakeCudaModule
from probes.agent import Agent, default_probes
from probes.cuda import CudaProbe

UNITS = ("_bytes", "_seconds", "_total", "_objects", "_blocks", "_enabled", "_info", "_series")


def test_names_follow_prometheus_conventions():
    assert len(BY_NAME) == len(CATALOG)
    for spec in CATALOG:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert spec.name.endswith(UNITS), f"{spec.name} lacks a unit suffix"
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
        spec = BY_NAME[sample.name]
        assert tuple(k for k, _ in sample.labels) == spec.labels, sample
    emitted_probes = {BY_NAME[n].probe for n in names}
    assert {"process", "heap", "limits", "cuda", "agent"} <= emitted_probes
