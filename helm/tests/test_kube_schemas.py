"""(2) Every rendered manifest validates against the Kubernetes 1.30 schemas, strict mode.

CRD kinds (the Prometheus Operator's ServiceMonitor and PrometheusRule, rendered only when
metrics.serviceMonitor / metrics.prometheusRule are enabled) have no upstream schema and are
skipped here; their shape is checked by test_servicemonitor_shape and
test_prometheus_rules.py instead.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule")}


def test_manifests_validate_strict_1_30(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {e}") from e
        checked += 1
    assert checked >= 8


def test_servicemonitor_shape(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert matched, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            for s in matched:
                assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}
            assert ep["path"] == "/metrics"
