"""(6) The security model of docs/SECURITY.md: the three example regions rendered with mTLS
(tls.existingSecret), an ES256 join-token public key and Redis credentials from Secrets mount
the certificates in both workloads and pass the TLS flags, dial the coordinators over https, and
no container argument carries a secret; extra volumes reach both workloads."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from conftest import REPO, example_names, load_values, manifests, read, render
from test_chart_contract import by_name, flag

TLS_SECRET = "heliograph-tls"
INLINE_SECRETS = ["inline-cluster-secret-0123456789", "inline-jwt-key-0123456789abcdef0123456789",
                  "inline-turn-secret", "inline-redis-password"]


def secured(name: str, redis: str = "auth") -> dict[str, Any]:
    v = copy.deepcopy(load_values(name))
    v["tls"] = {"existingSecret": TLS_SECRET}
    v["jwt"] = {"existingSecret": "", "publicKey": {"existingSecret": "heliograph-jwt-public",
                                                    "existingSecretKey": "public.pem",
                                                    "algorithm": "es256"}}
    if redis == "auth":
        v["redis"] |= {"auth": {"username": "heliograph", "existingSecret": "heliograph-redis"}}
    else:
        v["redis"] |= {"existingSecret": "heliograph-redis-url", "existingSecretKey": "url"}
    return v


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in docs if d["kind"] in {"Deployment", "StatefulSet"}}


def mounted_from_secret(spec: dict[str, Any], c: dict[str, Any], path: str, secret: str) -> bool:
    """The file `path` is inside a mount of a volume backed by Secret `secret`."""
    vols = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            vol = vols[m["name"]]
            if vol.get("secret", {}).get("secretName") != secret:
                return False
            items = vol["secret"].get("items")
            rel = path[len(m["mountPath"].rstrip("/")) + 1:]
            return items is None or rel in {i["path"] for i in items}
    return False


def source_flags(rel: str) -> set[str]:
    """Long flags a clap struct defines: `--field-name` per field, plus `long = "…"`."""
    src = read(rel)
    fields = re.findall(r"#\[arg\((?:[^\]]*)\)\]\s*(?:///[^\n]*\n\s*)*(?:pub )?(\w+):", src)
    named = re.findall(r'long = "([\w-]+)"', src)
    return {"--" + f.replace("_", "-") for f in fields} | {"--" + n for n in named}


@pytest.mark.parametrize("name", example_names())
@pytest.mark.parametrize("redis", ["auth", "url-secret"])
def test_examples_with_tls_jwt_and_redis_secrets(name: str, redis: str) -> None:
    values = secured(name, redis)
    docs = manifests(values)
    specs = pod_specs(docs)
    edge = by_name(docs, "Deployment", "-edge")
    sts = by_name(docs, "StatefulSet", "-coordinator")
    espec, cspec = edge["spec"]["template"]["spec"], sts["spec"]["template"]["spec"]
    (ec,), (cc,) = espec["containers"], cspec["containers"]

    # TLS flags on both workloads, each file in the mounted tls Secret.
    for spec, c in ((espec, ec), (cspec, cc)):
        for f, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-ca", "ca.crt")):
            path = flag(c["args"], f)
            assert path.endswith("/" + key)
            assert mounted_from_secret(spec, c, path, TLS_SECRET), (f, path)
    # The coordinator's admin subcommands (run.sh, kubectl exec) get the same files.
    cenv = {e["name"]: e for e in cc["env"]}
    for var, f in (("HELIOGRAPH_TLS_CERT", "--tls-cert"), ("HELIOGRAPH_TLS_KEY", "--tls-key"),
                   ("HELIOGRAPH_TLS_CA", "--tls-ca")):
        assert cenv[var]["value"] == flag(cc["args"], f)
    # The flags are the binaries' own.
    assert {"--tls-cert", "--tls-key", "--tls-ca", "--join-token-public-key", "--join-token-alg",
            "--detach-grace-ms", "--coordinator"} <= source_flags("edge/src/config.rs")
    assert {"--tls-cert", "--tls-key", "--tls-ca"} <= source_flags("coordinator/src/main.rs")
    for var in ("HELIOGRAPH_TLS_CERT", "HELIOGRAPH_TLS_KEY", "HELIOGRAPH_TLS_CA", "HELIOGRAPH_REDIS"):
        assert f'env = "{var}"' in read("edge/src/config.rs"), var

    # https coordinator URLs.
    urls = flag(ec["args"], "--coordinator").split(",")
    assert len(urls) == sts["spec"]["replicas"]
    assert all(u.startswith("https://") for u in urls), urls

    # ES256 public key from its Secret.
    key = flag(ec["args"], "--join-token-public-key")
    assert mounted_from_secret(espec, ec, key, "heliograph-jwt-public")
    assert flag(ec["args"], "--join-token-alg") == "es256"
    eenv = {e["name"]: e for e in ec["env"]}
    assert "HELIOGRAPH_JOIN_TOKEN_SECRET" not in eenv

    # Detach grace follows the coordinators' (coordinator.graceMs, run.sh's --grace-ms).
    assert flag(ec["args"], "--detach-grace-ms") == cenv["GRACE_MS"]["value"]

    # Redis from Secrets, in the environment only.
    if redis == "auth":
        assert eenv["HELIOGRAPH_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "heliograph-redis"
        # The edge reads the password itself: the URL carries no credentials, the user is a flag.
        url = eenv["HELIOGRAPH_REDIS"]["value"]
        assert re.fullmatch(r"rediss?://[^@]+", url), url
        assert flag(ec["args"], "--redis-username") == "heliograph"
    else:
        ref = eenv["HELIOGRAPH_REDIS"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "heliograph-redis-url", "key": "url"}

    # No argument carries a secret, a key or a Redis URL.
    for wname, spec in specs.items():
        for c in spec["containers"]:
            for a in c.get("command", []) + c.get("args", []):
                assert "redis://" not in a and "rediss://" not in a, (wname, a)
                assert "BEGIN" not in a and "--cluster-secret" not in a and "--join-token-secret" not in a
                assert "--redis" != a and not a.startswith("--redis="), (wname, a)

    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        kubernetes_validate.validate(d, "1.30.0", strict=True)


def test_inline_secret_values_never_reach_arguments() -> None:
    v = load_values("everything-on")
    v["clusterSecret"] = {"value": INLINE_SECRETS[0]}
    v["jwt"] = {"key": INLINE_SECRETS[1]}
    v["turn"] |= {"secret": INLINE_SECRETS[2]}
    docs = manifests(v)
    for spec in pod_specs(docs).values():
        for c in spec["containers"]:
            argv = " ".join(c.get("command", []) + c.get("args", []))
            env_values = " ".join(str(e.get("value", "")) for e in c.get("env", []))
            for s in INLINE_SECRETS:
                assert s not in argv and s not in env_values
            assert "redis://" not in argv


def test_bundled_redis_takes_its_password_from_a_file() -> None:
    docs = manifests(load_values("everything-on"))
    redis = by_name(docs, "StatefulSet", "-redis")
    (c,) = redis["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "heliograph-redis"
    assert "requirepass" in c["command"][2] and "$REDIS_PASSWORD" in c["command"][2]
    assert not any("REDIS_PASSWORD" in a for a in c["args"])


def test_redis_url_with_credentials_fails() -> None:
    import helm_python as helm

    with pytest.raises((helm.HelmError, helm.HelmValuesError)):
        with helm.Chart.load(str(REPO / "helm" / "heliograph")) as chart:
            bad = {"redis": {"url": "redis://user:pw@redis.example:6379"}}
            chart.validate_schema(bad)
            chart.render(bad, name="x", namespace="x")


def test_hs256_and_public_key_exclude_each_other() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="jwt.publicKey"):
        render({"jwt": {"key": "k" * 32, "publicKey": {"existingSecret": "pub"}}})


def test_extra_volumes_mount_in_both_workloads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    for wname, spec in pod_specs(docs).items():
        vols = {v["name"] for v in spec.get("volumes", [])}
        claims = set()
        for d in docs:
            if d["kind"] == "StatefulSet" and d["metadata"]["name"] == wname:
                claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in vols | claims, (name, wname, m)
    if name == "everything-on":
        for suffix in ("-edge", "-coordinator"):
            spec = next(s for n, s in pod_specs(docs).items() if n.endswith(suffix))
            assert "extra" in {v["name"] for v in spec["volumes"]}
            assert "/etc/extra" in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}


def test_server_api_keys_and_webhook_secrets_come_from_secrets() -> None:
    """The server API keys and the webhook secrets reach the coordinators from Kubernetes
    Secrets (environment), never as a literal value or an argument; the endpoints and limits
    are passed as they are configured."""
    v = copy.deepcopy(load_values(example_names()[0]))
    v["coordinator"]["serverApi"] = {"existingSecret": "app-api-keys", "existingSecretKey": "keys",
                                     "maxBodyBytes": 4096}
    v["coordinator"]["webhooks"] = {"endpoints": [{"name": "app", "url": "http://hooks.app:8080/in"}],
                                    "existingSecret": "app-webhooks", "existingSecretKey": "secrets",
                                    "queueRecords": 500, "maxAttempts": 5, "timeoutMs": 2000,
                                    "concurrency": 4}
    docs = manifests(v)
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "coordinator"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HELIOGRAPH_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "app-api-keys", "key": "keys"}
    assert env["HELIOGRAPH_WEBHOOK_SECRETS"]["valueFrom"]["secretKeyRef"] == {"name": "app-webhooks",
                                                                              "key": "secrets"}
    assert env["HELIOGRAPH_WEBHOOKS"]["value"] == "app=http://hooks.app:8080/in"
    assert env["HELIOGRAPH_WEBHOOK_QUEUE_RECORDS"]["value"] == "500"
    assert env["HELIOGRAPH_API_MAX_BODY_BYTES"]["value"] == "4096"
    for var in ("HELIOGRAPH_API_KEYS", "HELIOGRAPH_WEBHOOK_SECRETS"):
        assert "value" not in env[var]
    # Without caSecret: public CAs only, no CA volume.
    assert "HELIOGRAPH_WEBHOOK_CA" not in env
    assert "webhook-ca" not in {vol["name"] for vol in sts["spec"]["template"]["spec"]["volumes"]}
    # An https:// receiver with a private CA: the bundle is mounted from its Secret, read-only,
    # and HELIOGRAPH_WEBHOOK_CA names the mounted file.
    v["coordinator"]["webhooks"]["endpoints"].append({"name": "private", "url": "https://hooks.corp:8443/in"})
    v["coordinator"]["webhooks"]["caSecret"] = "hooks-ca"
    v["coordinator"]["webhooks"]["caSecretKey"] = "bundle.pem"
    (sts,) = [d for d in manifests(v) if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "coordinator"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HELIOGRAPH_WEBHOOKS"]["value"] == "app=http://hooks.app:8080/in,private=https://hooks.corp:8443/in"
    (vol,) = [vol for vol in pod["volumes"] if vol["name"] == "webhook-ca"]
    assert vol["secret"]["secretName"] == "hooks-ca"
    assert vol["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "webhook-ca"]
    assert mount["readOnly"] is True
    assert env["HELIOGRAPH_WEBHOOK_CA"]["value"] == mount["mountPath"] + "/ca.crt"
    # Other schemes are refused by the schema.
    bad = copy.deepcopy(v)
    bad["coordinator"]["webhooks"]["endpoints"] = [{"name": "app", "url": "ftp://hooks.app/in"}]
    with pytest.raises(Exception):
        render(bad)
    # Endpoints without a secret are refused by the schema.
    v["coordinator"]["webhooks"]["existingSecret"] = ""
    with pytest.raises(Exception):
        render(v)
