"""/metrics behind the viewer role (admin.metrics: viewer) on every process: scheduler,
access node and controller answer 401 without a token, 401 for a wrong one, and the
metrics text to a viewer or an operator."""

from __future__ import annotations

import aiohttp

from tests.cluster import LocalCluster, cluster_settings

VIEWER = "viewer-token-for-the-metrics-test-0123456789"
OPERATOR = "operator-token-for-the-metrics-test-0123456789"
TOKENS = [
    {"name": "prometheus", "token": VIEWER, "role": "viewer"},
    {"name": "sre", "token": OPERATOR, "role": "operator"},
]


def urls(c: LocalCluster) -> dict[str, str]:
    s = c.settings
    return {
        "scheduler": f"http://127.0.0.1:{s.scheduler.port}/metrics",
        "access": c.base("n0") + "/metrics",
        "controller": f"http://127.0.0.1:{s.controller.port}/metrics",
    }


async def get(
    http: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_metrics_need_a_viewer_token_everywhere(http: aiohttp.ClientSession) -> None:
    settings = cluster_settings(1, admin={"tokens": TOKENS, "metrics": "viewer"})
    async with LocalCluster(settings, scheduler=True, controller=True) as c:
        for name, url in urls(c).items():
            status, body, headers = await get(http, url, None)
            assert status == 401, name
            assert '"a bearer token is required"' in body and "imctl_" not in body, name
            assert headers["WWW-Authenticate"].startswith("Bearer"), name
            status, body, _ = await get(http, url, VIEWER[:-1] + "x")
            assert (status, "invalid token" in body, "imctl_" in body) == (401, True, False)
            for token in (VIEWER, OPERATOR):
                status, body, _ = await get(http, url, token)
                assert status == 200 and "# TYPE imctl_" in body, name
            # /healthz stays open: probes carry no token.
            status, _, _ = await get(http, url.replace("/metrics", "/healthz"), None)
            assert status == 200, name


async def test_metrics_open_by_default(http: aiohttp.ClientSession) -> None:
    async with LocalCluster(cluster_settings(1), scheduler=True, controller=True) as c:
        for name, url in urls(c).items():
            status, body, _ = await get(http, url, None)
            assert status == 200 and "# TYPE imctl_" in body, name
