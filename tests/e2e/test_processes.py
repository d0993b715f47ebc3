"""Real processes driven as clients and operators would: ``imctl up``, ``imctl scheduler``
on a real etcd, ``imctl nodes``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from control.testing import EtcdServer, free_port, local_config, spawn_imctl, until_sync, wait_port

pytestmark = pytest.mark.e2e
IMCTL = [sys.executable, "-m", "control.cli"]
ROOT = Path(__file__).resolve().parents[2]


def get(url: str, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def imctl_token(uid: str, config: Path) -> str:
    """A client token the way a user gets one: ``imctl token``."""
    run = subprocess.run(
        [*IMCTL, "token", "--uid", uid, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    )
    return run.stdout.strip()


def wait_ready(base: str, within: float = 10) -> None:
    """Until a scheduler listening at ``base`` answers /readyz 200."""
    wait_port(int(base.rsplit(":", 1)[1]))
    until_sync(lambda: get(f"{base}/readyz")[0] == 200, within, "scheduler ready", every=0.1)


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return spawn_imctl(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return out, err


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """``imctl up`` on the packaged local config, moved to free ports."""

    path = tmp_path / "local.yaml"
    port = local_config(path)["scheduler"]["port"]
    proc = spawn(["up", "--config", str(path)])
    wait_port(port)
    yield f"http://127.0.0.1:{port}", proc, path
    stop(proc)


def test_up_prints_where_to_ask_and_serves(up: tuple[str, subprocess.Popen[str], Path]) -> None:
    url, proc, config = up
    ask = f"{url}/v1/endpoint?uid=alice&device=p1&platform=ios&version=1.0"
    status, body = get(ask)
    assert status == 401 and body["reason"] == "missing", body  # the shipped config: auth on
    status, body = get(ask, imctl_token("alice", config))
    assert status == 200 and body["endpoint"].startswith("ws://")

    async def talk() -> list[dict]:  # type: ignore[type-arg]
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}") as ws,
        ):
            frames = [await ws.receive_json(timeout=5)]
            await ws.send_json({"t": "echo", "body": "hi"})
            frames.append(await ws.receive_json(timeout=5))
            _status, who = get(f"{url}/v1/presence/alice")
            frames.append(who)
            return frames

    import asyncio

    welcome, echo, who = asyncio.run(talk())
    assert welcome["t"] == "welcome" and welcome["node"] == body["node"]
    assert echo == {"t": "echo", "body": "hi"}
    assert who["online"] and who["devices"][0]["node"] == body["node"]
    nodes = subprocess.run(
        [*IMCTL, "nodes", "--server", url, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    listed = json.loads(nodes.stdout)
    assert {n["id"] for n in listed["nodes"]} == {"north-1", "north-2", "south-1"}
    table = subprocess.run(
        [*IMCTL, "nodes", "--server", url], capture_output=True, text=True, timeout=30, check=True
    )
    assert "north-1" in table.stdout and "releases: canary-1-1" in table.stdout
    header, *rows = table.stdout.splitlines()[:4]
    assert header.split()[-2:] == ["SOURCE", "REPORTED"], header
    # Nodes report every report_interval_s (2 s): their last report is seconds old.
    assert all(re.search(r"registry\s+\d+s ago$", row.rstrip()) for row in rows), rows
    out, err = stop(proc)
    assert f"scheduler:  {url}" in out and "/v1/endpoint?uid=" in out
    assert f"token --uid alice --config {config})" in out, out
    assert out.count("access:") == 3
    assert proc.returncode == 0, err


def test_nodes_against_nothing_fails_cleanly() -> None:
    port = free_port()
    run = subprocess.run(
        [*IMCTL, "nodes", "--server", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert "cannot reach" in run.stderr and "Traceback" not in run.stderr


def test_scheduler_on_etcd_with_tokens(etcd_server: EtcdServer, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
cluster: {{backend: etcd, prefix: /e2e-{port}, etcd: {{endpoints: ["{etcd_server.endpoint}"]}}}}
regions: {{known: [r1]}}
registry:
  static_nodes: [{{id: s1, endpoint: "ws://127.0.0.1:1/ws", region: r1}}]
scheduler: {{port: {port}}}
admin:
  tokens: [{{name: ops, token: operator-token-123456, role: operator}}]
""")
    proc = spawn(["scheduler", "--config", str(cfg)])
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        denied = subprocess.run(
            [*IMCTL, "nodes", "--server", f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert denied.returncode == 1 and "401" in denied.stderr
        ok = subprocess.run(
            [
                *IMCTL,
                "nodes",
                "--config",
                str(cfg),
                "--token",
                "operator-token-123456",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ok.returncode == 0, ok.stderr
        assert [n["id"] for n in json.loads(ok.stdout)["nodes"]] == ["s1"]
    finally:
        _out, err = stop(proc)
    assert proc.returncode == 0, err


def test_scheduler_leaves_its_load_balancer_before_it_stops(tmp_path: Path) -> None:
    """SIGTERM with scheduler.shutdown_grace_s: /readyz turns 503 at once, so the load
    balancer stops sending, while requests already on their way are still answered; the
    process stops when the grace is over."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
regions: {{known: [r1]}}
registry:
  static_nodes: [{{id: s1, endpoint: "ws://127.0.0.1:1/ws", region: r1}}]
scheduler: {{port: {port}, shutdown_grace_s: 3}}
""")
    proc = spawn(["scheduler", "--config", str(cfg)])
    base = f"http://127.0.0.1:{port}"
    ask = f"{base}/v1/endpoint?uid=u1&device=d&platform=ios&version=1.0"
    token = imctl_token("u1", cfg)
    try:
        wait_ready(base)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while get(f"{base}/readyz")[0] != 503:
            assert time.monotonic() - signalled < 1.0, "still ready after SIGTERM"
            time.sleep(0.05)
        status, body = get(f"{base}/readyz")
        assert status == 503 and body["stopping"] is True, body
        assert get(ask, token)[0] == 200  # in the grace: still answering
        assert proc.wait(10) == 0
        assert 2.5 <= time.monotonic() - signalled < 8
    finally:
        stop(proc)


def test_scheduler_refuses_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scheduler: {port: nope}\n")
    run = subprocess.run(
        [*IMCTL, "scheduler", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2 and "scheduler.port" in run.stderr and "Traceback" not in run.stderr


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        run = subprocess.run(
            [*IMCTL, "up"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "IMCTL_SCHEDULER__PORT": str(port)},
            cwd=ROOT,
        )
    assert run.returncode == 1 and "cannot listen" in run.stderr


@pytest.mark.parametrize("command", [["access", "--node-id", "n0"], ["controller"]])
def test_unreachable_etcd_at_start_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    """Fail fast with one line (a process supervisor restarts it), not a traceback."""
    dead = free_port()  # nothing listens there
    config = {
        "cluster": {
            "backend": "etcd",
            "etcd": {"endpoints": [f"127.0.0.1:{dead}"], "timeout_s": 1},
        },
        "regions": {"known": ["r"]},
        "access": {
            "nodes": [{"id": "n0", "region": "r", "port": free_port()}],
            "internal_token": "tok-0123456789abcdef",
        },
        "controller": {"port": free_port()},
        "tickets": {"active_kid": "k", "keys": {"k": "0123456789abcdef0123"}},
    }
    path = tmp_path / "dead-etcd.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [command[0], "--config", str(path), *command[1:]]
    run = subprocess.run([*IMCTL, *command], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 1, run.stderr
    assert "cannot start" in run.stderr and f"127.0.0.1:{dead}" in run.stderr
    assert "Traceback" not in run.stderr


def test_up_on_etcd_and_redis(etcd_server: EtcdServer, redis_servers: list, tmp_path: Path) -> None:
    """``imctl up --config`` with the cluster backends runs the same cluster on real etcd
    and Redis."""
    import asyncio

    port = free_port()
    path = tmp_path / "cluster.yaml"
    local_config(
        path,
        cluster={
            "backend": "etcd",
            "prefix": f"/up-{port}",
            "etcd": {"endpoints": [etcd_server.endpoint]},
        },
        presence={
            "backend": "redis",
            "key_prefix": f"up{port}:",
            "shards": [{"id": f"s{i}", "url": r.url} for i, r in enumerate(redis_servers)],
        },
        scheduler={"port": port},
    )
    proc = spawn(["up", "--config", str(path)])
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        ask = f"{url}/v1/endpoint?uid=carol&device=p1&platform=web&version=2.0"
        status, body = get(ask, imctl_token("carol", path))
        assert status == 200

        async def login() -> dict:  # type: ignore[type-arg]
            import aiohttp

            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}") as ws,
            ):
                await ws.receive_json(timeout=5)
                return get(f"{url}/v1/presence/carol")[1]

        who = asyncio.run(login())
        assert who["online"] and who["devices"][0]["node"] == body["node"]
    finally:
        out, err = stop(proc)
    assert "registry etcd, presence redis" in out, err


def test_operator_verbs_against_something_else_are_a_clear_error(
    up: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, _, _ = up
    # A server that answers 200 with JSON of another shape: the scheduler's own /healthz.
    other = f"{url}/healthz?path="
    for verb in (["nodes"], ["presence", "who", "alice"], ["presence", "count"]):
        run = subprocess.run(
            [*IMCTL, *verb, "--server", other], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 1, (verb, run.stderr)
        assert "unexpected answer from" in run.stderr and "Traceback" not in run.stderr


def test_connect_client_talks_then_leaves_at_end_of_input(
    up: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, _, _ = up
    seen: list[str] = []
    with subprocess.Popen(
        [*IMCTL, "connect", "--uid", "carol", "--server", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as client:
        watchdog = threading.Timer(30, client.kill)  # bounds every read below
        watchdog.start()
        try:
            assert client.stdin is not None and client.stdout is not None

            def read_until(marker: str) -> None:
                while not any(line.startswith("< ") and marker in line for line in seen):
                    seen.append(client.stdout.readline())  # type: ignore[union-attr]
                    assert seen[-1], f"client ended early: {seen}"

            read_until('"welcome"')
            client.stdin.write('{"t": "echo", "body": "hi"}\n')
            client.stdin.flush()
            read_until('"echo"')
            _status, who = get(f"{url}/v1/presence/carol")
            assert who["online"]
            client.stdin.close()
            rest = client.stdout.read()
            assert client.wait(10) == 0
        finally:
            watchdog.cancel()
            if client.poll() is None:
                client.kill()
    assert seen[0].startswith("# scheduler: node ")
    assert '< {"t": "echo", "body": "hi"}' in "".join(seen)
    assert "# end of input: disconnecting" in rest
