"""The Grafana dashboard: it imports anywhere (a datasource variable), covers what operators
need, and every query is valid PromQL (checked by the real promtool) on diag's metrics."""

import json
import re
import subprocess

import pytest

from diag.metrics import spec_of_sample
from tests.conftest import REPO, require_tool

DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "diag-dashboard.json").read_text())
# Grafana's own variables, replaced the way Grafana would before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def _queries():
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def test_it_imports_anywhere_through_a_datasource_variable():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_it_shows_what_an_operator_needs():
    text = " ".join(_queries())
    for needed in ("diag_process_resident_memory_bytes", "diag_memory_limit_bytes",
                   "diag_growth_bytes_per_second", "diag_seconds_to_oom", "diag_leak_suspected",
                   "diag_retained_bytes_per_request", "diag_tracemalloc_top_bytes",
                   "diag_requests_total", "diag_request_duration_seconds_bucket"):  # fmt: skip
        assert needed in text, needed


@pytest.mark.e2e
def test_every_query_uses_diag_metrics_and_parses_in_promtool(tmp_path):
    promtool = require_tool("promtool")
    rules = []
    for i, query in enumerate(_queries()):
        for name in re.findall(r"\bdiag_(\w+)", query):
            assert spec_of_sample(name) is not None, f"diag_{name} in {query!r}"
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "queries.rules.json"  # YAML is a superset of JSON: promtool reads it
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_json_is_what_the_builder_writes():
    import runpy

    builder = runpy.run_path(str(REPO / "deploy" / "grafana" / "build_dashboard.py"))
    assert builder["render"]() == (REPO / "deploy" / "grafana" / "diag-dashboard.json").read_text()
