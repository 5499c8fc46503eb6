"""(8) Coordinator topology (docs/DEPLOY.md, "Where the coordinator replicas go"): with
`coordinator.topology: regions` (the default) each region's release runs its own region's Raft
group and tells it the other regions' gateways (`coordinator.regions`, the REGIONS variable);
`global` keeps one group spanning regions (`peers`, `bootstrap`, `learnerOnly`). The render
refuses values the chosen topology cannot use, the NetworkPolicy and the gateway Services open
Raft across regions only for `global`, and coordinator-run.sh, executed with a fake
`heliograph-coordinator` on PATH, joins and announces as each topology says."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import kubernetes_validate
import pytest

from conftest import load_values, manifests
from test_chart_contract import by_name

EU = ["coord-0.eu.example.internal:7001", "coord-1.eu.example.internal:7001"]
AP = ["coord-0.ap.example.internal:7001"]
SECRET = {"value": "a-shared-cluster-secret-0123456789"}
# Other hosts than the gateways of EU and AP, so that a call to a peer cannot pass for one to a
# gateway.
PEERS = ["raft-0.eu.example.internal:7001", "raft-0.ap.example.internal:7001"]


def regional(**coordinator: Any) -> dict[str, Any]:
    """A region "us" of a multi-region cluster with topology regions."""
    c = {"idBase": 100, "regions": {"eu": EU, "ap": AP}} | coordinator
    return {"region": "us", "clusterSecret": SECRET, "coordinator": c,
            "networkPolicy": {"crossRegionCIDRs": ["10.20.0.0/16", "10.30.0.0/16"]}}


def global_values(**coordinator: Any) -> dict[str, Any]:
    """The same region in the previous layout: one group spanning regions."""
    c = {"idBase": 100, "topology": "global", "peers": PEERS, "bootstrap": False,
         "learnerOnly": True} | coordinator
    return {"region": "us", "clusterSecret": SECRET, "coordinator": c,
            "networkPolicy": {"crossRegionCIDRs": ["10.20.0.0/16", "10.30.0.0/16"]}}


def coordinator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = by_name(docs, "StatefulSet", "-coordinator")["spec"]["template"]["spec"]["containers"]
    return c


def env_values(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in coordinator_container(docs)["env"]}


def cross_region_ports(docs: list[dict[str, Any]]) -> list[str]:
    pol = by_name(docs, "NetworkPolicy", "-coordinator")
    rules = [r for r in pol["spec"]["ingress"]
             if any("ipBlock" in p for p in r.get("from", []))]
    assert len(rules) == 1, rules
    return [p["port"] for p in rules[0]["ports"]]


def gateway_ports(docs: list[dict[str, Any]]) -> list[list[str]]:
    return [[p["name"] for p in d["spec"]["ports"]] for d in docs
            if d["kind"] == "Service" and d["metadata"]["name"].endswith("-gw")]


def render_fails(values: dict[str, Any], match: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=match):
        manifests(values)


# --- Render ------------------------------------------------------------------------------------

def test_regions_is_the_default_topology() -> None:
    env = env_values(manifests({}))
    assert env["TOPOLOGY"] == "regions"
    assert env["REGIONS"] == ""
    # A single region: no other region, no shared secret needed, nothing of `global` passed.
    for var in ("PEERS", "BOOTSTRAP", "LEARNER_ONLY"):
        assert var not in env, var


def test_regions_env_is_rendered_from_the_map() -> None:
    docs = manifests(regional())
    env = env_values(docs)
    assert env["TOPOLOGY"] == "regions"
    # One entry per other region, sorted by name: region=gateway,gateway;...
    assert env["REGIONS"] == "ap=" + ",".join(AP) + ";eu=" + ",".join(EU)
    for var in ("PEERS", "BOOTSTRAP", "LEARNER_ONLY"):
        assert var not in env, var
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, "1.30.0", strict=True)


def test_examples_render_their_neighbours_into_regions() -> None:
    for name, others in (("us", ["ap", "eu"]), ("eu", ["ap", "us"]), ("ap", ["eu", "us"])):
        env = env_values(manifests(load_values(name)))
        assert env["TOPOLOGY"] == "regions"
        entries = env["REGIONS"].split(";")
        assert [e.split("=", 1)[0] for e in entries] == others, (name, entries)
        for e in entries:
            region, gateways = e.split("=", 1)
            assert gateways.split(",") == [f"coord-{i}.{region}.heliograph.internal:7001"
                                           for i in range(3)]


def test_peers_with_topology_regions_fails() -> None:
    render_fails(regional(peers=PEERS), "coordinator.peers")
    render_fails({"clusterSecret": SECRET, "coordinator": {"peers": PEERS}}, "coordinator.peers")


def test_own_region_in_regions_fails() -> None:
    v = regional()
    v["coordinator"]["regions"] = {"us": ["coord-0.us.example.internal:7001"], "eu": EU}
    render_fails(v, "own region \"us\"")


def test_learner_only_with_topology_regions_fails() -> None:
    render_fails(regional(learnerOnly=True), "coordinator.learnerOnly")


def test_bootstrap_is_ignored_with_topology_regions() -> None:
    on, off = manifests(regional(bootstrap=True)), manifests(regional(bootstrap=False))
    assert env_values(on) == env_values(off)


def test_regions_with_topology_global_fails() -> None:
    render_fails(global_values(regions={"eu": EU}), "coordinator.regions")


def test_multi_region_needs_the_shared_secret_in_both_topologies() -> None:
    for values in (regional(), global_values()):
        v = copy.deepcopy(values)
        del v["clusterSecret"]
        render_fails(v, "clusterSecret")


def test_topology_global_renders_as_before() -> None:
    v = global_values()
    v["coordinator"]["gateway"] = {"perPodServices": True}
    docs = manifests(v)
    env = env_values(docs)
    assert env["TOPOLOGY"] == "global"
    assert env["PEERS"] == ",".join(PEERS)
    assert env["BOOTSTRAP"] == "false" and env["LEARNER_ONLY"] == "true"
    assert "REGIONS" not in env
    # Raft and API across regions, on the NetworkPolicy and on every gateway Service.
    assert cross_region_ports(docs) == ["raft", "api"]
    assert gateway_ports(docs) == [["raft", "api"]] * 3
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, "1.30.0", strict=True)
    # crossRegionPorts still chooses.
    v["networkPolicy"]["crossRegionPorts"] = ["api"]
    assert cross_region_ports(manifests(v)) == ["api"]
    # The defaults of the global layout: this region bootstraps, votes, and knows no peers.
    env = env_values(manifests({"coordinator": {"topology": "global"}}))
    assert (env["PEERS"], env["BOOTSTRAP"], env["LEARNER_ONLY"]) == ("", "true", "false")


@pytest.mark.parametrize("topology, configured, expected", [
    ("regions", ["raft", "api"], ["api"]),
    ("regions", ["raft"], ["api"]),
    ("global", ["raft", "api"], ["raft", "api"]),
    ("global", ["raft"], ["raft"]),
])
def test_network_policy_ports_per_topology(topology: str, configured: list[str],
                                           expected: list[str]) -> None:
    v = regional() if topology == "regions" else global_values()
    v["networkPolicy"]["crossRegionPorts"] = configured
    v["coordinator"]["gateway"] = {"perPodServices": True}
    docs = manifests(v)
    assert cross_region_ports(docs) == expected
    # The gateway Services: Raft only for global.
    gw = ["raft", "api"] if topology == "global" else ["api"]
    assert gateway_ports(docs) == [gw] * 3
    # Inside the region both ports stay open to the release's own edges and coordinators.
    pol = by_name(docs, "NetworkPolicy", "-coordinator")
    inside = [r for r in pol["spec"]["ingress"] if any("podSelector" in p for p in r.get("from", []))]
    assert [p["port"] for p in inside[0]["ports"]] == ["raft", "api"]


# --- coordinator-run.sh with a fake heliograph-coordinator --------------------------------------

FAKE = r"""#!/bin/sh
# Fake heliograph-coordinator: records every call, answers like a replica would.
printf '%s\n' "$*" >> "$FAKE_DIR/calls"
cmd=$1
shift
api=""
prev=""
for a in "$@"; do
  if [ "$prev" = --api ]; then api=$a; fi
  prev=$a
