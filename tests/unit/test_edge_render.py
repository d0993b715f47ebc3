"""HAProxy's configuration rendered from registry views: who is routed where and who is
not, byte for byte against golden files, and every rendering accepted by `haproxy -c`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from control.common.registry import NodeRecord
from control.edge.config import EdgeConfig, EdgeSettings
from control.edge.render import EdgeView, render

GOLDEN = Path(__file__).parent / "golden"


def node(nid: str, endpoint: str, proxy: str = "", state: str = "up") -> NodeRecord:
    return NodeRecord(
        id=nid,
        endpoint=endpoint,
        region="north",
        proxy=proxy or f"127.0.0.1:{9100 + int(nid[1:] or 0)}",
        state=state,  # type: ignore[arg-type]
    )


PORTS = EdgeConfig(EdgeSettings(first_port=20000, last_port=20009), idle_timeout_s=120)
VIEW = EdgeView.of(
    [
        node("n2", "ws://127.0.0.1:20002/ws"),
        node("n1", "ws://127.0.0.1:20001/ws"),
        node("n3", "ws://127.0.0.1:20003/ws", state="draining"),
        node("n4", "ws://127.0.0.1:20001/ws"),  # n1's port
        node("n5", "ws://127.0.0.1:30000/ws"),  # outside the range
        node("n6", "ws://10.0.0.6:20006/ws"),  # not on this balancer
        replace(node("n7", "ws://127.0.0.1:20007/ws"), proxy=""),  # no PROXY listener
        node("n8", "ws://127.0.0.1:20008/ws", proxy="127.0.0.1:1\nlisten evil"),
    ]
)
SNI = ["n1.example.test", "n2.example.test"]
TLS_VIEW = EdgeView.of(
    [
        node("n1", f"wss://{SNI[0]}:8443/ws"),
        node("n2", f"wss://{SNI[1]}:8443/ws"),
        node("n3", "wss://bad_name!:8443/ws"),
        node("n4", "ws://n4.example.test:8443/ws"),
    ]
)


def test_ports_route_up_nodes_and_say_why_not_the_others() -> None:
    rendering = render(VIEW, PORTS)
    assert [(r.node, r.public, r.backend) for r in rendering.routes] == [
        ("n1", "port 20001", "127.0.0.1:9101"),
        ("n2", "port 20002", "127.0.0.1:9102"),
    ]
    why = dict(rendering.skipped)
    assert why["n3"] == "draining"
    assert why["n4"] == "port 20001 is n1's"
    assert "outside 20000-20009" in why["n5"]
    assert "is not ws://127.0.0.1:PORT" in why["n6"]
    assert why["n7"] == "no proxy_port"
    assert "not host:port" in why["n8"]
    assert "evil" not in rendering.text
    assert rendering.text == (GOLDEN / "edge_ports.cfg").read_text()


def test_same_view_same_bytes_and_a_vanished_node_leaves() -> None:
    assert render(VIEW, PORTS).text == render(EdgeView.of(reversed(VIEW.nodes)), PORTS).text
    fewer = EdgeView.of(n for n in VIEW.nodes if n.id != "n2")
    text = render(fewer, PORTS).text
    assert "node_n2" not in text and "127.0.0.1:20002" not in text and "node_n1" in text


@pytest.mark.parametrize("mode", ["passthrough", "terminate"])
def test_tls_routes_by_sni(mode: str) -> None:
    config = EdgeConfig(EdgeSettings(tls=mode, certificate="/etc/imctl/lb.pem"))  # type: ignore[arg-type]
    rendering = render(TLS_VIEW, config)
    assert [r.public for r in rendering.routes] == [f"sni {SNI[0]}", f"sni {SNI[1]}"]
    assert {n for n, _ in rendering.skipped} == {"n3", "n4"}
    assert rendering.text == (GOLDEN / f"edge_{mode}.cfg").read_text()


def test_haproxy_accepts_every_rendering(tmp_path: Path) -> None:
    binary = shutil.which("haproxy")
    assert binary, "install Debian's haproxy (scripts/test.sh does)"
    pem = tmp_path / "lb.pem"
    key = tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=example.test",
            "-keyout",
            str(key),
            "-out",
            str(pem),
        ],
        check=True,
        capture_output=True,
    )
    pem.write_text(pem.read_text() + key.read_text())
    renderings = [render(VIEW, PORTS), render(EdgeView(()), PORTS)]
    for mode in ("passthrough", "terminate"):
        config = EdgeConfig(EdgeSettings(tls=mode, certificate=str(pem)))  # type: ignore[arg-type]
        renderings += [render(TLS_VIEW, config), render(EdgeView(()), config)]
    for i, rendering in enumerate(renderings):
        path = tmp_path / f"r{i}.cfg"
        path.write_text(rendering.text)
        check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)
        ok = check.returncode == 0 or (check.returncode == 2 and "has no error" in check.stdout)
        assert ok, f"rendering {i}:\n{rendering.text}\n{check.stdout}{check.stderr}"
