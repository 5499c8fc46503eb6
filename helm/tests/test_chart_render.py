"""(1) The chart renders with default values and each example, passes the schema and lint."""

from __future__ import annotations

import pytest

from conftest import CHART, VALUE_SETS, example_names, load_values, manifests, render


def test_three_region_examples_exist() -> None:
    assert example_names() == ["ap", "eu", "us"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_renders_and_validates_against_values_schema(name: str) -> None:
    import helm_python as helm

    values = load_values(name)
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.schema is not None, "values.schema.json is missing"
        chart.validate_schema(values)
    docs = manifests(values)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    for d in docs:
        assert d["metadata"]["namespace"] == "heliograph" or d["kind"] in {"Namespace"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict_kube_1_30(name: str) -> None:
    import helm_python as helm

    report = helm.lint(str(CHART), load_values(name), strict=True, kube_version="v1.30.0")
    assert report["errors"] == [], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


def test_each_example_region_runs_its_own_group_and_lists_every_other_regions_gateways() -> None:
    examples = {n: load_values(n) for n in example_names()}
    regions = {v["region"] for v in examples.values()}
    assert regions == set(examples)
    for name, v in examples.items():
        c = v["coordinator"]
        # Its own group: topology regions, nobody else's bootstrap, no cross-region Raft peers.
        assert c.get("topology", "regions") == "regions", name
        assert not c.get("peers"), name
        assert not c.get("learnerOnly"), name
        assert "bootstrap" not in c, name
        # coordinator.regions names exactly the other regions, each with its own gateways on
        # the API port (the coordinator's 7001, never Raft's 7000).
        assert set(c["regions"]) == regions - {name}, (name, c["regions"])
        for other, gateways in c["regions"].items():
            assert gateways, (name, other)
            for g in gateways:
                host, port = g.rsplit(":", 1)
                assert host.split(".")[1] == other, (name, g)
                assert int(port) == 7001, (name, g)
            # The addresses the other region advertises for its replicas.
            template = examples[other]["coordinator"]["advertiseHostTemplate"]
            expected = [f"{template.replace('{ordinal}', str(i))}:7001"
                        for i in range(examples[other]["coordinator"]["replicas"])]
            assert sorted(gateways) == sorted(expected), (name, other)
        # Across regions only the API port.
        assert v["networkPolicy"]["crossRegionPorts"] == ["api"], name
    # Distinct id ranges: not needed with one group per region, harmless, kept.
    ranges = sorted(
        (v["coordinator"]["idBase"], v["coordinator"]["idBase"] + v["coordinator"]["replicas"])
        for v in examples.values()
    )
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start, ranges


def test_schema_rejects_unknown_and_bad_values() -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        for bad in (
            {"bogus": 1},
            {"region": "Not A Region"},
            {"coordinator": {"peers": ["http://x:7001"]}},
            {"coordinator": {"topology": "both"}},
            {"coordinator": {"regions": {"EU": ["coord-0.eu.example.internal:7001"]}}},
            {"coordinator": {"regions": {"eu": ["http://coord-0.eu.example.internal:7001"]}}},
            {"coordinator": {"regions": {"eu": ["coord-0.eu.example.internal"]}}},
            {"coordinator": {"regions": {"eu": []}}},
            {"coordinator": {"regions": {"eu": "coord-0.eu.example.internal:7001"}}},
            {"networkPolicy": {"crossRegionPorts": []}},
            {"edge": {"iceServers": ["http://x"]}},
            {"ports": {"edge": 70000}},
        ):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_multi_region_requires_a_shared_cluster_secret() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="clusterSecret"):
        render({"coordinator": {"regions": {"eu": ["coord-0.eu.example.internal:7001"]}}})
    with pytest.raises(helm.HelmError, match="clusterSecret"):
        render({"coordinator": {"topology": "global",
                                "peers": ["coord-0.eu.example.internal:7001"]}})


def test_too_short_termination_grace_fails_the_render() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"edge": {"shutdownGraceMs": 30000, "terminationGracePeriodSeconds": 20}})


def test_secrets_stay_out_of_argv() -> None:
    docs = manifests(load_values("everything-on"))
    for d in docs:
        if d["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            argv = " ".join(c.get("command", []) + c.get("args", []))
            assert "s3cret" not in argv and "--cluster-secret" not in argv
            for e in c.get("env", []):
                if "SECRET" in e["name"] or "JWT" in e["name"]:
                    assert "valueFrom" in e, e


def test_readme_documents_every_value() -> None:
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    def paths(node: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            out.append(p)
            if isinstance(v, dict) and not p.endswith(("resources", "SecurityContext", "securityContext",
                                                      "behavior", "Probe")):
                out.extend(paths(v, p))
        return out

    missing = [p for p in paths(values) if isinstance(p, str) and f"`{p}" not in readme]
    assert not missing, missing


def test_traces_and_log_format_reach_every_pod() -> None:
    import helm_python as helm

    def env(values: dict) -> dict[str, dict[str, str]]:
        out = {}
        for d in manifests(values):
            if d["kind"] not in {"Deployment", "StatefulSet"}:
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] in {"edge", "coordinator"}:
                    out[c["name"]] = {e["name"]: e.get("value") for e in c.get("env", [])}
        return out

    # Off by default: no endpoint, text logs.
    for kind, e in env({}).items():
        assert "HELIOGRAPH_OTLP_ENDPOINT" not in e, kind
        assert e["HELIOGRAPH_LOG_FORMAT"] == "text", kind
    on = {"observability": {"otlpEndpoint": "http://otel-collector.observability:4317",
                            "logFormat": "json"}}
    both = env(on)
    assert set(both) == {"edge", "coordinator"}
    for kind, e in both.items():
        assert e["HELIOGRAPH_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317", kind
        assert e["HELIOGRAPH_LOG_FORMAT"] == "json", kind
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(on)
        for bad in ({"observability": {"otlpEndpoint": "otel-collector:4317"}},
                    {"observability": {"logFormat": "xml"}},
                    {"observability": {"sampling": 1}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_peer_feature_limits_reach_the_edge() -> None:
    """Discovery and contact limits are chart values that become the edge's flags."""

    def edge_args(values: dict) -> list[str]:
        for d in manifests(values):
            if d["kind"] != "Deployment":
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "edge":
                    return c["args"]
        raise AssertionError("no edge container")

    def flag(args: list[str], name: str) -> str:
        return args[args.index(name) + 1]

    defaults = edge_args({})
    assert flag(defaults, "--list-rooms-per-minute") == "60"
    assert flag(defaults, "--contacts-per-minute") == "10"
    set_ = edge_args({"edge": {"discovery": {"listRoomsPerMinute": 5},
                               "contacts": {"maxWatch": 50}}})
    assert flag(set_, "--list-rooms-per-minute") == "5"
    assert flag(set_, "--max-contact-watch") == "50"