done
case "$cmd" in
  serve) exec sleep 120 ;;
  status)
    if [ "$api" = "$FAKE_LOCAL" ]; then
      # Shaped like the real output: this replica's group first, then the other regions'
      # groups (each with a leader of its own) under "regions".
      if [ -f "$FAKE_DIR/member" ]; then
        echo '{"node_id": 100, "leader": 100, "members": [{"id": 100}], "region": "us",'
        echo ' "regions": [{"region": "eu", "connected": true, "group": {"leader": 200}}]}'
      elif [ -n "${FAKE_ELECTING:-}" ]; then
        # A member whose group is electing: no leader of its own, other regions' leaders.
        echo '{"node_id": 100, "leader": null, "members": [], "region": "us",'
        echo ' "regions": [{"region": "eu", "connected": true, "group": {"leader": 200}}]}'
      else
        echo '{"node_id": 100, "leader": null, "members": [], "region": "us", "regions": []}'
      fi
      exit 0
    fi
    case ",$FAKE_LEADERS," in *",$api,"*) echo '{"node_id": 101, "leader": 101, "regions": []}'; exit 0 ;; esac
    echo "$api: unreachable" >&2
    exit 1 ;;
  bootstrap)
    [ "$api" = "$FAKE_LOCAL" ] || exit 1
    touch "$FAKE_DIR/member"
    exit 0 ;;
  add)
    case ",$FAKE_LEADERS," in *",$api,"*) touch "$FAKE_DIR/member"; exit 0 ;; esac
    exit 1 ;;
  region)
    # Replicated through the group's log: needs a leader, i.e. a formed group.
    if [ -f "$FAKE_DIR/member" ]; then exit 0; fi
    echo "no leader" >&2
    exit 1 ;;
