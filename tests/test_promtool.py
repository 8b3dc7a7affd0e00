"""The exposition passes `promtool check metrics` (Prometheus's own parser and linter), and every
family in it is one the catalog documents.

Two sources: an in-process agent with every probe that exists producing rows (a fake two-device
torch.cuda and a fake NVML standing in for the GPU this machine lacks, tracemalloc on), and a
real pre-fork server under `diag run` whose two forked workers publish to the master, scraped
over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import tracemalloc
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diag.metrics import BY_NAME, CATALOG, spec_of_sample
from diag.settings import Settings
from diag.testing import FakeClock, FakeCudaModule, memory_stats_dict
from probes.agent import Agent, default_probes
from probes.base import Cadence, Probe
from probes.cuda import CudaProbe, NvmlProbe
from probes.tracing import TracemallocProbe
from tests.conftest import (
    APPS,
    DIAG,
    PYTHON,
    child_env,
    free_port,
    log_of,
    poll,
    read_line,
    require_tool,
    spawned,
)

PREFIX = "diag_"
MiB = 1024 * 1024
# Families that exist only where the host has a memory cgroup with the files we read.
HOST_DEPENDENT = {
    "cgroup_memory_limit_bytes",
    "cgroup_memory_usage_bytes",
    "cgroup_oom_kills_total",
}
# Families that need hours of growth or recorded requests: linted in test_agent_detector.py.
NEED_HISTORY = {
    "requests_total",
    "request_errors_total",
    "request_duration_seconds",
    "retained_bytes_per_request",
    "seconds_to_oom",
    "seconds_to_oom_low",
    "seconds_to_oom_high",
    "seconds_to_exhaustion",
    "seconds_to_exhaustion_low",
    "seconds_to_exhaustion_high",
    # Rows only while the process holds sockets or unfinished asyncio tasks (this test's does
    # not); tests/test_resources_e2e.py scrapes them from real holders (not through promtool).
    "sockets",
    "asyncio_tasks",
}


# -- helpers --------------------------------------------------------------------------------


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_promtool_clean(text: str) -> None:
    result = promtool_check(text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), (
        f"promtool check metrics exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def parse(text: str) -> dict[str, Any]:
    """{family name: family} as prometheus_client's text parser reads them."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def assert_catalogued(families: dict[str, Any]) -> set[str]:
    """Every sample is a catalogued metric with the family type the catalog gives it; returns
    the catalog names seen."""
    seen: set[str] = set()
    for family in families.values():
        for sample in family.samples:
            assert sample.name.startswith(PREFIX), sample.name
            spec = spec_of_sample(sample.name[len(PREFIX) :])
            assert spec is not None, f"{sample.name} is not in diag.metrics.CATALOG"
            assert family.type == spec.kind, (sample.name, family.type, spec.kind)
            assert set(spec.labels) <= set(sample.labels), (sample.name, sample.labels)
            seen.add(spec.name)
    return seen


def rows(families: dict[str, Any], name: str) -> list[Any]:
    """The samples of catalog metric ``name`` (family names drop a counter's ``_total``)."""
    family_name = PREFIX + name
    if BY_NAME[name].kind == "counter":
        family_name = family_name.removesuffix("_total")
    family = families.get(family_name)
    return list(family.samples) if family is not None else []


