"""The deploy/ alert rules in a real Prometheus, against the real reference services.

The leaking TTS service and its bounded twin run under `diag run` (each in its own memory
cgroup, so that its forecast meets a limit), driven by the load generator. Prometheus scrapes
both and evaluates deploy/prometheus/diag-rules.yml with its `for:` delays shortened to 5 s and
the detector's clock 120 times faster and traced windows of 4 s (as in `diag demo`): everything
else is the shipped rule. The leak alert must go pending, then firing, for the leaking service,
and nothing may even go pending for the twin, though its RSS wobbles by tens of MB and its own
traced window (opened when a wobble reads as "growing") steps it up further.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.conftest import (
    DIAG,
    REPO,
    child_env,
    free_port,
    log_of,
    memory_cgroup,
    poll,
    require_tool,
    spawned,
)
from tests.test_e2e_prometheus import Prometheus, prometheus_command

pytestmark = pytest.mark.e2e
LEAK_ALERT = "DiagMemoryLeakSuspected"


def test_the_leak_alert_goes_pending_then_firing_for_the_leak_only(tmp_path):
    pytest.importorskip("fastapi")
    prometheus_bin = require_tool("prometheus")
    rules = (REPO / "deploy" / "prometheus" / "diag-rules.yml").read_text()
    (tmp_path / "rules.yml").write_text(re.sub(r"for: \d+[smh]", "for: 5s", rules))
    ports = {name: (free_port(), free_port()) for name in ("leaking", "twin")}
    scrape = "".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n"
        for name, (metrics, _) in ports.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{tmp_path / 'rules.yml'}']\nscrape_configs:\n{scrape}"
    )
    env = child_env(
        DIAG_TIME_SCALE="120", DIAG_ESCALATION_WINDOW="4", TTS_SAMPLES_PER_CHAR="1024",
        PYTHONPATH=str(REPO),
    )  # fmt: skip
    apps = {"leaking": "examples.tts_service:app", "twin": "examples.tts_service_fixed:app"}
    prometheus_port = free_port()
    seen: list[tuple[str, str, str, str]] = []  # (job, alertname, state, series)
    twin_history = ""
    stop = threading.Event()
    sys.path.insert(0, str(REPO))
    from examples.loadgen import drive

    with (
        memory_cgroup(600 * 1024 * 1024) as join_leaking,
        memory_cgroup(600 * 1024 * 1024, name="twin") as join_twin,
    ):
        joins = {"leaking": join_leaking, "twin": join_twin}
        argv = {
            name: [*DIAG, "run", "--port", str(metrics), "--interval", "0.25", "--",
                   sys.executable, "-m", "uvicorn", apps[name], "--port", str(port),
                   "--log-level", "warning"]
            for name, (metrics, port) in ports.items()
        }  # fmt: skip
        prometheus_argv = prometheus_command(prometheus_bin, config, tmp_path, prometheus_port)
        with (
            spawned(argv["leaking"], tmp_path / "leaking.log", env=env, cwd=REPO,
                    preexec_fn=joins["leaking"]),
            spawned(argv["twin"], tmp_path / "twin.log", env=env, cwd=REPO,
                    preexec_fn=joins["twin"]) as twin,
            spawned(prometheus_argv, tmp_path / "prometheus.log", cwd=tmp_path),
        ):  # fmt: skip
            api = Prometheus(prometheus_port)

            def both_scraped() -> bool:
                targets = api.get("/api/v1/targets", state="active")["data"]["activeTargets"]
                return sorted(t["labels"]["job"] for t in targets if t["health"] == "up") == [
                    "leaking",
                    "twin",
                ]

            # Prometheus up and both agents serving before the clock of the scenario starts.
            poll(both_scraped, timeout=60, every=0.5)
            operator_dump: dict[str, Any] = {}

            def dump_the_twin() -> None:
                """An operator's traced dump of the healthy twin: the pause and the tracing
                step its RSS up, which must not read as a leak."""
                time.sleep(5)
                done = subprocess.run(
                    [*DIAG, "dump", "--pid", str(twin.pid), "--window", "20", "--json"],
                    capture_output=True, text=True, env=env, timeout=200,
                )  # fmt: skip
                operator_dump.update(done=done, ended=time.monotonic())

            threading.Thread(target=dump_the_twin, daemon=True).start()
            loads = [
                threading.Thread(target=drive, args=(f"http://127.0.0.1:{port}", 12.0, 160.0),
                                 kwargs={"stop": stop}, daemon=True)
                for _, port in ports.values()
            ]  # fmt: skip
            for load in loads:
                load.start()

            def fired() -> bool:
                alerts = api.get("/api/v1/alerts")["data"]["alerts"]
                for alert in alerts:
                    labels = alert["labels"]
                    entry = (labels.get("job"), labels["alertname"], alert["state"],
                             labels.get("series", ""))  # fmt: skip
                    if entry not in seen:
                        seen.append(entry)
                settled = time.monotonic() - operator_dump.get("ended", math.inf) > 10
                return settled and any(e[:3] == ("leaking", LEAK_ALERT, "firing") for e in seen)

            try:
                # About 60 s here; the rest is for a slow machine (the operator's dump pauses
                # the twin twice and traces it for 20 s before the 10 s of settling).
                poll(fired, timeout=160, every=0.5)
            except AssertionError as exc:
                dumped = operator_dump.get("done")
                raise AssertionError(
                    f"{exc}\nseen: {seen}\noperator's dump of the twin: "
                    f"{'not ended' if dumped is None else dumped.returncode}"
                    f"\n{_history_of(api, 'leaking')}"
                    f"\nleaking: {log_of(tmp_path / 'leaking.log')}"
                    f"\ntwin: {log_of(tmp_path / 'twin.log')}"
                ) from None
            finally:
                stop.set()
                if any(entry[0] == "twin" for entry in seen):
                    twin_history = _history_of(api, "twin")
    leaking = {series for job, name, _, series in seen if job == "leaking" and name == LEAK_ALERT}
    for series in leaking:
        states = [
            s for job, name, s, of in seen if (job, name, of) == ("leaking", LEAK_ALERT, series)
        ]
        assert states[:2] == ["pending", "firing"][: len(states)], seen
    assert operator_dump["done"].returncode == 0, operator_dump["done"].stderr
    assert not [entry for entry in seen if entry[0] == "twin"], f"{seen}\n{twin_history}"


def _history_of(api: Prometheus, job: str) -> str:
    """What the detector saw of a job, for the failure message: RSS and the leak flag."""
    lines = []
    for name in ("diag_process_resident_memory_bytes", "diag_leak_suspected"):
        try:
            results = api.get("/api/v1/query", query=f'{name}{{job="{job}"}}[200s]')["data"]
        except Exception as exc:  # the failure message must not hide the failure
            return f"(no history: {exc})"
        for result in results["result"]:
            values = " ".join(f"{float(v):.4g}" for _, v in result["values"][::2])
            lines.append(f"{name}{result['metric'].get('series', '')}: {values}")
    return "\n".join(lines)
