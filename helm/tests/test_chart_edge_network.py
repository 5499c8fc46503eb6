"""(7) Client addresses behind load balancers and a managed Redis (docs/DEPLOY.md §6a, "Managed
Redis", "Redis Sentinel"): the edge values become the edge's own flags and environment
variables, passwords arrive only through secretKeyRefs and certificates only as mounted files,
--proxy-protocol moves the probes to the metrics listener, and wrong values fail the schema or
the render."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from conftest import CHART, load_values, manifests, read
from test_chart_contract import by_name, container_ports, edge_metrics_routes, flag, listen_port
from test_chart_security import mounted_from_secret, source_flags

CONFIG_RS = "edge/src/config.rs"

MANAGED_REDIS: dict[str, Any] = {
    "url": "rediss://redis.example.internal:6380/0",
    "auth": {"username": "heliograph", "existingSecret": "redis-auth", "existingSecretKey": "pw"},
    "tls": {"existingSecret": "redis-tls", "clientCertificate": True},
}
SENTINEL_REDIS: dict[str, Any] = {
    "url": "rediss://",
    "auth": {"username": "heliograph", "existingSecret": "redis-auth"},
    "tls": {"existingSecret": "redis-tls"},
    "sentinel": {
        "addresses": ["sentinel-0.redis:26379", "sentinel-1.redis:26379", "sentinel-2.redis:26379"],
        "master": "heliograph",
        "auth": {"username": "sentinel-user", "existingSecret": "sentinel-auth",
                 "existingSecretKey": "sentinel-pw"},
    },
}


def edge_of(values: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    docs = manifests(values)
    spec = by_name(docs, "Deployment", "-edge")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return docs, spec, c


def all_flags(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def config_env_names() -> set[str]:
    src = read(CONFIG_RS)
    return set(re.findall(r'env = "(HELIOGRAPH_\w+)"', src)) | set(
        re.findall(r'std::env::var\("(HELIOGRAPH_\w+)"\)', src))


def with_redis(redis: dict[str, Any], **edge: Any) -> dict[str, Any]:
    return {"redis": copy.deepcopy(redis), "edge": edge}


def render_fails(values: dict[str, Any], match: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=match):
        manifests(values)


@pytest.mark.parametrize("values", [
    {}, load_values("everything-on"), with_redis(MANAGED_REDIS), with_redis(SENTINEL_REDIS),
], ids=["default", "everything-on", "managed-redis", "sentinel"])
def test_edge_flags_and_env_are_the_binarys_own(values: dict[str, Any]) -> None:
    _, _, c = edge_of(values)
    flags = {a.split("=", 1)[0] for a in c["args"] if a.startswith("--")}
    assert flags <= source_flags(CONFIG_RS), flags - source_flags(CONFIG_RS)
    names = {n for n in env_of(c) if n.startswith("HELIOGRAPH_")}
    assert names <= config_env_names(), names - config_env_names()


def test_client_address_flags() -> None:
    _, _, c = edge_of({"edge": {"trustedProxies": ["10.0.0.0/16", "192.168.1.7"],
                                "forwardedHeader": "forwarded"}})
    assert all_flags(c["args"], "--trusted-proxy") == ["10.0.0.0/16", "192.168.1.7"]
    assert flag(c["args"], "--forwarded-header") == "forwarded"
    assert "--proxy-protocol" not in c["args"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"


def test_defaults_trust_no_proxy() -> None:
    _, _, c = edge_of({})
    assert "--trusted-proxy" not in c["args"] and "--proxy-protocol" not in c["args"]
    assert flag(c["args"], "--forwarded-header") == "x-forwarded-for"


def test_proxy_protocol_moves_probes_to_the_metrics_listener() -> None:
    docs, _, c = edge_of({"edge": {"trustedProxies": ["10.0.0.0/16"], "proxyProtocol": True},
                          "ports": {"edge": 9000, "edgeMetrics": 9001}})
    assert "--proxy-protocol" in c["args"]
    assert all_flags(c["args"], "--trusted-proxy") == ["10.0.0.0/16"]
    ports = container_ports(c)
    assert listen_port(flag(c["args"], "--metrics-listen")) == ports["metrics"] == 9001
    routes = edge_metrics_routes()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert get["port"] == "metrics"
    kubernetes_validate.validate(by_name(docs, "Deployment", "-edge"), "1.30.0", strict=True)


def test_proxy_protocol_needs_trusted_proxies() -> None:
    render_fails({"edge": {"proxyProtocol": True}}, "edge.trustedProxies")


@pytest.mark.parametrize("values", [
    {"ports": {"edge": 8080, "edgeMetrics": 8080}},
    {"edge": {"extraArgs": ["--metrics-listen", "0.0.0.0:9999"]}},
], ids=["same-port", "overridden"])
def test_proxy_protocol_needs_the_metrics_listener(values: dict[str, Any]) -> None:
    values = copy.deepcopy(values)
    values.setdefault("edge", {}).update(trustedProxies=["10.0.0.0/8"], proxyProtocol=True)
    render_fails(values, "metrics")


def test_managed_redis_tls_and_acl() -> None:
    docs, spec, c = edge_of(with_redis(MANAGED_REDIS))
    args, env = c["args"], env_of(c)
    for f, key in (("--redis-ca", "ca.crt"), ("--redis-client-cert", "tls.crt"),
                   ("--redis-client-key", "tls.key")):
        path = flag(args, f)
        assert path.endswith("/" + key)
        assert mounted_from_secret(spec, c, path, "redis-tls"), (f, path)
    assert flag(args, "--redis-username") == "heliograph"
    # The URL as given, without credentials; the password from its Secret, read by the edge.
    assert env["HELIOGRAPH_REDIS"] == {"name": "HELIOGRAPH_REDIS", "value": MANAGED_REDIS["url"]}
    assert env["HELIOGRAPH_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth", "key": "pw"}
    assert "--redis-sentinel" not in args and "HELIOGRAPH_REDIS_SENTINEL_PASSWORD" not in env
    # An external Redis: the chart runs none.
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, "1.30.0", strict=True)


def test_redis_ca_alone_mounts_only_the_ca() -> None:
    redis = copy.deepcopy(MANAGED_REDIS)
    redis["tls"] = {"existingSecret": "redis-tls"}
    _, spec, c = edge_of(with_redis(redis))
    assert mounted_from_secret(spec, c, flag(c["args"], "--redis-ca"), "redis-tls")
    assert "--redis-client-cert" not in c["args"] and "--redis-client-key" not in c["args"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "redis-tls"]
    assert [i["key"] for i in vol["secret"]["items"]] == ["ca.crt"]


def test_redis_without_tls_mounts_nothing() -> None:
    _, spec, c = edge_of({"redis": {"url": "redis://redis.example:6379"}})
    assert not [a for a in c["args"] if a.startswith(("--redis-ca", "--redis-client"))]
    assert "redis-tls" not in {v["name"] for v in spec["volumes"]}
    assert env_of(c)["HELIOGRAPH_REDIS"]["value"] == "redis://redis.example:6379"


def test_redis_sentinel() -> None:
    docs, spec, c = edge_of(with_redis(SENTINEL_REDIS))
    args, env = c["args"], env_of(c)
    s = SENTINEL_REDIS["sentinel"]
    assert all_flags(args, "--redis-sentinel") == s["addresses"]
    assert flag(args, "--redis-sentinel-master") == "heliograph"
    assert flag(args, "--redis-sentinel-username") == "sentinel-user"
    assert flag(args, "--redis-username") == "heliograph"
    assert mounted_from_secret(spec, c, flag(args, "--redis-ca"), "redis-tls")
    assert env["HELIOGRAPH_REDIS"]["value"] == "rediss://"
    assert env["HELIOGRAPH_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "sentinel-auth", "key": "sentinel-pw"}
    assert env["HELIOGRAPH_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    # Sentinel replaces the chart's own Redis (and its NetworkPolicy), even with redis.enabled.
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


def test_sentinel_without_url_leaves_the_scheme_to_the_edge() -> None:
    _, _, c = edge_of({"redis": {"sentinel": {"addresses": ["s:26379"], "master": "m"}}})
    assert "HELIOGRAPH_REDIS" not in env_of(c)
    assert flag(c["args"], "--redis-sentinel") == "s:26379"


@pytest.mark.parametrize("values", [
    {}, load_values("everything-on"), with_redis(MANAGED_REDIS), with_redis(SENTINEL_REDIS),
    {"redis": {"existingSecret": "redis-url", "auth": {"existingSecret": "redis-auth"}}},
], ids=["default", "everything-on", "managed-redis", "sentinel", "url-secret"])
def test_redis_secrets_only_through_secret_refs_and_files(values: dict[str, Any]) -> None:
    _, spec, c = edge_of(values)
    for name, e in env_of(c).items():
        if re.search(r"PASSWORD|SECRET", name) and name != "HELIOGRAPH_EDGE_ID":
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e)
    for a in c["args"]:
        assert "redis://" not in a and "rediss://" not in a, a
        assert not a.startswith(("--redis-password", "--redis-sentinel-password")), a
        assert a != "--redis" and not a.startswith("--redis="), a
    # Every file flag points into a read-only Secret mount.
    for f in ("--redis-ca", "--redis-client-cert", "--redis-client-key"):
        if f in c["args"]:
            path = flag(c["args"], f)
            assert mounted_from_secret(spec, c, path, values["redis"]["tls"]["existingSecret"])
            (m,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
            assert m.get("readOnly") is True


@pytest.mark.parametrize("redis, match", [
    ({"tls": {"existingSecret": "redis-tls"}}, "rediss://"),
    ({"url": "redis://redis.example:6379", "tls": {"existingSecret": "redis-tls"}}, "rediss://"),
    ({"sentinel": {"addresses": ["s:26379"]}}, "redis.sentinel.master"),
    ({"url": "rediss://"}, "redis.sentinel.addresses"),
], ids=["tls-bundled", "tls-plain-url", "sentinel-no-master", "hostless-url"])
def test_inconsistent_redis_values_fail_the_render(redis: dict[str, Any], match: str) -> None:
    render_fails({"redis": redis}, match)


@pytest.mark.parametrize("bad", [
    {"edge": {"trustedProxies": "10.0.0.0/8"}},
    {"edge": {"trustedProxies": [10]}},
    {"edge": {"trustedProxies": ["lb.example.com"]}},
    {"edge": {"forwardedHeader": "x-real-ip"}},
    {"edge": {"forwardedHeader": True}},
    {"edge": {"proxyProtocol": "true"}},
    {"edge": {"proxyProtocol": 1}},
    {"redis": {"tls": {"existingSecret": 5}}},
    {"redis": {"tls": {"ca": "yes"}}},
    {"redis": {"tls": {"clientCertificate": "true"}}},
    {"redis": {"tls": {"caKey": "ca.pem"}}},
    {"redis": {"sentinel": {"addresses": "s:26379"}}},
    {"redis": {"sentinel": {"addresses": ["sentinel-without-port"]}}},
    {"redis": {"sentinel": {"master": 1}}},
    {"redis": {"sentinel": {"auth": {"password": "inline"}}}},
    {"redis": {"sentinel": {"auth": {"existingSecretKey": ""}}}},
    {"redis": {"auth": {"username": ["u"]}}},
    {"redis": {"url": "rediss://user:pw@redis:6380"}},
])
def test_schema_rejects_wrong_types(bad: dict[str, Any]) -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


@pytest.mark.parametrize("good", [
    {"edge": {"trustedProxies": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"],
              "forwardedHeader": "forwarded", "proxyProtocol": True}},
    {"redis": MANAGED_REDIS},
    {"redis": SENTINEL_REDIS},
])
def test_schema_accepts_the_documented_values(good: dict[str, Any]) -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(copy.deepcopy(good))


def test_socketio_is_off_by_default_and_its_values_become_flags_a_file_and_affinity() -> None:
    import tomllib

    docs, _, c = edge_of({})
    assert "--socketio" not in c["args"]
    assert "sessionAffinity" not in by_name(docs, "Service", "-edge")["spec"]

    events = {"join_room": "join", "user_left": "peer \"gone\""}
    docs, spec, c = edge_of({"edge": {"socketio": {"enabled": True, "events": events}}})
    assert "--socketio" in c["args"]
    path = flag(c["args"], "--socketio-events")
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config = by_name(docs, "ConfigMap", volume["configMap"]["name"])
    toml = config["data"][path.rsplit("/", 1)[1]]
    assert tomllib.loads(toml) == {"events": events}
    assert by_name(docs, "Service", "-edge")["spec"]["sessionAffinity"] == "ClientIP"
    kubernetes_validate.validate(by_name(docs, "Deployment", "-edge"), "1.30.0", strict=True)

    # Default names: the flag alone; affinity can be turned off (WebSocket-only clients).
    docs, _, c = edge_of({"edge": {"socketio": {"enabled": True, "sessionAffinity": False}}})
    assert "--socketio" in c["args"] and "--socketio-events" not in c["args"]
    assert "sessionAffinity" not in by_name(docs, "Service", "-edge")["spec"]


def test_socketio_events_outside_the_dialect_fail_the_schema() -> None:
    import helm_python as helm

    values = {"edge": {"socketio": {"enabled": True, "events": {"join": "x"}}}}
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception):
        chart.validate_schema(values)
