"""A real Prometheus scrapes a service started with `diag run`: the target is healthy and the
agent's series are queryable through Prometheus's HTTP API. Loopback only, both processes always
ended."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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

MiB = 1024 * 1024
pytestmark = pytest.mark.e2e


class Prometheus:
    """Prometheus's HTTP API on 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError holds the response open; close it
                raise AssertionError(f"GET {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector as (labels, value) pairs."""
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def value(self, promql: str) -> float | None:
        """The single value of ``promql``, or None while it has no result yet."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return result[0][1] if result else None


def prometheus_command(binary: str, config: Path, tmp_path: Path, port: int) -> list[str]:
    """A Prometheus on 127.0.0.1:port with its TSDB under ``tmp_path``."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]


def write_config(tmp_path: Path, target_port: int) -> Path:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: diag\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    return config


def test_prometheus_scrapes_a_service_run_under_diag(tmp_path):
    prometheus_bin = require_tool("prometheus")
    promtool = require_tool("promtool")
    service_port, prometheus_port = free_port(), free_port()
    config = write_config(tmp_path, service_port)
    checked = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    service_log, prometheus_log = tmp_path / "service.stderr", tmp_path / "prometheus.stderr"
    service_argv = [*DIAG, "run", "--port", str(service_port), "--interval", "0.5", "--"]
    service_argv += [PYTHON, str(APPS / "prom_service.py")]
    prometheus_argv = prometheus_command(prometheus_bin, config, tmp_path, prometheus_port)
    with (
        spawned(service_argv, service_log, env=child_env()) as service,
        spawned(prometheus_argv, prometheus_log, cwd=tmp_path) as prometheus,
    ):
        assert read_line(service, service_log) == f"ready agent_port={service_port}"
        api = Prometheus(prometheus_port)

        def ready() -> bool:
            assert prometheus.poll() is None, log_of(prometheus_log)
            return "Ready" in api.get("/-/ready")

        poll(ready, timeout=20)

        expected = {
            'up{job="diag"}': lambda v: v == 1,
            'diag_process_resident_memory_bytes{job="diag"}': lambda v: v > MiB,
            'diag_memory_limit_bytes{job="diag"}': lambda v: v > 0,
            'diag_probe_enabled{job="diag",probe="process"}': lambda v: v == 1,
            # A counter keeps its _total through OpenMetrics, which Prometheus negotiates.
            'diag_gc_collections_total{job="diag",generation="0"}': lambda v: v >= 0,
            'diag_memory_limit_info{job="diag"}': lambda v: v == 1,
        }
        last: dict[str, float | None] = {}

        def scraped() -> bool:
            # Prometheus scrapes on its own schedule; it cannot tell us when it has.
            assert service.poll() is None, log_of(service_log)
            assert prometheus.poll() is None, log_of(prometheus_log)
            for promql in expected:
                last[promql] = api.value(promql)
            return all(last[q] is not None and ok(last[q]) for q, ok in expected.items())

        try:
            poll(scraped, timeout=20)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nlast values: {last}\nservice stderr:\n{log_of(service_log)}\n"
                f"prometheus stderr:\n{log_of(prometheus_log)}"
            ) from None

        # The target's labels are the scrape's; the agent adds no job/instance of its own.
        (labels, _), *_ = api.query('diag_process_resident_memory_bytes{job="diag"}')
        assert labels["instance"] == f"127.0.0.1:{service_port}"

        targets = api.get("/api/v1/targets", state="active")
        assert targets["status"] == "success", targets
        active = [t for t in targets["data"]["activeTargets"] if t["labels"]["job"] == "diag"]
        assert len(active) == 1, targets
        (target,) = active
        assert target["health"] == "up", target
        assert target["lastError"] == "", target
        assert target["scrapeUrl"] == f"http://127.0.0.1:{service_port}/metrics", target

        # Stopping: the service exits 0 on SIGTERM (it is the program diag exec'd: same pid).
        service.terminate()
        assert service.wait(15) == 0, log_of(service_log)
