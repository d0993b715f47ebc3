"""The README, followed literally: ``imctl up`` as it says (on free ports), its banner as it
shows it, its curl, WebSocket and ``imctl`` steps with the outputs it shows; and the
sentence that ``configs/local-real.yaml`` runs the same on a real etcd and Redis.

What a client does (ask the scheduler, open the WebSocket) is in one place, ``Client``:
when clients must present a credential, that is where it goes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control.settings import load_settings
from control.testing import EtcdServer, RedisServer, free_port, wait_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# The README's addresses (the packaged local.yaml's), moved by the tests to free ports.
README_PORTS = {"scheduler": 8080, "controller": 8090}
README_NODE_PORTS = {"north-1": 9101, "north-2": 9102, "south-1": 9201}


def _imctl() -> Path:
    """The imctl of the Python running the tests (``.venv/bin/imctl`` in the checkout)."""
    script = Path(sys.executable).parent / "imctl"
    assert script.exists(), f"{script}: install the package (pip install -e .)"
    return script


def _shown_as(script: Path) -> str:
    """How the banner names ``script`` when run from the checkout."""
    try:
        return str(script.relative_to(ROOT))
    except ValueError:
        return str(script)


def _new_user_env() -> dict[str, str]:
    """A new user's shell after ./scripts/up.sh: the venv's bin is not on PATH."""
    bin_dir = str(_imctl().parent)
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p and p != bin_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMCTL_")}
    return env | {"PATH": path or "/usr/bin:/bin"}


# -- the README's own text -------------------------------------------------------------------


def readme_block_after(marker: str) -> str:
    """The fenced block that follows ``marker`` in the README, dedented."""
    at = README.index(marker)
    start = README.index("```", at)
    body_start = README.index("\n", start) + 1
    end = README.index("```", body_start)
    lines = README[body_start:end].rstrip("\n").splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


def readme_commands() -> list[str]:
    """The shell commands of "Connect a client", in order (comments dropped)."""
    section = README[README.index("## Connect a client") : README.index("## Status")]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        block = re.sub(r"\\\n\s*", "", block)  # a line continued with a backslash
        for line in block.splitlines():
            line = line.split("   #")[0].strip()
            if line:
                commands.append(line)
    return commands


class Ports:
    """The README's addresses mapped to this test's free ports."""

    def __init__(self) -> None:
        self.scheduler = free_port()
        self.controller = free_port()
        self.nodes = {node: free_port() for node in README_NODE_PORTS}

    def move(self, text: str) -> str:
        pairs = [(README_PORTS["scheduler"], self.scheduler)]
        pairs.append((README_PORTS["controller"], self.controller))
        pairs += [(README_NODE_PORTS[n], p) for n, p in self.nodes.items()]
        for old, new in pairs:
            text = re.sub(rf"127\.0\.0\.1:{old}\b", f"127.0.0.1:{new}", text)
        return text

    def config(self, source: Path, path: Path, **changes: Any) -> Path:
        data = yaml.safe_load(source.read_text())
        for node in data["access"]["nodes"]:
            node["port"] = self.nodes[node["id"]]
        data["scheduler"]["port"] = self.scheduler
        data["controller"]["port"] = self.controller
        for section, values in changes.items():
            data[section] = {**data.get(section, {}), **values}
        path.write_text(yaml.safe_dump(data))
        return path

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.scheduler}"


# -- a client, as the README tells one to be -------------------------------------------------


class Client:
    """The client's two steps: ask the scheduler (the README's curl), open the WebSocket
    (``endpoint?ticket=<ticket>&platform=<platform>``)."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    def ask(self, uid: str = "alice", device: str = "phone-1", platform: str = "ios") -> Any:
        (curl,) = [c for c in readme_commands() if c.startswith("curl ")]
        curl = curl.replace("uid=alice", f"uid={uid}").replace("device=phone-1", f"device={device}")
        curl = curl.replace("platform=ios", f"platform={platform}")
        curl = curl.replace("--uid alice", f"--uid {uid}")
        # Through a shell, as the user runs it: the token comes from $(imctl token ...).
        run = subprocess.run(
            ["bash", "-c", self.ports.move(curl)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env=_new_user_env(),
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    @staticmethod
    def ws_url(answer: Any, platform: str = "ios") -> str:
        return f"{answer['endpoint']}?ticket={answer['ticket']}&platform={platform}"


# -- running imctl ---------------------------------------------------------------------------


class Up:
    """``imctl up`` running in the checkout, as the README starts it."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [str(_imctl()), "up", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_new_user_env(),
        )
        self.banner: list[str] = []

    def read_banner(self, within: float = 30) -> str:
        assert self.proc.stdout is not None
        watchdog = threading.Timer(within, self.proc.kill)  # bounds the reads below
        watchdog.start()
        try:
            while not self.banner or self.banner[-1] != "Ctrl-C stops it.":
                line = self.proc.stdout.readline()
                assert line, f"imctl up ended: {self.banner} {self.proc.stderr.read()}"  # type: ignore[union-attr]
                self.banner.append(line.rstrip("\n"))
        finally:
            watchdog.cancel()
        return "\n".join(self.banner)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as the banner says."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=5)
        return self.proc.returncode, err


@pytest.fixture
def up_from_readme(tmp_path: Path) -> Iterator[tuple[Up, Ports]]:
    ports = Ports()
    config = ports.config(ROOT / "configs" / "local.yaml", tmp_path / "local.yaml")
    up = Up(config)
    try:
        yield up, ports
    finally:
        up.interrupt()


def run_readme_command(command: str, ports: Ports, timeout: float = 30) -> str:
    """One of the README's ``.venv/bin/imctl ...`` lines, as a new user runs it."""
    argv = shlex.split(ports.move(command))
    assert argv[0] == ".venv/bin/imctl", argv
    argv[0] = str(_imctl())
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_new_user_env()
    )
    assert run.returncode == 0, (command, run.stderr)
    return run.stdout


def _words(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


# -- the tests -------------------------------------------------------------------------------


def test_readme_walkthrough(up_from_readme: tuple[Up, Ports]) -> None:
    import asyncio

    import aiohttp

    up, ports = up_from_readme
    # The banner is the README's, on this test's ports and with this checkout's imctl.
    # The test runs imctl up on a copy of the config moved to free ports, which the banner
    # names in its imctl token line; the README's runs on the packaged one.
    shown = re.sub(r" --config \S+?\)", ")", up.read_banner())
    expected = ports.move(readme_block_after("It prints where a client should ask:"))
    script = _shown_as(_imctl())
    expected = expected.replace(".venv/bin/imctl", script)
    if Path(script).is_absolute():
        expected = expected.replace("$PWD/.venv/bin", str(Path(script).parent))
    assert _words(shown) == _words(expected), shown
    commands = readme_commands()

    # Step 1: the README's curl.
    client = Client(ports)
    answer = client.ask()
    assert set(answer) >= {"node", "endpoint", "ticket", "expires_in", "fallbacks"}
    assert set(answer) >= {"heartbeat", "backoff", "region", "track"}
    assert answer["node"] == "north-1" and answer["track"] == "stable"

    async def session() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(client.ws_url(answer)) as ws,
        ):
            got: dict[str, Any] = {"welcome": await ws.receive_json(timeout=5)}
            # Step 2's table, a few rows of it.
            for frame, key in (
                ({"t": "ping"}, "ping"),
                ({"t": "echo", "body": "hi"}, "echo"),
                ({"t": "status", "status": "busy"}, "status"),
            ):
                await ws.send_json(frame)
                got[key] = await ws.receive_json(timeout=5)
            await ws.send_json({"t": "status", "status": "online"})
            await ws.receive_json(timeout=5)
            # Step 3, with the WebSocket open.
            loop = asyncio.get_running_loop()
            operator = [c for c in commands if c.startswith(".venv/bin/imctl presence")]
            who_cmd, count_cmd = operator[0], operator[1]
            got["who"] = await loop.run_in_executor(None, run_readme_command, who_cmd, ports)
            got["count"] = await loop.run_in_executor(None, run_readme_command, count_cmd, ports)
            return got

    got = asyncio.run(session())
    welcome = got["welcome"]
    assert welcome["t"] == "welcome" and welcome["node"] == "north-1"
    assert set(welcome) >= {"conn", "heartbeat"}
    assert got["ping"] == {"t": "pong"}
    assert got["echo"] == {"t": "echo", "body": "hi"}
    assert got["status"] == {"t": "status", "status": "busy", "ok": True}

    # `who` as the README shows it, but for the connection id and the seconds.
    want_header, want_row = _words(readme_block_after("`who` lists alice's device"))
    header, row = _words(got["who"])
    assert header == want_header
    assert row[:2] == want_row[:2] and row[3:6] == want_row[3:6], row
    assert row[2] == welcome["conn"] and re.fullmatch(r"\d+s", row[6]) and row[7] == "ago"
    # `count --by platform` exactly as shown.
    assert _words(got["count"]) == _words(readme_block_after("and `count --by platform`:"))

    # The reference client the README offers, with --output json: frames, one a line.
    offered = re.search(r"`(\.venv/bin/imctl connect --uid alice [^`]*)`", README)
    assert offered is not None
    argv = shlex.split(ports.move(offered.group(1))) + ["--output", "json"]
    argv[0] = str(_imctl())
    run = subprocess.run(
        argv,
        input='{"t": "echo", "body": "json"}\n',
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=_new_user_env(),
    )
    assert run.returncode == 0, run.stderr
    frames = [json.loads(line) for line in run.stdout.splitlines()]
    assert frames[0]["t"] == "welcome" and {"t": "echo", "body": "json"} in frames, frames
    assert "# scheduler: node " in run.stderr

    # Ctrl-C: an orderly stop, nothing taken for a mass loss.
    code, err = up.interrupt()
    assert code == 0, err
    assert "self-preservation" not in err and "vanished" not in err, err
    assert "Traceback" not in err and "Task was destroyed" not in err, err


def test_shipped_configs_are_what_they_say() -> None:
    real = yaml.safe_load((ROOT / "configs" / "local-real.yaml").read_text())
    ports = [n["port"] for n in real["access"]["nodes"]]
    ports += [real["scheduler"]["port"], real["controller"]["port"]]
    assert len(ports) == len(set(ports)), ports
    settings = load_settings(ROOT / "configs" / "local-real.yaml", env={})
    endpoints = [n.public_endpoint() for n in settings.access.nodes]
    assert all(e.startswith("ws://127.0.0.1:") for e in endpoints), endpoints
    assert real["cluster"]["etcd"]["endpoints"] == ["127.0.0.1:2379"]
    assert all(s["url"].startswith("redis://127.0.0.1:") for s in real["presence"]["shards"])
    production = (ROOT / "configs" / "production-example.yaml").read_text()
    assert "EXAMPLE FOR A MULTI-HOST PRODUCTION DEPLOYMENT" in production.splitlines()[0]
    assert not (ROOT / "configs" / "cluster.yaml").exists()
    assert "configs/local-real.yaml" in README and "configs/cluster.yaml" not in README


@pytest.mark.timeout(120)
def test_local_real_config_runs_on_one_machine(
    etcd_server: EtcdServer, redis_servers: list[RedisServer], tmp_path: Path
) -> None:
    """README: ``imctl up --config configs/local-real.yaml`` runs the same on a real etcd
    and Redis. Its addresses moved to this test's servers; the rest as shipped."""
    import asyncio

    import aiohttp

    ports = Ports()
    shards = yaml.safe_load((ROOT / "configs" / "local-real.yaml").read_text())["presence"]
    assert len(shards["shards"]) <= len(redis_servers)
    config = ports.config(
        ROOT / "configs" / "local-real.yaml",
        tmp_path / "local-real.yaml",
        cluster={"etcd": {"endpoints": [etcd_server.endpoint]}, "prefix": f"/lr{ports.scheduler}"},
        presence={
            "key_prefix": f"lr{ports.scheduler}:",
            "shards": [
                {"id": s["id"], "url": r.url}
                for s, r in zip(shards["shards"], redis_servers, strict=False)
            ],
        },
    )
    up = Up(config)
    try:
        banner = up.read_banner()
        assert "registry etcd, presence redis" in banner, banner
        wait_port(ports.scheduler)
        client = Client(ports)
        answer = client.ask(uid="carol")
        assert answer["endpoint"] == f"ws://127.0.0.1:{ports.nodes[answer['node']]}/ws"

        async def login() -> tuple[dict[str, Any], dict[str, Any]]:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(client.ws_url(answer)) as ws,
            ):
                welcome = await ws.receive_json(timeout=5)
                async with http.get(f"{ports.server}/v1/presence/carol") as resp:
                    return welcome, await resp.json()

        welcome, who = asyncio.run(login())
        assert welcome["t"] == "welcome" and welcome["node"] == answer["node"]
        assert who["online"] and who["devices"][0]["conn"] == welcome["conn"]
        assert who["devices"][0]["platform"] == "ios"
        deadline = time.monotonic() + 5  # seen online through the Redis shards, too
        while True:
            with urllib.request.urlopen(f"{ports.server}/v1/presence/count", timeout=5) as r:
                total = json.loads(r.read())["total"]
            if total == 0 or time.monotonic() > deadline:
                break  # carol left with the session above
            time.sleep(0.1)
        assert total == 0
    finally:
        code, err = up.interrupt()
    assert code == 0, err
    assert "vanished" not in err and "Traceback" not in err, err


