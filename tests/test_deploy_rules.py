"""The shipped Prometheus alert rules, checked and unit-tested by the real promtool."""

import re
import subprocess

import pytest

from diag.metrics import BY_NAME
from tests.conftest import REPO, require_tool

RULES = REPO / "deploy" / "prometheus"


@pytest.mark.e2e
def test_rules_are_valid_and_every_rule_fires_and_stays_silent_as_tested():
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES / "diag-rules.yml")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "diag-rules.test.yml"], cwd=RULES,
                            capture_output=True, text=True)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_rules_use_only_metrics_diag_exports():
    text = (RULES / "diag-rules.yml").read_text()
    for name in set(re.findall(r"\bdiag_(\w+)", text)):
        assert name in BY_NAME, f"diag_{name} is not a diag metric"
    for alert in ("DiagMemoryLeakSuspected", "DiagOutOfMemorySoon",
                  "DiagMemoryRetainedPerRequest", "ProcessMemoryPredictedOverLimit",
                  "DiagResourceLeakSuspected", "DiagResourceExhaustionSoon"):  # fmt: skip
        assert alert in (RULES / "diag-rules.test.yml").read_text(), f"{alert} has no test"