class FakeNvml(SimpleNamespace):
    """pynvml's calls that NvmlProbe makes, for ``devices`` devices, this process using some."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: int, used_by_us: int) -> None:
        super().__init__(devices=devices, used_by_us=used_by_us)

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 1024**3, used=2 * self.used_by_us, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=self.used_by_us),
            SimpleNamespace(pid=1, usedGpuMemory=self.used_by_us),
            SimpleNamespace(pid=2, usedGpuMemory=None),  # hidden by the driver
        ]


def all_probes(settings: Settings) -> list[Probe]:
    """The default probes, with the GPU ones on fakes and tracemalloc sites every tick."""
    cuda = FakeCudaModule(
        stats={
            0: memory_stats_dict(allocated=3 * MiB, reserved=8 * MiB, peak=5 * MiB, retries=1),
            1: memory_stats_dict(allocated=MiB, reserved=2 * MiB, peak=MiB, inactive_split=512),
        }
    )
    nvml = FakeNvml(devices=2, used_by_us=64 * MiB)
    replacements: dict[str, Probe] = {
        "cuda": CudaProbe(cuda=lambda: cuda),
        "nvml": NvmlProbe(nvml=lambda: nvml),
        "tracemalloc": TracemallocProbe(
            start=True, top=settings.top_sites, cadence=Cadence(0.0, budget=1.0)
        ),
    }
    probes = [replacements.get(p.name, p) for p in default_probes(settings)]
    assert {p.name for p in probes} >= set(replacements) | {"process", "heap", "limits"}
    return probes


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


# -- the in-process agent, every probe --------------------------------------------------------


@pytest.mark.e2e
def test_every_probe_exposition_passes_promtool_and_is_catalogued():
    require_tool("promtool")
    was_tracing = tracemalloc.is_tracing()
    probes: list[Probe] = []
    try:
        settings = Settings(trace=True)
        probes = all_probes(settings)
        clock = FakeClock()
        agent = Agent(settings, probes=probes, clock=clock)
        agent.sampler.tick()  # the first tick starts tracemalloc
        kept = [bytearray(b"\x01" * MiB) for _ in range(5)]  # an allocation site of ours
        clock.advance(5.0)
        agent.sampler.tick()
        del kept  # held across the tick above, so its site is among the top
        text = agent.metrics_text()
        status = {s.name: s for s in agent.sampler.status()}
    finally:
        if not was_tracing:
            tracemalloc.stop()
        for probe in probes:
            close = getattr(probe, "close", None)
            if close is not None:
                close()

    assert all(s.sampled for s in status.values()), {n: s.reason for n, s in status.items()}
    assert_promtool_clean(text)

    families = parse(text)
    seen = assert_catalogued(families)
    # Every catalogued metric is exposed and linted, but those of a cgroup this host may lack.
    expected = {spec.name for spec in CATALOG} - HOST_DEPENDENT - NEED_HISTORY
    assert expected <= seen, expected - seen
    for probe in (
        "process",
        "heap",
        "limits",
        "cuda",
        "nvml",
        "tracemalloc",
        "agent",
        "escalation",
    ):
        assert any(BY_NAME[name].probe == probe for name in seen), probe

    # cuda and nvml: one row per device, from the fakes.
    for name in ("cuda_allocated_bytes", "cuda_total_bytes", "gpu_process_used_bytes"):
        assert sorted(s.labels["device"] for s in rows(families, name)) == ["0", "1"], name
    allocated = {s.labels["device"]: s.value for s in rows(families, "cuda_allocated_bytes")}
    assert allocated == {"0": 3 * MiB, "1": MiB}
    assert {s.value for s in rows(families, "gpu_process_used_bytes")} == {64 * MiB}

    # tracemalloc: the top sites include our 5 MiB, and the rest is summed as site="other".
    sites = {s.labels["site"]: s.value for s in rows(families, "tracemalloc_top_bytes")}
    assert "other" in sites
    ours = {k: v for k, v in sites.items() if k.startswith("tests/test_promtool.py:")}
    assert sum(ours.values()) >= 5 * MiB, sites
    assert 0 < len(sites) <= settings.top_sites + 1

    # limits, heap, process and the agent's own families.
    (limit,) = rows(families, "memory_limit_bytes")
    assert limit.value > 0
    assert len(rows(families, "memory_limit_info")) == 1
    assert sorted(s.labels["generation"] for s in rows(families, "gc_collections_total")) == [
        "0",
        "1",
        "2",
    ]
    (rss,) = rows(families, "process_resident_memory_bytes")
    assert rss.value > MiB
    enabled = {s.labels["probe"]: s.value for s in rows(families, "probe_enabled")}
    assert enabled == {p.name: 1.0 for p in probes} | {
        "detector": 1.0,
        "requests": 1.0,
        "history": 1.0,
        "escalation": 1.0,
    }
    (last_tick,) = rows(families, "last_tick_timestamp_seconds")
    assert last_tick.value == clock.now


# -- a real pre-fork server under `diag run`, scraped over HTTP ---------------------------------


@pytest.mark.e2e
def test_served_exposition_with_forked_workers_passes_promtool(tmp_path):
    require_tool("promtool")
    port = free_port()
    log = tmp_path / "service.stderr"
    argv = [*DIAG, "run", "--port", str(port), "--interval", "0.2", "--"]
    argv += [PYTHON, str(APPS / "prom_workers.py"), "2"]
    with spawned(argv, log, stdin=subprocess.PIPE, env=child_env()) as proc:
        assert read_line(proc, log) == f"ready agent_port={port} role=server workers=2"

        def with_both_workers() -> str | None:
            # The workers publish from their own sampler threads: nothing to wait on but this.
            text = scrape(port)
            workers = {
                s.labels.get("worker") for s in rows(parse(text), "process_resident_memory_bytes")
            }
            return text if workers == {None, "0", "1"} else None

        text = poll(with_both_workers, timeout=20)

        assert_promtool_clean(text)
        families = parse(text)
        seen = assert_catalogued(families)
        assert {"process_resident_memory_bytes", "memory_limit_bytes", "probe_enabled"} <= seen
        for sample in rows(families, "process_resident_memory_bytes"):
            assert sample.value > MiB, sample
        # Each worker's rows carry its slot, the master's carry none; nothing is duplicated.
        for family in families.values():
            keys = [(s.name, tuple(sorted(s.labels.items()))) for s in family.samples]
            assert len(keys) == len(set(keys)), family.name

        assert proc.stdin is not None
        proc.stdin.close()  # the master's cue to stop its workers and exit
        assert proc.wait(15) == 0, log_of(log)
