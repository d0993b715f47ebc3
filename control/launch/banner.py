"""What ``imctl up`` prints: where clients ask and how to operate, each command as it can
be pasted (``--output json`` gives the same as data)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from control.settings import Settings


def imctl_command(cwd: Path | None = None) -> str:
    """How to run this imctl, as the user can paste it: ``imctl`` when that is on PATH,
    else this installation's script (``.venv/bin/imctl`` from the checkout, as
    ``./scripts/up.sh`` leaves it, which puts nothing on PATH)."""
    mine = Path(sys.executable).parent / "imctl"  # not resolved: a venv's python is a link
    found = shutil.which("imctl")
    if not mine.exists() or (found is not None and Path(found).resolve() == mine.resolve()):
        return "imctl"
    try:
        return str(mine.relative_to(cwd or Path.cwd()))
    except ValueError:
        return str(mine)


def _loopback(host: str) -> str:
    """A wildcard listener is reached on loopback from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)


def banner_data(settings: Settings) -> dict[str, Any]:
    """What the banner says, for ``imctl up --output json``."""
    s, c = settings.scheduler, settings.controller
    grants = settings.admin.grants()
    tls = settings.access.tls.enabled
    return {
        "cluster": settings.cluster.name,
        "registry": settings.cluster.backend,
        "presence": settings.presence.backend,
        "scheduler": f"{s.tls.scheme}://{_loopback(s.host)}:{s.port}",
        "access": [
            {
                "id": n.id,
                "endpoint": n.public_endpoint(tls),
                "region": n.region,
                "zone": n.zone,
            }
            for n in settings.access.nodes
        ],
        "controller": f"http://{_loopback(c.host)}:{c.port}/metrics",
        "admin_open": grants.open,
    }


def banner(settings: Settings, imctl: str | None = None, config_path: str | None = None) -> str:
    """Where clients ask and how to operate, each command as it can be pasted."""
    imctl = imctl_command() if imctl is None else imctl
    data = banner_data(settings)
    url = data["scheduler"]
    lines = [
        f'imctl local cluster "{settings.cluster.name}" is up',
        f"  backends:   registry {settings.cluster.backend}, presence {settings.presence.backend}",
        f"  scheduler:  {url}",
    ]
    for n in settings.access.nodes:
        endpoint = n.public_endpoint(settings.access.tls.enabled)
        lines.append(f"  access:     {n.id:<12} {endpoint:<28} {n.region}/{n.zone}")
    for st in settings.registry.static_nodes:
        lines.append(f"  static:     {st.id:<12} {st.endpoint:<28} {st.region}/{st.zone}")
    lines += [
        f"  controller: {data['controller']}",
        "  ask for an endpoint:",
        *_ask_lines(settings, url, config_path, imctl),
        "  then open a WebSocket to the answer's endpoint with ?ticket=<ticket>&platform=ios",
        f"  or let the reference client do both: {imctl} connect --uid alice --server {url}",
        f"  or the demo web client: {url}/demo/ (paste a token from {imctl} token --uid alice)",
    ]
    if data["admin_open"]:
        lines.append(f"  operate:    {imctl} nodes --server {url}")
        lines.append("  admin API:  open, no token (loopback only)")
    else:
        names = ", ".join(f"{t.name} ({t.role})" for t in settings.admin.tokens)
        lines += [
            f"  admin API:  bearer token required: one of admin.tokens in the config ({names})",
            "  operate:    export IMCTL_TOKEN=<that token>   # or pass --token <that token>",
            f"              {imctl} nodes --server {url}",
        ]
    if imctl != "imctl":
        # PATH entries must be absolute; a relative command is relative to where it runs.
        parent = Path(imctl).parent
        on_path = parent if parent.is_absolute() else f"$PWD/{parent}"
        lines.append(f'  ({imctl} is not on PATH; for plain imctl: export PATH="{on_path}:$PATH")')
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


def _ask_lines(
    settings: Settings, url: str, config_path: str | None, imctl: str = "imctl"
) -> list[str]:
    ask = f"'{url}/v1/endpoint?uid=alice&device=phone-1&platform=ios&version=1.0.0'"
    auth = settings.client_auth
    if auth.mode == "trust":
        return [f"    curl {ask}", "  client auth: OFF, uid= taken as given (loopback only)"]
    if auth.mode == "callback":
        return [
            f'    curl -H "Authorization: Bearer <session token>" {ask}',
            f"  client auth: the app's auth service at {auth.callback.url}",
        ]
    config = f" --config {config_path}" if config_path else ""
    return [
        f'    curl -H "Authorization: Bearer $({imctl} token --uid alice{config})" \\',
        f"      {ask}",
        "  client auth: JWT (sub = uid); imctl token mints them from client_auth.keys",
    ]