def test_readme_ring_add_on_imctl_up(up_from_readme: tuple[Up, Ports]) -> None:
    """README: ``imctl up`` runs two embedded shards; ``imctl presence ring add
    embedded:s2`` and ``ring status --watch`` until stable. Users connected before the
    resize stay connected and findable after it, on the shard the new ring gives them."""
    import asyncio

    import aiohttp

    from control.presence.ring import Ring, RingSpec, ShardSpec
    from control.testing import Pinger

    up, ports = up_from_readme
    up.read_banner()
    assert "`imctl presence ring add embedded:s2` shows a migration" in README.replace("\n", " ")
    uids = [f"ring-user-{i}" for i in range(30)]
    tokens = run_readme_command(
        ".venv/bin/imctl token " + " ".join(f"--uid {u}" for u in uids), ports
    ).split()
    assert len(tokens) == len(uids)
    base = "/v1/endpoint?device=phone-1&platform=ios&version=1.0.0&uid="

    async def session() -> tuple[dict[str, str], Any, str, str]:
        async with aiohttp.ClientSession() as http:
            pingers, conns = [], {}
            try:
                for uid, token in zip(uids, tokens, strict=True):
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(ports.server + base + uid, headers=headers) as resp:
                        answer = await resp.json()
                    ws = await http.ws_connect(Client.ws_url(answer))
                    conns[uid] = (await ws.receive_json(timeout=5))["conn"]
                    pingers.append(Pinger(ws, every=1.0, strict=True))
                loop = asyncio.get_running_loop()
                added = await loop.run_in_executor(
                    None,
                    run_readme_command,
                    ".venv/bin/imctl presence ring add embedded:s2 --server http://127.0.0.1:8080",
                    ports,
                )
                watched = await loop.run_in_executor(
                    None,
                    run_readme_command,
                    ".venv/bin/imctl presence ring status --watch --server http://127.0.0.1:8080",
                    ports,
                    60,
                )
                assert all(p.alive for p in pingers), [p.other for p in pingers if not p.alive]
                async with http.post(
                    f"{ports.server}/v1/presence/lookup", json={"uids": uids}
                ) as resp:
                    found = await resp.json()
                return conns, found, added, watched
            finally:
                for p in pingers:
                    await p.close()

    conns, found, added, watched = asyncio.run(session())
    assert added.startswith("ring version 2: adding shard s2 (embedded:s2"), added
    assert "ring version 2: stable, 3 shards" in watched, watched
    assert [w[0] for w in _words(watched)[-3:]] == ["s0", "s1", "s2"], watched
    assert found["offline"] == [] and found["unknown"] == [], found
    assert {u: [d["conn"] for d in ds] for u, ds in found["online"].items()} == {
        u: [c] for u, c in conns.items()
    }
    three = Ring(RingSpec(2, tuple(ShardSpec(f"s{i}", f"embedded:s{i}") for i in range(3))))
    assert any(three.owner(u) == "s2" for u in uids)  # some of them moved
