"""Builds prometheusrule.yaml from ../prometheus/diag-rules.yml (the promtool-tested rules),
so the operator's PrometheusRule is never a hand-edited copy:
`python deploy/kubernetes/build_prometheusrule.py`."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = """# Generated from ../prometheus/diag-rules.yml by build_prometheusrule.py: edit that.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: diag
  labels:
    release: prometheus
spec:
"""


def render() -> str:
    rules = (HERE.parent / "prometheus" / "diag-rules.yml").read_text()
    body = [line for line in rules.splitlines() if not line.startswith("#")]
    return HEADER + "\n".join(f"  {line}" if line else line for line in body) + "\n"


if __name__ == "__main__":
    (HERE / "prometheusrule.yaml").write_text(render())
