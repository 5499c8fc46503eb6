"""(3) The chart's contract with the binaries: probe paths exist in the sources, probe and
Service ports match the ports the containers are told to listen on, and the edge's drain fits
in its termination grace period."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from conftest import CHART, REPO, read

EDGE_SERVER = "edge/src/server.rs"


def _fn_body(source: str, name: str) -> str:
    m = re.search(rf"fn {name}\b.*?\n}}\n", source, re.S)
    assert m, f"fn {name} not found"
    return m.group(0)


def edge_main_routes() -> set[str]:
    """Paths of the edge's main-port router (grep of `.route("…"` in fn router)."""
    return set(re.findall(r'\.route\("([^"]+)"', _fn_body(read(EDGE_SERVER), "router")))


def edge_metrics_routes() -> set[str]:
    """Paths of the edge's --metrics-listen router (fn metrics_router)."""
    return set(re.findall(r'\.route\("([^"]+)"', _fn_body(read(EDGE_SERVER), "metrics_router")))


def coordinator_routes() -> set[str]:
    routes: set[str] = set()
    for p in (REPO / "coordinator").rglob("*.rs"):
        routes |= set(re.findall(r'\.route\("(/[^"]*)"', p.read_text()))
    return routes


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]


def by_name(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def container_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def resolve(port: int | str, c: dict[str, Any]) -> int:
    return port if isinstance(port, int) else container_ports(c)[port]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} not passed: {args}"
    return args[args.index(name) + 1]


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_edge_routes_grepped_from_source() -> None:
    assert {"/ws", "/healthz", "/readyz"} <= edge_main_routes()


def test_edge_probes_and_flags(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    routes = edge_main_routes()
    dep = by_name(docs, "Deployment", "-edge")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    ports = container_ports(c)
    assert listen_port(flag(args, "--listen")) == ports["http"]
    assert listen_port(flag(args, "--metrics-listen")) == ports["metrics"]
    assert flag(args, "--listen").startswith("0.0.0.0:")
    # Probes hit the main listener; with --proxy-protocol (probes send no PROXY header) the
    # metrics listener, which answers /healthz and /readyz too.
    probe_port = "http"
    if "--proxy-protocol" in args:
        routes = edge_metrics_routes()
        probe_port = "metrics"
    r, lv = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert r["path"] == "/readyz" and r["path"] in routes
    assert lv["path"] == "/healthz" and lv["path"] in routes
    assert resolve(r["port"], c) == ports[probe_port] == resolve(lv["port"], c)
    # Scrape annotations point at the metrics listener.
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        assert int(ann["prometheus.io/port"]) == ports["metrics"]


def test_edge_drain_fits_in_termination_grace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    spec = by_name(docs, "Deployment", "-edge")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    grace_ms = int(flag(c["args"], "--shutdown-grace-ms"))
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0].endswith("sleep")
    pre_stop = int(cmd[1])
    # main.rs: the process exits at the latest 2 s after the grace period.
    main_rs = read("edge/src/main.rs")
    backstop = int(re.search(r"grace \+ Duration::from_secs\((\d+)\)", main_rs).group(1))
    needed = pre_stop + math.ceil(grace_ms / 1000) + backstop
    assert needed <= spec["terminationGracePeriodSeconds"], (needed, spec["terminationGracePeriodSeconds"])
    assert pre_stop >= 1


