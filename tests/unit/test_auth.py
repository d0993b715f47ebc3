"""Client authentication, pure parts: the bearer header, the JWT verifier, the identity
cache, the circuit breaker, the settings checks and ``imctl token``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from control.cli import main
from control.common.client_auth import (
    AuthFailure,
    CircuitBreaker,
    Identity,
    IdentityCache,
    JwtVerifier,
    bearer,
    mint,
    parse_jwks,
    parse_key,
)
from control.common.config import BUILT_IN_CLIENT_KEY
from control.common.errors import ConfigError
from control.common.wire import UID_RE
from control.settings import load_settings, parse_settings
from tests.tokens import AUDIENCE, KID, SECRET, token

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pem(public: Any) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def verifier(**kw: Any) -> JwtVerifier:
    keys = {
        KID: parse_key(KID, SECRET),
        "rsa": parse_key("rsa", pem(RSA.public_key())),
        "ec": parse_key("ec", pem(EC.public_key())),
    }
    return JwtVerifier(keys, audience=AUDIENCE, uid_pattern=UID_RE, **kw)


def signed(key: Any, alg: str, kid: str | None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 60, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def reason(credential: str, v: JwtVerifier | None = None) -> str:
    with pytest.raises(AuthFailure) as caught:
        (v or verifier()).verify(credential)
    assert caught.value.status == 401
    return caught.value.reason


# -- the header --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_in_any_case(scheme: str) -> None:
    assert bearer(f"{scheme} abc.def") == "abc.def"


@pytest.mark.parametrize(
    "header,why",
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer ", "missing"),
        ("Bearer    ", "missing"),
        ("Basic YWxpY2U6cHc=", "malformed"),
        ("Bearer " + "a" * 5000, "malformed"),
        ("Bearer \udcff\udcfe", "malformed"),  # header bytes that are not UTF-8
    ],
)
def test_bearer_refusals_say_why(header: str | None, why: str) -> None:
    with pytest.raises(AuthFailure) as caught:
        bearer(header)
    assert (caught.value.status, caught.value.reason) == (401, why)


# -- the verifier ------------------------------------------------------------------------------


def test_hs256_rs256_es256_verify_and_sub_is_the_uid() -> None:
    v = verifier()
    assert v.verify(token("alice")).uid == "alice"
    assert v.verify(signed(RSA, "RS256", "rsa")).uid == "alice"
    got = v.verify(signed(EC, "ES256", "ec", devices=["phone-1"], platforms=["ios"]))
    assert got.kid == "ec" and got.devices == {"phone-1"} and got.platforms == {"ios"}


@pytest.mark.parametrize(
    "claims,why",
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 86_400}, "not_yet_valid"),
        ({"aud": "another-app"}, "wrong_audience"),
        ({"aud": None}, "malformed"),  # an audience is required
        ({"exp": None}, "malformed"),  # so is an expiry: nothing is cached forever
        ({"sub": None}, "malformed"),
        ({"sub": "bad uid"}, "malformed"),
        ({"devices": "phone-1"}, "malformed"),
    ],
)
def test_claims_are_checked(claims: dict[str, Any], why: str) -> None:
    assert reason(signed(SECRET, "HS256", KID, **claims)) == why


def test_issuer_when_configured() -> None:
    v = verifier(issuer="https://auth.example")
    assert reason(signed(SECRET, "HS256", KID), v) == "malformed"  # none given
    assert reason(signed(SECRET, "HS256", KID, iss="https://evil.example"), v) == "wrong_issuer"
    assert v.verify(signed(SECRET, "HS256", KID, iss="https://auth.example")).uid == "alice"


def test_bad_signature_unknown_key_and_algorithm_confusion() -> None:
    assert reason(signed("another-secret-of-32-characters-xx", "HS256", KID)) == "bad_signature"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason(signed(other, "RS256", "rsa")) == "bad_signature"
    assert reason(signed(SECRET, "HS256", "gone")) == "unknown_key"
    # An HS256 token naming the RSA key: refused before any MAC is computed with it.
    assert reason(signed(SECRET, "HS256", "rsa")) == "bad_signature"
    assert reason("not.a.jwt") == "malformed"
    assert reason(signed(SECRET, "HS256", None)) == "unknown_key"  # several keys: kid needed


def test_a_single_key_needs_no_kid() -> None:
    v = JwtVerifier({KID: parse_key(KID, SECRET)}, audience=AUDIENCE)
    assert v.verify(signed(SECRET, "HS256", None)).uid == "alice"


def test_leeway_takes_clock_skew() -> None:
    late = signed(SECRET, "HS256", KID, exp=int(time.time()) - 3)
    assert reason(late) == "expired"
    assert verifier(leeway_s=10).verify(late).uid == "alice"


def test_jwks_rotation_reports_the_keys_that_left() -> None:
    v = JwtVerifier({KID: parse_key(KID, SECRET)}, audience=AUDIENCE)
    v.remote_loaded = False
    with pytest.raises(AuthFailure) as caught:
        v.verify(signed(RSA, "RS256", "rsa"))
    assert (caught.value.status, caught.value.reason) == (503, "keys_unavailable")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA.public_key()))
    assert v.set_remote(parse_jwks({"keys": [{**jwk, "kid": "rsa", "alg": "RS256"}]})) == set()
    assert v.verify(signed(RSA, "RS256", "rsa")).kid == "rsa"
    # A JWKS can never take the place of a configured key of the same kid.
    assert v.set_remote(parse_jwks({"keys": [{**jwk, "kid": KID, "alg": "RS256"}]})) == {"rsa"}
    assert v.keys[KID].alg == "HS256"


def test_parse_jwks_skips_what_it_cannot_use() -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA.public_key()))
    keys = parse_jwks(
        {"keys": [{**jwk, "kid": "a"}, jwk, {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, 7]}
    )
    assert list(keys) == ["a"] and keys["a"].alg == "RS256"
    with pytest.raises(ValueError, match="not a JWK set"):
        parse_jwks({"nope": 1})


@pytest.mark.parametrize(
    "text,message",
    [
        ("short", "at least 32 characters"),
        ("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", "not a PEM public key"),
        (pem(ec.generate_private_key(ec.SECP384R1()).public_key()), "P-256"),
    ],
)
def test_bad_configured_keys(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_key("k", text)


# -- the cache ---------------------------------------------------------------------------------


def test_cache_until_expiry_on_the_injected_clock() -> None:
    clock = Clock()
    cache = IdentityCache(10, clock)
    cache.put("t1", Identity("alice", clock.now + 30, "k"))
    assert cache.get("t1") == Identity("alice", clock.now + 30, "k")
    clock.now += 29.9
    assert cache.get("t1") is not None
    clock.now += 0.1
    assert cache.get("t1") is None and len(cache) == 0  # expired: gone, not served
    cache.put("t2", Identity("bob", clock.now - 1))  # already expired: never stored
    assert len(cache) == 0


def test_cache_is_a_bounded_lru() -> None:
    clock = Clock()
    cache = IdentityCache(3, clock)
    for i in range(3):
        cache.put(f"t{i}", Identity(f"u{i}", clock.now + 60))
    assert cache.get("t0") is not None  # t0 used: t1 is now the least recent
    cache.put("t3", Identity("u3", clock.now + 60))
    assert len(cache) == 3
    assert cache.get("t1") is None
    assert all(cache.get(t) is not None for t in ("t0", "t2", "t3"))
    assert len(IdentityCache(0, clock)) == 0


def test_cache_drops_what_a_rotated_key_signed() -> None:
    clock = Clock()
    cache = IdentityCache(10, clock)
    cache.put("a", Identity("alice", clock.now + 60, "old"))
    cache.put("b", Identity("bob", clock.now + 60, "new"))
    assert cache.drop_kids({"old"}) == 1
    assert cache.get("a") is None and cache.get("b") is not None


# -- the breaker -------------------------------------------------------------------------------


def test_breaker_opens_after_failures_and_closes_after_a_cool_down() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, open_s=30, clock=clock)
    for _ in range(2):
        assert b.wait() == 0
        b.failure()
    assert b.state == "closed" and b.wait() == 0
    b.failure()
    assert b.state == "open" and b.wait() == pytest.approx(30)
    clock.now += 29
    assert b.wait() == pytest.approx(1)
    clock.now += 1
    assert b.state == "half_open"
    assert b.wait() == 0  # the one trial call
    assert b.wait() > 0  # nobody else while it is out
    b.failure()  # the trial failed: open again, for a whole open_s
    assert b.state == "open" and b.wait() == pytest.approx(30)
    clock.now += 30
    assert b.wait() == 0
    b.success()
    assert b.state == "closed" and b.failures == 0 and b.wait() == 0


def test_breaker_counts_failures_in_a_row_only() -> None:
    b = CircuitBreaker(failures=2, open_s=5, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"


# -- settings ----------------------------------------------------------------------------------


def test_trust_mode_only_on_loopback() -> None:
    assert parse_settings({"client_auth": {"mode": "trust"}}).client_auth.mode == "trust"
    with pytest.raises(ConfigError, match=r"client_auth\.mode: trust .* not 0\.0\.0\.0"):
        parse_settings(
            {
                "scheduler": {"host": "0.0.0.0"},
                "admin": {"tokens": [{"name": "s", "token": "x" * 20, "role": "operator"}]},
                "client_auth": {"mode": "trust"},
            }
        )


def test_config_check_refuses_trust_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "scheduler: {host: 10.0.0.5}\n"
        "admin: {tokens: [{name: s, token: xxxxxxxxxxxxxxxxxxxx, role: operator}]}\n"
        "client_auth: {mode: trust}\n"
    )
    assert main(["config", "check", str(path)]) == 2
    assert "client_auth.mode: trust (uid= taken as given) only when" in capsys.readouterr().err


def test_the_built_in_key_only_on_loopback() -> None:
    assert parse_settings({}).client_auth.keys["dev"] == BUILT_IN_CLIENT_KEY
    with pytest.raises(ConfigError, match="built-in development key is public"):
        parse_settings(
            {
                "scheduler": {"host": "0.0.0.0"},
                "admin": {"tokens": [{"name": "s", "token": "x" * 20, "role": "operator"}]},
            }
        )


def test_client_auth_problems_are_listed_together() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {
                "client_auth": {
                    "mode": "callback",
                    "keys": {"a": "short", "b": pem(RSA.public_key())},
                    "token_kid": "b",
                }
            }
        )
    text = "\n".join(caught.value.problems)
    assert "client_auth.keys.a: an HS256 secret must be at least 32" in text
    assert "client_auth.token_kid: 'b' is not an HS256 key" in text
    assert "client_auth.callback.url: required with mode callback" in text
    with pytest.raises(ConfigError, match="mode jwt needs keys or a jwks_url"):
        parse_settings({"client_auth": {"keys": {}}})


# -- imctl token -------------------------------------------------------------------------------


def imctl(argv: list[str]) -> int:
    """``imctl``'s exit code, whether it returns it or exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def decode(text: str, secret: str, audience: str = AUDIENCE) -> dict[str, Any]:
    return dict(jwt.decode(text, secret, algorithms=["HS256"], audience=audience))


