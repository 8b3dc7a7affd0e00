"""The Alertmanager route and the Kubernetes manifests: well-formed, and consistent with the
rules and the agent's settings."""

import runpy

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def test_the_alertmanager_route_sends_every_diag_alert_somewhere():
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    assert all(child["receiver"] in receivers for child in route["routes"])
    rules = yaml.safe_load((DEPLOY / "prometheus" / "diag-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    matchers = " ".join(m for child in route["routes"] for m in child["matchers"])
    assert all(alert in matchers for alert in alerts)


def test_the_prometheusrule_is_the_tested_rules():
    built = runpy.run_path(str(DEPLOY / "kubernetes" / "build_prometheusrule.py"))["render"]()
    assert built == (DEPLOY / "kubernetes" / "prometheusrule.yaml").read_text()
    rule = yaml.safe_load(built)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "diag-rules.yml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == rules


def test_the_deployment_example_matches_the_podmonitor_and_the_settings():
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment-example.yaml").read_text())
    monitor = yaml.safe_load((DEPLOY / "kubernetes" / "podmonitor.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert str(ports[endpoint["port"]]) == env["DIAG_PORT"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["DIAG_HISTORY"] in mounts  # the history outlives the pod
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