def test_edge_points_at_every_coordinator_replica(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sts = by_name(docs, "StatefulSet", "-coordinator")
    (c,) = by_name(docs, "Deployment", "-edge")["spec"]["template"]["spec"]["containers"]
    urls = flag(c["args"], "--coordinator").split(",")
    api = container_ports(sts["spec"]["template"]["spec"]["containers"][0])["api"]
    assert len(urls) == sts["spec"]["replicas"]
    # With mTLS (tls.existingSecret) the edges dial https.
    tls = any(v.get("secret", {}).get("secretName") for v in
              by_name(docs, "Deployment", "-edge")["spec"]["template"]["spec"]["volumes"]
              if v["name"] == "tls")
    scheme = "https" if tls else "http"
    for i, u in enumerate(urls):
        assert u.startswith(f"{scheme}://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.")
        assert u.endswith(f":{api}")


def test_coordinator_flags_match_container_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sts = by_name(docs, "StatefulSet", "-coordinator")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ports = container_ports(c)
    script = (CHART / "files" / "coordinator-run.sh").read_text()
    listens = dict(re.findall(r'--(raft|api|metrics)-listen "0\.0\.0\.0:\$(\w+)"', script))
    assert set(listens) == {"raft", "api", "metrics"}, listens
    for name, var in listens.items():
        assert int(env[var]) == ports[name], (name, var)
    for name in ("raft", "api"):
        assert re.search(rf'--advertise-{name} "\$host:\${name.upper()}_PORT"', script)
    # The script the container runs is the chart's ConfigMap, mounted where the command says.
    assert c["command"][-1] == "/etc/heliograph/run.sh"
    cm = by_name(docs, "ConfigMap", "-coordinator-scripts")
    assert cm["data"]["run.sh"].strip() == script.strip()
    # Probes: /readyz and /healthz on the metrics listener.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"]["path"] == path
        assert resolve(c[probe]["httpGet"]["port"], c) == ports["metrics"]


def test_coordinator_probe_paths_exist_in_coordinator_sources() -> None:
    routes = coordinator_routes()
    if not routes:
        pytest.skip("the coordinator binary's HTTP listener is not in this tree yet; "
                    "the chart assumes /healthz and /readyz (brief's planned CLI)")
    assert {"/healthz", "/readyz", "/metrics"} <= routes, routes


def test_coordinator_statefulset_shape(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sts = by_name(docs, "StatefulSet", "-coordinator")
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    hl = by_name(docs, "Service", spec["serviceName"])
    assert hl["spec"]["clusterIP"] == "None" and hl["spec"]["publishNotReadyAddresses"] is True
    aff = spec["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
    terms = aff.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
        t["podAffinityTerm"] for t in aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    assert any(t["topologyKey"] == "topology.kubernetes.io/zone" for t in terms)
    (c,) = spec["template"]["spec"]["containers"]
    grace_ms = int({e["name"]: e.get("value") for e in c["env"]}["GRACE_MS"])
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > grace_ms / 1000


POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"


def _selected(svc: dict[str, Any], docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sel = dict(svc["spec"].get("selector", {}))
    pod = sel.pop(POD_NAME_LABEL, None)  # set on pods by the StatefulSet controller
    out = []
    for w in workloads(docs):
        if not sel or not sel.items() <= w["spec"]["template"]["metadata"]["labels"].items():
            continue
        if pod is not None:
            names = {f"{w['metadata']['name']}-{i}" for i in range(w["spec"].get("replicas", 1))}
            if w["kind"] != "StatefulSet" or pod not in names:
                continue
        out.append(w)
    return out


def test_service_target_ports_match_container_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = _selected(svc, docs)
        assert targets, f"{name}: Service {svc['metadata']['name']} selects no workload"
        for w in targets:
            (c,) = w["spec"]["template"]["spec"]["containers"]
            for p in svc["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if isinstance(tp, str):
                    assert tp in container_ports(c), (svc["metadata"]["name"], tp)
                else:
                    assert tp in container_ports(c).values(), (svc["metadata"]["name"], tp)


def test_network_policies_keep_raft_and_api_internal(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert pols, name
    coord = by_name(docs, "NetworkPolicy", "-coordinator")
    (c,) = by_name(docs, "StatefulSet", "-coordinator")["spec"]["template"]["spec"]["containers"]
    for rule in coord["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert ports <= set(container_ports(c)), ports
        if ports & {"raft", "api"}:
            assert rule.get("from"), "raft/api open to everyone"
            for peer in rule["from"]:
                assert "podSelector" in peer or "ipBlock" in peer
                if "ipBlock" in peer:
                    assert peer["ipBlock"]["cidr"] != "0.0.0.0/0"


def test_edge_hpa_and_pdb_target_the_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    dep = by_name(docs, "Deployment", "-edge")
    hpa = by_name(docs, "HorizontalPodAutoscaler", "-edge")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pdb = by_name(docs, "PodDisruptionBudget", "-edge")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
