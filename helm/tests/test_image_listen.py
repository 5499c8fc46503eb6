"""(8) The image's defaults reach beyond loopback: the edge started with exactly the Dockerfile's
ENTRYPOINT, CMD and ENV, and the coordinator with the invocation the Dockerfile documents,
answer /healthz on a non-loopback address of a network namespace this test creates."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from test_dockerfile import DOCKERFILE, instructions

ADDR = "10.203.0.1"
BIN_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
CLUSTER_SECRET = "image-listen-test-secret"


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in instructions():
        if op == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def exec_form(op_name: str) -> list[str]:
    found = [rest for op, rest in instructions() if op == op_name]
    if not found:
        return []
    argv = json.loads(found[-1])
    assert isinstance(argv, list), f"{op_name} must use the exec (JSON) form"
    return argv


def documented_coordinator() -> tuple[dict[str, str], list[str]]:
    """The `docker run … --entrypoint heliograph-coordinator IMAGE ARGS` line of the comments."""
    lines = [l.lstrip("#").strip() for l in DOCKERFILE.read_text().splitlines() if l.startswith("#")]
    text = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    (cmd,) = [l for l in text.splitlines() if "--entrypoint heliograph-coordinator" in l]
    argv = shlex.split(cmd[cmd.index("docker run"):])
    env, i = {}, 2
    while i < len(argv):
        a = argv[i]
        if a == "-e":
            k, _, v = argv[i + 1].partition("=")
            env[k] = v
            i += 2
        elif a in {"-p", "--entrypoint"}:
            i += 2
        else:
            break
    return env, argv[i + 1:]  # argv[i] is the image


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        if shutil.which("cargo") is None:
            pytest.skip(f"{path} is not built and cargo is missing")
        subprocess.run(["nice", "-n", "15", "cargo", "build", "-p", "heliograph-edge",
                        "-p", "heliograph-coordinator"], cwd=REPO, check=True)
    return path


@pytest.fixture()
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is missing")
    ns = f"hg-{uuid.uuid4().hex[:8]}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(ip + ["link", "set", "lo", "up"], check=True)
        subprocess.run(ip + ["link", "add", "hg0", "type", "veth", "peer", "name", "hg1"], check=True)
        subprocess.run(ip + ["addr", "add", f"{ADDR}/24", "dev", "hg0"], check=True)
        subprocess.run(ip + ["link", "set", "hg0", "up"], check=True)
        subprocess.run(ip + ["link", "set", "hg1", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def start(ns: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=base | env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def answers(ns: str, url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    probe = ("import sys, urllib.request\n"
             "sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        r = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", probe, url],
                           capture_output=True)
        if r.returncode == 0:
            return True
        time.sleep(0.3)
    return False


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""


def test_edge_image_defaults_listen_on_all_interfaces(netns: str, tmp_path: Path) -> None:
    entry = exec_form("ENTRYPOINT")
    assert entry and Path(entry[0]).name == "heliograph-edge", entry
    argv = [str(binary("heliograph-edge"))] + entry[1:] + exec_form("CMD")
    env = image_env()
    assert "HELIOGRAPH_METRICS_LISTEN" not in env, "both binaries read it: it cannot suit both"
    # WORKDIR: the edge keeps its data under ./data.
    proc = start(netns, argv, env, tmp_path)
    try:
        ok = answers(netns, f"http://{ADDR}:8080/healthz", proc)
    finally:
        log = stop(proc)
    assert ok, f"the edge started as the image starts it does not answer on {ADDR}:8080\n{log}"


def test_documented_coordinator_invocation_listens_on_all_interfaces(netns: str, tmp_path: Path) -> None:
    doc_env, args = documented_coordinator()
    assert args[0] == "serve", args
    args = [a.replace("HOST", ADDR) for a in args]
    env = image_env() | doc_env
    env["HELIOGRAPH_CLUSTER_SECRET"] = CLUSTER_SECRET
    proc = start(netns, [str(binary("heliograph-coordinator")), *args], env, tmp_path)
    try:
        ok = answers(netns, f"http://{ADDR}:7002/healthz", proc)
        # The Raft and API listeners (the image's ENV) accept on the same address.
        conn = ("import socket, sys\n"
                "for p in (7000, 7001): socket.create_connection((sys.argv[1], p), timeout=2).close()")
        tcp = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", conn, ADDR],
                             capture_output=True, text=True) if ok else None
    finally:
        log = stop(proc)
    assert ok, f"the documented coordinator does not answer on {ADDR}:7002\n{log}"
    assert tcp is not None and tcp.returncode == 0, (tcp.stderr if tcp else "", log)
