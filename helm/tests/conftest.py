"""Shared helpers for the offline chart, image and monitoring tests."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "heliograph"
EXAMPLES = REPO / "helm" / "examples" / "three-regions"
RELEASE = "heliograph"
NAMESPACE = "heliograph"

# Values that switch on every optional template, so that the schema and contract tests see them.
EVERYTHING_ON: dict[str, Any] = {
    "region": "test-1",
    "clusterSecret": {"value": "s3cret"},
    "jwt": {"key": "jwt-key"},
    "turn": {"secret": "turn-secret", "urls": ["turn:turn.example.org:3478"]},
    "edge": {
        "iceServers": ["stun:stun.example.com:3478"],
        "trustedProxies": ["10.0.0.0/8", "2001:db8::/32"],
        "forwardedHeader": "forwarded",
        "proxyProtocol": True,
        "socketio": {"enabled": True, "events": {"join_room": "join", "user_left": "bye"}},
        "autoscaling": {"targetConnectionsPerPod": 2000},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["signal.example.com"],
            "tls": [{"secretName": "signal-tls", "hosts": ["signal.example.com"]}],
        },
    },
    "coordinator": {
        "regions": {"eu": ["coord-0.eu.example.internal:7001", "coord-1.eu.example.internal:7001"],
                    "ap": ["coord-0.ap.example.internal:7001"]},
        "advertiseHostTemplate": "coord-{ordinal}.test-1.example.internal",
        "zoneAntiAffinity": "hard",
        "gateway": {"perPodServices": True, "externalDnsHostname": True},
    },
    "networkPolicy": {"crossRegionCIDRs": ["10.20.0.0/16"]},
    "tls": {"existingSecret": "heliograph-tls"},
    "redis": {"auth": {"existingSecret": "heliograph-redis", "existingSecretKey": "password"}},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}
# The extra volumes a user mounts into both workloads.
EVERYTHING_ON["edge"] |= {
    "extraVolumes": [{"name": "extra", "configMap": {"name": "edge-extra"}}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
}
EVERYTHING_ON["coordinator"] |= {
    "extraVolumes": [{"name": "extra", "configMap": {"name": "coordinator-extra"}}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
}
EVERYTHING_ON["observability"] = {
    "otlpEndpoint": "http://otel-collector.observability:4317",
    "logFormat": "json",
}


def load_values(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    if name == "everything-on":
        return copy.deepcopy(EVERYTHING_ON)
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()) or {}


VALUE_SETS = ["default", "us", "eu", "ap", "everything-on"]


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def render(values: dict[str, Any]) -> dict[str, str]:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="session", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(load_values(request.param))


def read(rel: str) -> str:
    return (REPO / rel).read_text()


def const_str(source: str, name: str) -> str:
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', source)
    assert m, f"const {name} not found"
    return m.group(1)
