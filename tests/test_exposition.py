import prometheus_client

from diag.model import Sample
from diag.settings import Settings
from diag.testing import FakeClock, FakeProbe
from probes.agent import Agent
from probes.sampler import Sampler


def _agent(samples, **settings):
    probe = FakeProbe("fake", samples)
    return Agent(Settings(**settings), probes=[probe], clock=FakeClock()), probe


def test_a_scrape_only_reads_the_latest_tick():
    agent, probe = _agent([Sample("process_resident_memory_bytes", 123.0)])
    assert "diag_process_resident_memory_bytes" not in agent.metrics_text()  # no tick yet
    agent.sampler.tick()
    for _ in range(5):
        text = agent.metrics_text()
    assert probe.calls == 1
    assert "diag_process_resident_memory_bytes 123.0" in text


def test_families_are_typed_and_documented_from_the_catalog():
    agent, _ = _agent(
        [
            Sample("process_resident_memory_bytes", 1.0),
            Sample("cgroup_oom_kills_total", 2.0),
            Sample("cuda_allocated_bytes", 3.0, (("device", "0"),)),
        ]
    )
    agent.sampler.tick()
    text = agent.metrics_text()
    assert "# TYPE diag_process_resident_memory_bytes gauge" in text
    assert "# HELP diag_process_resident_memory_bytes Resident set size (VmRSS)." in text
    assert "# TYPE diag_cgroup_oom_kills_total counter" in text
    assert "diag_cgroup_oom_kills_total 2.0" in text
    assert 'diag_cuda_allocated_bytes{device="0"} 3.0' in text
    assert 'diag_probe_enabled{probe="fake"} 1.0' in text


def test_namespace_is_configurable():
    agent, _ = _agent([Sample("process_resident_memory_bytes", 1.0)], namespace="tts")
    agent.sampler.tick()
    text = agent.metrics_text()
    assert "tts_process_resident_memory_bytes 1.0" in text
    assert "diag_" not in text


def test_the_hosts_default_registry_is_untouched():
    agent, _ = _agent([Sample("process_resident_memory_bytes", 1.0)])
    agent.sampler.tick()
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "diag_" not in default


def test_sampler_sources_are_labelled_per_worker():
    from probes.exposition import TickCollector, make_registry

    sampler = Sampler([FakeProbe("f", [Sample("process_resident_memory_bytes", 5.0)])])
    sampler.tick()
    assert sampler.latest is not None
    own = sampler.latest.samples
    worker = [Sample("process_resident_memory_bytes", 7.0)]
    registry = make_registry(TickCollector(lambda: [((), own), ((("worker", "0"),), worker)]))
    text = prometheus_client.generate_latest(registry).decode()
    assert "diag_process_resident_memory_bytes 5.0" in text
    assert 'diag_process_resident_memory_bytes{worker="0"} 7.0' in text