esac
exit 2
"""

LOCAL = "127.0.0.1:7001"
DEADLINE_S = 30.0


def sibling(i: int) -> str:
    return f"heliograph-coordinator-{i}.heliograph-coordinator-hl.heliograph.svc.cluster.local:7001"


class Run:
    """One start of the chart's run.sh (from the rendered ConfigMap) with the rendered env."""

    def __init__(self, tmp: Path, values: dict[str, Any], ordinal: int, leaders: list[str],
                 extra_env: dict[str, str] | None = None) -> None:
        docs = manifests(values)
        script = by_name(docs, "ConfigMap", "-coordinator-scripts")["data"]["run.sh"]
        self.tmp = tmp
        (tmp / "bin").mkdir(exist_ok=True)
        fake = tmp / "bin" / "heliograph-coordinator"
        fake.write_text(FAKE)
        fake.chmod(0o755)
        (tmp / "run.sh").write_text(script)
        (tmp / "data").mkdir(exist_ok=True)
        self.calls = tmp / "calls"
        self.calls.write_text("")
        env = {k: v for k, v in env_values(docs).items() if v is not None}
        env |= {
            "POD_NAME": f"heliograph-coordinator-{ordinal}",
            "POD_NAMESPACE": "heliograph",
            "DATA_ROOT": str(tmp / "data"),
            "HELIOGRAPH_CLUSTER_SECRET": "unused-by-the-fake",
            "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
            "FAKE_DIR": str(tmp),
            "FAKE_LOCAL": LOCAL,
            "FAKE_LEADERS": ",".join(leaders),
        } | (extra_env or {})
        assert env["API_PORT"] == "7001"
        self.stderr = tmp / "stderr"
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(["/bin/sh", str(tmp / "run.sh")], env=env, cwd=tmp,
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True)

    def lines(self) -> list[str]:
        return [line for line in self.calls.read_text().splitlines() if line]

    def wait_for(self, what: str, cond: Callable[[list[str]], bool]) -> list[str]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            lines = self.lines()
            if cond(lines):
                return lines
            assert self.proc.poll() is None, (what, self.proc.returncode, self.log())
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.lines()}\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text()

    def stop(self) -> None:
        """SIGTERM, as the kubelet sends it: run.sh passes it to the server and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        finally:
            try:  # the background announcer, if it is between two tries
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start(tmp_path: Path):
    runs: list[Run] = []

    def _start(values: dict[str, Any], ordinal: int, leaders: list[str] = (),
               extra_env: dict[str, str] | None = None) -> Run:
        r = Run(tmp_path, values, ordinal, list(leaders), extra_env)
        runs.append(r)
        return r

    yield _start
    for r in runs:
        r.stop()


def region_calls(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("region ")]


def announced(values: dict[str, Any]) -> list[str]:
    return [f"region --api {LOCAL} --region {name} --gateways {','.join(gw)}"
            for name, gw in sorted(values["coordinator"]["regions"].items())]


def touches_peers(lines: list[str]) -> list[str]:
    return [line for line in lines if any(p in line for p in PEERS)]


# The variables of the global layout, set anyway: topology regions must not read them.
GLOBAL_ENV = {"PEERS": ",".join(PEERS), "BOOTSTRAP": "false", "LEARNER_ONLY": "true"}


def test_script_regions_ordinal_0_bootstraps_its_group_and_announces_every_region(start) -> None:
    values = regional()
    expected = announced(values)
    run = start(values, 0, extra_env=GLOBAL_ENV)

    def done(lines: list[str]) -> bool:
        return all(e in lines for e in expected) and (run.tmp / "data" / ".heliograph-member").exists()

    lines = run.wait_for("bootstrap and both announcements", done)
    (serve,) = [line for line in lines if line.startswith("serve ")]
    assert serve.startswith("serve --id 100 ") and " --region us " in serve, serve
    assert f"bootstrap --api {LOCAL}" in lines
    assert not [line for line in lines if line.startswith("add ")]
    # Only its own region's replicas were asked whether a group exists; PEERS never.
    asked = {line.split("--api ")[1] for line in lines if line.startswith("status ")}
    assert asked <= {LOCAL, sibling(1), sibling(2)}, asked
    assert sibling(1) in asked and sibling(2) in asked
    assert not touches_peers(lines)
    # Every region announced, each successful call after the group formed.
    boot = lines.index(f"bootstrap --api {LOCAL}")
    for e in expected:
        assert len(lines) - 1 - lines[::-1].index(e) > boot, (e, lines)
    assert set(region_calls(lines)) == set(expected)
    log = run.log()
    assert "bootstrapping region us's group" in log
    for name, gw in sorted(values["coordinator"]["regions"].items()):
        assert f"told the group that region {name}'s gateways are {','.join(gw)}" in log
    run.stop()
    assert run.proc.returncode != 0  # the server was terminated: its status is passed on

    # Every start announces again; the volume's marker skips the join.
    again = start(values, 0, extra_env=GLOBAL_ENV)
    lines = again.wait_for("the announcements after a restart",
                           lambda ls: all(e in ls for e in expected))
    assert not [line for line in lines if line.startswith(("bootstrap ", "add "))]
    assert not touches_peers(lines)


def test_script_regions_other_ordinals_add_themselves_through_siblings(start) -> None:
    values = regional()
    expected = announced(values)
    run = start(values, 2, leaders=[sibling(0)], extra_env=GLOBAL_ENV)
    lines = run.wait_for("add and announcements", lambda ls: all(e in ls for e in expected))
    adds = [line for line in lines if line.startswith("add ")]
    assert adds and adds[-1] == (f"add --api {sibling(0)} --id 102 --raft "
                                 f"{sibling(2).rsplit(':', 1)[0]}:7000 --node-api {sibling(2)} "
                                 "--region us"), adds
    assert not any("--learner-only" in a for a in adds)
    assert not [line for line in lines if line.startswith("bootstrap ")]
    targets = {line.split("--api ")[1].split()[0] for line in lines if " --api " in line}
    assert sibling(2) not in targets, targets  # never asks itself by name
    assert not touches_peers(lines)


def test_script_regions_ordinal_0_joins_a_group_that_already_exists(start) -> None:
    values = regional()
    run = start(values, 0, leaders=[sibling(1)])
    run.wait_for("add through the sibling",
                 lambda ls: any(line.startswith(f"add --api {sibling(1)} ") for line in ls))
    run.wait_for("announcements", lambda ls: all(e in ls for e in announced(values)))
    lines = run.lines()
    assert not [line for line in lines if line.startswith("bootstrap ")]
    assert not touches_peers(lines)
    assert "joining it instead of bootstrapping" in run.log()


def test_script_reads_only_its_own_groups_leader(start) -> None:
    """The other regions' groups in `status` (nested under "regions", each with a leader) do
    not make a replica without a leader of its own count as a member."""
    values = regional()
    run = start(values, 0, extra_env={"FAKE_ELECTING": "1"})
    run.wait_for("bootstrap", lambda ls: f"bootstrap --api {LOCAL}" in ls)
    assert "already a member" not in run.log()


def test_script_global_ordinal_0_bootstraps_as_before(start) -> None:
    values = global_values(bootstrap=True, learnerOnly=False)
    run = start(values, 0)
    lines = run.wait_for("bootstrap", lambda ls: f"bootstrap --api {LOCAL}" in ls)
    # Before bootstrapping it asked its siblings and every peer whether a cluster exists.
    asked = [line.split("--api ")[1] for line in lines if line.startswith("status ")]
    for api in (sibling(1), sibling(2), *PEERS):
        assert api in asked, (api, asked)
    assert not [line for line in lines if line.startswith("add ")]
    run.wait_for("the marker", lambda ls: (run.tmp / "data" / ".heliograph-member").exists())
    assert not region_calls(run.lines())


def test_script_global_replica_adds_itself_through_a_peer_as_learner(start) -> None:
    values = global_values()  # bootstrap false, learnerOnly true
    run = start(values, 0, leaders=[PEERS[1]])
    lines = run.wait_for("add through the peer",
                         lambda ls: any(line.startswith(f"add --api {PEERS[1]} ") for line in ls))
    add = [line for line in lines if line.startswith("add ")][-1]
    assert add.endswith("--region us --learner-only"), add
    # Its siblings were tried first, then the peers in order.
    tried = [line.split("--api ")[1].split()[0] for line in lines if line.startswith("add ")]
    assert tried[:4] == [sibling(1), sibling(2), PEERS[0], PEERS[1]], tried
    assert not [line for line in lines if line.startswith("bootstrap ")]
    run.wait_for("the marker", lambda ls: (run.tmp / "data" / ".heliograph-member").exists())
    assert not region_calls(run.lines())


def test_script_global_ignores_regions(start) -> None:
    """REGIONS is never rendered with topology global; set by hand, the script ignores it."""
    values = global_values(bootstrap=True, learnerOnly=False)
    run = start(values, 0, extra_env={"REGIONS": "eu=" + ",".join(EU)})
    run.wait_for("the marker", lambda ls: (run.tmp / "data" / ".heliograph-member").exists())
    assert f"bootstrap --api {LOCAL}" in run.lines()
    assert not region_calls(run.lines())