def test_token_prints_one_a_line_in_the_order_given(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--uid", "carol", "--uid", "alice", "--uid", "bob"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # No --config: the config imctl up runs, so its scheduler accepts these.
    auth = load_settings(ROOT / "configs" / "local.yaml").client_auth
    kid, secret = auth.minting_key() or ("", "")
    assert [decode(line, secret)["sub"] for line in lines] == ["carol", "alice", "bob"]
    assert all(jwt.get_unverified_header(line)["kid"] == kid for line in lines)
    claims = decode(lines[0], secret)
    assert claims["exp"] - claims["iat"] == 3600


def test_token_ttl_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"client_auth: {{keys: {{mine: {SECRET}}}, audience: chat}}\n")
    assert main(["token", "--uid", "dave", "--ttl", "90s", "--config", str(path)]) == 0
    claims = decode(capsys.readouterr().out.strip(), SECRET, "chat")
    assert claims["sub"] == "dave" and claims["exp"] - claims["iat"] == 90
    assert abs(claims["iat"] - time.time()) < 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["token"], "--uid"),
        (["token", "--uid", "bad uid"], "is not a uid"),
        (["token", "--uid", "a", "--ttl", "0"], "a lifetime from 1s"),
        (["token", "--uid", "a", "--ttl", "soon"], "not a duration"),
    ],
)
def test_token_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert imctl(argv) == 2
    assert message in capsys.readouterr().err


def test_token_without_a_secret_to_sign_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("client_auth: {mode: callback, callback: {url: 'http://127.0.0.1:1/a'}}\n")
    assert imctl(["token", "--uid", "a", "--config", str(path)]) == 2
    assert "tokens come from the app's auth service" in capsys.readouterr().err
    path.write_text("client_auth: {keys: {}, jwks_url: 'http://127.0.0.1:1/jwks'}\n")
    assert imctl(["token", "--uid", "a", "--config", str(path)]) == 2
    assert "no HS256 secret" in capsys.readouterr().err


def test_mint_is_what_the_verifier_takes() -> None:
    minted = mint("erin", SECRET, KID, 60, audience=AUDIENCE, devices=["d1"])
    assert verifier().verify(minted).devices == {"d1"}
