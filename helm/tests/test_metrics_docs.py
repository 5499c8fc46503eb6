"""(5) docs/METRICS.md lists exactly the metrics defined in edge/src/metrics.rs and
coordinator/src/metrics.rs as emitted; the Grafana dashboard and the Prometheus rules use only
those."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import REPO, read

SOURCES = ["edge/src/metrics.rs", "coordinator/src/metrics.rs"]
NAME = re.compile(r"\bheliograph_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def source_metrics() -> dict[str, str]:
    """Metric name -> kind, from the `pub const X: &str = "heliograph_…"` lines and the macros."""
    out: dict[str, str] = {}
    for rel in SOURCES:
        src = read(rel)
        consts = dict(re.findall(r'pub const (\w+): &str =\s*"(heliograph_[a-z0-9_]+)";', src))
        assert consts, rel
        for const, name in consts.items():
            kinds = set(re.findall(rf"(counter|gauge|histogram)!\(\s*{const}\b", src))
            assert len(kinds) == 1, (rel, const, kinds)
            out[name] = kinds.pop()
    return out


def docs_sections() -> tuple[str, str]:
    text = read("docs/METRICS.md")
    emitted = text.split("## Emitted", 1)[1].split("## Planned", 1)[0]
    planned = text.split("## Planned", 1)[1]
    return emitted, planned


def documented_emitted() -> dict[str, str]:
    emitted, _ = docs_sections()
    rows = re.findall(r"^\| `(heliograph_[a-z0-9_]+)` \| (\w+) \|", emitted, re.M)
    return dict(rows)


def base_name(name: str, known: dict[str, str]) -> str:
    for suf in HIST_SUFFIXES:
        if name.endswith(suf) and known.get(name[: -len(suf)]) == "histogram":
            return name[: -len(suf)]
    return name


def test_every_source_metric_is_documented_with_its_type() -> None:
    src = source_metrics()
    docs = documented_emitted()
    assert set(src) == set(docs), {"undocumented": set(src) - set(docs), "invented": set(docs) - set(src)}
    for name, kind in src.items():
        assert docs[name] == kind, name
        if kind == "histogram":
            # A unit in the name: seconds, or the things counted (commands per log entry).
            assert name.endswith(("_seconds", "_commands")), name
        if kind == "counter":
            assert name.endswith("_total"), name


def test_planned_metrics_are_not_listed_as_emitted() -> None:
    _, planned = docs_sections()
    assert "NOT emitted" in read("docs/METRICS.md")
    assert "relay stream reconnects" in planned
    # Emitted metrics are not listed as planned.
    for topic in ("resume attempts", "expired signals"):
        assert topic not in planned, topic
    # Nothing in the planned section is written as a real metric name.
    assert not set(NAME.findall(planned)) & set(source_metrics())


@pytest.mark.parametrize("enum_src,pattern", [
    ("edge/src/metrics.rs", r'=> "([a-z_]+)",'),           # close reasons
    ("edge/src/protocol/mod.rs", r'Self::\w+ => "([a-z-]+)",'),  # error codes and signal kinds
])
def test_label_values_are_documented(enum_src: str, pattern: str) -> None:
    emitted, _ = docs_sections()
    src = read(enum_src)
    if enum_src.endswith("protocol/mod.rs"):
        block = src.split("impl ErrorCode", 1)[1].split("\n}\n", 1)[0]
    else:
        block = src.split("impl CloseReason", 1)[1].split("\n}\n", 1)[0]
    values = re.findall(pattern, block)
    assert values
    for v in values:
        assert f"`{v}`" in emitted, v
    metrics_rs = read("edge/src/metrics.rs")
    for const in ("RECEIVED_TYPES", "SENT_TYPES", "RELAY_PATHS"):
        body = re.search(rf"pub const {const}: \[&str; \d+\] = \[(.*?)\];", metrics_rs, re.S).group(1)
        for v in re.findall(r'"([^"]+)"', body):
            assert f"`{v}`" in emitted, (const, v)


def dashboard_exprs() -> list[str]:
    dash = json.loads(read("deploy/grafana/heliograph.json"))
    exprs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    exprs.append(v)
                elif k == "query" and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    return exprs


def test_dashboard_uses_only_emitted_metrics() -> None:
    known = documented_emitted()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used = {base_name(n, known) for e in exprs for n in NAME.findall(e)}
    assert used, "the dashboard references no metric"
    assert used <= set(known), used - set(known)
    # Histograms are only read through their series, never by the bare name.
    for e in exprs:
        for n in NAME.findall(e):
            if known.get(n) == "histogram":
                raise AssertionError(f"bare histogram name {n} in {e}")
    # The panels the operators asked for are there.
    titles = " ".join(p["title"] for p in json.loads(read("deploy/grafana/heliograph.json"))["panels"])
    for want in ("connections per region", "relay latency", "Join latency", "Raft term",
                 "Leader changes", "Commit index", "Apply lag", "by code", "by reason",
                 "Resumes", "Redis up", "Redis errors", "Routing decisions", "by route",
                 "Cross-region stream", "CPU per pod", "Resident memory"):
        assert want.lower() in titles.lower(), want


def test_prometheus_files_use_only_emitted_metrics() -> None:
    known = documented_emitted()
    cfg = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
    assert cfg["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"
    for rule_file in cfg["rule_files"]:
        rules = yaml.safe_load(read(f"deploy/prometheus/{rule_file}"))
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        assert exprs
        used = {base_name(n, known) for e in exprs for n in NAME.findall(e)}
        assert used <= set(known), used - set(known)
