"""Nobody gets a ticket for a user they have not proved to be: GET /v1/endpoint through the
real scheduler app, with a JWKS endpoint and an app auth service served by the test on
127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from control.launch import scheduler_app as create_app
from control.scheduler.state import AUTH, CONFIG, METRICS
from control.settings import Settings, parse_settings
from control.testing import until
from tests.tokens import AUDIENCE, CLIENT_AUTH, KID, SECRET, as_user, token

OK = {"uid": "alice", "device": "phone-1", "platform": "ios", "version": "5.1.0"}


def settings(client_auth: dict[str, Any]) -> Settings:
    return parse_settings(
        {
            "regions": {"known": ["r1"]},
            "registry": {
                "static_nodes": [
                    {"id": "n1", "endpoint": "ws://127.0.0.1:1/ws", "region": "r1", "zone": "a"},
                    {"id": "n2", "endpoint": "ws://127.0.0.1:2/ws", "region": "r1", "zone": "b"},
                ]
            },
            "scheduler": {"rebuild_s": 0},
            "tickets": {"active_kid": "k1", "keys": {"k1": "0123456789abcdef-test"}},
            "client_auth": client_auth,
        },
        "test",
    )


async def ask(client: TestClient, headers: dict[str, str] | None, **params: str) -> Any:
    resp = await client.get("/v1/endpoint", params={**OK, **params}, headers=headers)
    return resp.status, await resp.json(), resp


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def signed(key: Any, alg: str, kid: str, uid: str = "alice", **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": uid, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(settings(CLIENT_AUTH)))


# -- impersonation -----------------------------------------------------------------------------


async def test_no_credential_is_401_naming_it(client: TestClient) -> None:
    status, body, resp = await ask(client, None)
    assert status == 401 and body["error"] == "unauthorized" and body["reason"] == "missing"
    assert "ticket" not in body
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="imctl"'


async def test_a_token_for_another_user_gets_403_and_no_ticket(client: TestClient) -> None:
    status, body, _ = await ask(client, as_user("mallory"))
    assert status == 403 and body["reason"] == "other_user", body
    assert "ticket" not in body and "fallbacks" not in body
    status, body, _ = await ask(client, as_user("mallory"), uid="mallory")
    assert status == 200


async def test_the_ticket_is_bound_to_the_authenticated_uid(client: TestClient) -> None:
    status, body, _ = await ask(client, {"Authorization": f"bEaReR {token('alice')}"})
    assert status == 200
    keys = client.app[CONFIG].tickets.ticket_keys()
    assert keys.verify(body["ticket"], body["node"], time.time()).uid == "alice"
    for fb in body["fallbacks"]:
        assert keys.verify(fb["ticket"], fb["node"], time.time()).uid == "alice"


@pytest.mark.parametrize(
    "credential,reason",
    [
        (lambda: signed(SECRET, "HS256", KID, exp=int(time.time()) - 60), "expired"),
        (lambda: signed(SECRET, "HS256", KID, aud="another-app"), "wrong_audience"),
        (lambda: signed("a-different-secret-of-32-characters", "HS256", KID), "bad_signature"),
        (lambda: signed(SECRET, "HS256", KID, nbf=int(time.time()) + 600), "not_yet_valid"),
        (lambda: signed(SECRET, "HS256", "rotated-out"), "unknown_key"),
        (lambda: token("alice")[:-4] + "AAAA", "bad_signature"),
        (lambda: "opaque-session-id", "malformed"),
    ],
)
async def test_bad_credentials_are_401_naming_what_is_wrong(
    client: TestClient, credential: Callable[[], str], reason: str
) -> None:
    status, body, resp = await ask(client, bearer(credential()))
    assert status == 401 and body["reason"] == reason, body
    assert "ticket" not in body
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert SECRET not in json.dumps(body)


async def test_device_and_platform_claims_limit_the_credential(client: TestClient) -> None:
    limited = as_user("alice", devices=["phone-1"], platforms=["ios"])
    assert (await ask(client, limited))[0] == 200
    status, body, _ = await ask(client, limited, device="tablet-9")
    assert status == 403 and body["reason"] == "device_not_allowed"
    status, body, _ = await ask(client, limited, platform="android")
    assert status == 403 and body["reason"] == "platform_not_allowed"


async def test_a_reconnect_storm_costs_lookups_not_signature_checks(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = as_user("alice")
    assert (await ask(client, headers))[0] == 200
    auth = client.app[AUTH]
    assert auth.jwt is not None
    checks = 0
    real = auth.jwt.verify

    def counted(credential: str) -> Any:
        nonlocal checks
        checks += 1
        return real(credential)

    monkeypatch.setattr(auth.jwt, "verify", counted)  # counts; the real check still runs
    for _ in range(20):
        assert (await ask(client, headers))[0] == 200
    assert checks == 0
    assert (await ask(client, as_user("alice", jti="new")))[0] == 200
    assert checks == 1
    metrics = client.app[METRICS].auth
    assert metrics.value("cached") == 20 and metrics.value("verified") == 2


async def test_a_cached_credential_is_not_served_past_its_expiry(client: TestClient) -> None:
    headers = bearer(token("alice", ttl=30))
    assert (await ask(client, headers))[0] == 200
    assert (await ask(client, headers))[0] == 200
    metrics = client.app[METRICS].auth
    assert (metrics.value("verified"), metrics.value("cached")) == (1, 1)
    client.app[AUTH].cache.clock = lambda: time.time() + 31  # the clock moves past its exp
    await ask(client, headers)
    # Not from the cache: checked again (PyJWT then judges it on its own clock).
    assert (metrics.value("verified"), metrics.value("cached")) == (2, 1)
    assert len(client.app[AUTH].cache) == 0


async def test_trust_mode_takes_uid_as_given_and_says_so(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        client = await aiohttp_client(create_app(settings({"mode": "trust"})))
    assert "client_auth.mode is trust" in caplog.text
    status, _, _ = await ask(client, None, uid="anyone")
    assert status == 200


# -- JWKS --------------------------------------------------------------------------------------


class Jwks:
    """A JWK set endpoint on 127.0.0.1 whose keys the test changes."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.app = web.Application()
        self.app.router.add_get("/jwks.json", self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        docs = []
        for kid, key in self.keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                jwk["alg"] = "RS256"
            else:
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
                jwk["alg"] = "ES256"
            docs.append({**jwk, "kid": kid, "use": "sig"})
        return web.json_response({"keys": docs})


async def test_jwks_keys_rotate_mid_test(aiohttp_client: Any, aiohttp_server: Any) -> None:
    jwks = Jwks()
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = ec.generate_private_key(ec.SECP256R1())
    jwks.keys = {"old": old}
    server: TestServer = await aiohttp_server(jwks.app)
    url = str(server.make_url("/jwks.json"))
    cfg = {"mode": "jwt", "keys": {}, "jwks_url": url, "jwks_refresh_s": 30}
    client = await aiohttp_client(create_app(settings(cfg)))
    auth = client.app[AUTH]
    assert auth.jwks is not None

    async def loaded() -> bool:
        return auth.jwks is not None and auth.jwks.kids == ("old",)

    await until(loaded, 5, "first JWKS fetch")  # the supervised jwks-refresh task did it
    with_old = bearer(signed(old, "RS256", "old"))
    assert (await ask(client, with_old))[0] == 200

    # The app starts signing with a new key before our next scheduled refresh: the unknown
    # kid is refused, and asks for an early fetch.
    jwks.keys = {"old": old, "new": new}
    with_new = bearer(signed(new, "ES256", "new"))
    status, body, _ = await ask(client, with_new)
    assert status == 401 and body["reason"] == "unknown_key"

    async def new_accepted() -> bool:
        return (await ask(client, with_new))[0] == 200

    await until(new_accepted, 5, "new key fetched early")

    # The old key is rotated out: even a credential it signed that is cached is refused.
    jwks.keys = {"new": new}
    async with __import__("aiohttp").ClientSession() as http:
        await auth.jwks.run_once(http)  # the refresh loop's one step
    status, body, _ = await ask(client, with_old)
    assert status == 401 and body["reason"] == "unknown_key", body
    assert (await ask(client, bearer(signed(old, "RS256", "old", jti="2"))))[0] == 401
    assert (await ask(client, with_new))[0] == 200


async def test_jwks_not_reachable_yet_is_503(aiohttp_client: Any) -> None:
    from control.testing import free_port

    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    cfg = {"mode": "jwt", "keys": {}, "jwks_url": url}
    client = await aiohttp_client(create_app(settings(cfg)))
    key = ec.generate_private_key(ec.SECP256R1())
    status, body, resp = await ask(client, bearer(signed(key, "ES256", "k")))
    assert status == 503 and body["reason"] == "keys_unavailable", body
    assert resp.headers["Retry-After"] == "1"


# -- the app's auth service --------------------------------------------------------------------


class AuthService:
    """An app auth service on 127.0.0.1: session "s-<uid>" is that user; "slow" sleeps;
    ``down`` answers 500."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.delay = 0.0
        self.app = web.Application()
        self.app.router.add_post("/auth", self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.json()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            return web.json_response({"error": "db down"}, status=500)
        session = body.get("token", "")
        if session.startswith("s-"):
            return web.json_response({"uid": session[2:], "expires_in": 600})
        return web.json_response({"error": "no such session"}, status=401)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def callback_app(
    aiohttp_client: Any, aiohttp_server: Any, service: AuthService, **cb: Any
) -> TestClient:
    server: TestServer = await aiohttp_server(service.app)
    callback = {"url": str(server.make_url("/auth")), "timeout_s": 0.5, **cb}
    return await aiohttp_client(create_app(settings({"mode": "callback", "callback": callback})))


async def test_callback_accepts_rejects_and_caches(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    service = AuthService()
    client = await callback_app(aiohttp_client, aiohttp_server, service)
    status, body, _ = await ask(client, bearer("s-alice"))
    assert status == 200, body
    status, body, _ = await ask(client, bearer("s-bob"))
    assert status == 403 and body["reason"] == "other_user"
    status, body, _ = await ask(client, bearer("forged"))
    assert status == 401 and body["reason"] == "rejected"
    calls = service.calls
    for _ in range(5):
        assert (await ask(client, bearer("s-alice")))[0] == 200
    assert service.calls == calls  # cached
    # A storm of one new session: one question to the service, not one per client.
    results = await asyncio.gather(
        *(ask(client, bearer("s-carol"), uid="carol") for _ in range(20))
    )
    assert [r[0] for r in results] == [200] * 20
    assert service.calls == calls + 1


async def test_callback_down_fails_closed_with_a_clear_503(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    service = AuthService()
    service.down = True
    client = await callback_app(aiohttp_client, aiohttp_server, service)
    status, body, resp = await ask(client, bearer("s-alice"))
    assert status == 503 and body["error"] == "auth_unavailable", body
    assert body["message"] == "the auth service answered HTTP 500; try again"
    assert "ticket" not in body and int(resp.headers["Retry-After"]) >= 1


async def test_callback_not_listening_is_a_503(aiohttp_client: Any) -> None:
    from control.testing import free_port

    url = f"http://127.0.0.1:{free_port()}/auth"
    client = await aiohttp_client(
        create_app(settings({"mode": "callback", "callback": {"url": url}}))
    )
    status, body, _ = await ask(client, bearer("s-alice"))
    assert status == 503 and body["message"].startswith("the auth service cannot be reached")


async def test_callback_slow_times_out(aiohttp_client: Any, aiohttp_server: Any) -> None:
    service = AuthService()
    service.delay = 5
    client = await callback_app(aiohttp_client, aiohttp_server, service, timeout_s=0.3)
    started = time.monotonic()
    status, body, _ = await ask(client, bearer("s-alice"))
    assert time.monotonic() - started < 2
    assert (
        status == 503
        and body["message"] == "the auth service did not answer within 0.3s; try again"
    )


async def test_breaker_opens_after_failures_and_closes_after_cool_down(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    service = AuthService()
    service.down = True
    client = await callback_app(aiohttp_client, aiohttp_server, service, failures=3, open_s=30)
    callback = client.app[AUTH].callback
    assert callback is not None
    clock = Clock()
    callback.breaker.clock = clock  # injected: the cool-down passes without waiting
    for i in range(3):
        assert (await ask(client, bearer(f"s-alice{i}"), uid=f"alice{i}"))[0] == 503
    assert service.calls == 3 and callback.breaker.state == "open"
    status, body, resp = await ask(client, bearer("s-alice"))
    assert status == 503 and "not asked again for 30s" in body["message"], body
    assert resp.headers["Retry-After"] == "30"
    assert service.calls == 3  # open: the failing service is left alone
    service.down = False
    clock.now += 29
    assert (await ask(client, bearer("s-alice")))[0] == 503 and service.calls == 3
    clock.now += 1  # cool-down over: one trial call, which succeeds and closes it
    assert (await ask(client, bearer("s-alice")))[0] == 200
    assert service.calls == 4 and callback.breaker.state == "closed"
