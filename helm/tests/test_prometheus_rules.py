"""(7) Alerts: the chart's PrometheusRule passes `promtool test rules` with a test case per
alert, selects only the labels the chart's ServiceMonitors (and deploy/prometheus/prometheus.yml)
give the series, uses only emitted metrics, and deploy/prometheus/heliograph-rules.yml is the
same file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CHART, REPO, manifests, read
from test_metrics_docs import NAME, base_name, documented_emitted

RULES_SOURCE = CHART / "files" / "prometheus-rules.yml"
RULES_COPY = REPO / "deploy" / "prometheus" / "heliograph-rules.yml"
RULES_TEST = Path(__file__).parent / "prometheus" / "heliograph-rules.test.yml"
ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
      "region": "us"}


def rendered_rule() -> dict[str, Any]:
    (rule,) = [d for d in manifests(ON) if d["kind"] == "PrometheusRule"]
    return rule


def alerts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def test_prometheus_rule_is_off_by_default_and_labelled() -> None:
    assert not [d for d in manifests({}) if d["kind"] == "PrometheusRule"]
    rule = rendered_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    with_labels = manifests(ON | {"metrics": ON["metrics"] | {
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}})
    (r,) = [d for d in with_labels if d["kind"] == "PrometheusRule"]
    assert r["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_deploy_rules_file_is_the_charts() -> None:
    assert RULES_COPY.read_text() == RULES_SOURCE.read_text(), (
        "deploy/prometheus/heliograph-rules.yml differs from helm/heliograph/files/prometheus-rules.yml:"
        " copy the chart's file over it")
    assert rendered_rule()["spec"] == yaml.safe_load(RULES_SOURCE.read_text())


def test_alerts_use_only_emitted_metrics() -> None:
    known = documented_emitted()
    exprs = [a["expr"] for a in alerts(rendered_rule()["spec"])]
    used = {base_name(n, known) for e in exprs for n in NAME.findall(e)}
    assert used and used <= set(known), used - set(known)
    for want in ("HeliographEdgeDown", "HeliographRaftNoLeader", "HeliographRedisDown",
                 "HeliographRelayLatencyHigh", "HeliographResumeFailures"):
        assert want in {a["alert"] for a in alerts(rendered_rule()["spec"])}, want


def servicemonitor_labels() -> dict[str, dict[str, str]]:
    """component -> the fixed target labels its ServiceMonitor sets."""
    out = {}
    for sm in (d for d in manifests(ON) if d["kind"] == "ServiceMonitor"):
        comp = sm["metadata"]["labels"]["app.kubernetes.io/component"]
        (ep,) = sm["spec"]["endpoints"]
        out[comp] = {r["targetLabel"]: r["replacement"] for r in ep["relabelings"]
                     if "replacement" in r and not r.get("sourceLabels")}
    return out


SELECTOR = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def test_alerts_select_the_labels_the_scrapes_produce() -> None:
    sm = servicemonitor_labels()
    assert set(sm) == {"edge", "coordinator"}
    for comp, labels in sm.items():
        assert labels["job"] == "heliograph" and labels["component"] == comp and "region" in labels
    # Without the Operator: the same job and labels, from the pods' labels.
    cfg = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "heliograph"
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"region", "component", "namespace", "pod"} <= targets
    # Labels of the series: target labels (the Operator adds namespace, pod, …) + metric labels.
    target_labels = {"job", "component", "region", "namespace", "pod", "instance"}
    metric_labels = {"le", "code", "reason", "result", "path", "op", "type", "route", "direction",
                     "command"}
    for a in alerts(rendered_rule()["spec"]):
        expr = a["expr"]
        for sel in SELECTOR.findall(expr):
            ms = {k: (op, v) for k, op, v in MATCHER.findall(sel)}
            assert ms.get("job") == ("=", "heliograph"), (a["alert"], sel)
            op, comp = ms["component"]
            assert op == "=" and comp in sm, (a["alert"], sel)
            assert set(ms) <= target_labels | metric_labels, (a["alert"], sel)
        for group in GROUPING.findall(expr):
            names = {g.strip() for g in group.split(",") if g.strip()}
            assert names <= target_labels | metric_labels, (a["alert"], names)


def test_promtool_passes_with_a_case_per_alert(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; ./test.sh installs it)")
    spec = rendered_rule()["spec"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    tests = yaml.safe_load(RULES_TEST.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    names = {a["alert"] for a in alerts(spec)}
    assert names <= tested, f"alerts without a firing test case: {sorted(names - tested)}"
    assert tested <= names, f"test cases for unknown alerts: {sorted(tested - names)}"
    tests["rule_files"] = [str(rules)]
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
