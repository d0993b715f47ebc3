"""Client authentication: who is asking ``GET /v1/endpoint``.

A client proves its uid with ``Authorization: Bearer <credential>``, as Centrifugo asks a
connection JWT signed by the app's backend. Two ways to check it:

- ``JwtVerifier``: a JWT whose ``sub`` is the uid, signed with a configured HS256 secret or
  RS256/ES256 public key, or a key from a JWKS URL (``JwksSource`` refreshes it in the
  background); ``exp``, ``nbf``, ``aud`` and ``iss`` are checked (PyJWT does the crypto).
- ``CallbackVerifier``: the app's own auth service is asked (opaque session tokens), with a
  timeout, a ``CircuitBreaker`` and single-flight per credential.

``ClientAuth`` puts an ``IdentityCache`` in front of either: a verified credential is kept
until its expiry (a bounded LRU keyed by the raw credential), so a reconnect storm of
clients re-presenting their tokens costs a dict lookup each, not a signature check.

Failures are ``AuthFailure``: 401 naming what is wrong with the credential (never which
part of a secret matched), 503 when the keys or the auth service are not available.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from control.common.tasks import pause

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_CREDENTIAL_LEN = 4096  # longer is refused before any parsing (and never cached)
MIN_SECRET_LEN = 32  # HS256 secrets: RFC 7518 asks for at least the hash's 256 bits
ALGORITHMS = ("HS256", "RS256", "ES256")


class Identity(NamedTuple):
    """Who a verified credential says the client is, and until when."""

    uid: str
    exp: float
    kid: str = ""  # the key that signed it ("" for the callback): rotation drops its entries
    devices: frozenset[str] | None = None  # only these devices, when the credential says so
    platforms: frozenset[str] | None = None


class AuthFailure(Exception):
    """Why a client is refused: HTTP status, a stable reason code and a sentence."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def _unauthorized(reason: str, message: str) -> AuthFailure:
    return AuthFailure(401, reason, message)


MISSING = _unauthorized("missing", "an Authorization: Bearer <token> header is required")


def bearer(header: str | None) -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header (the scheme in
    any case, RFC 7235)."""
    if not header:
        raise MISSING
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized("malformed", "the Authorization header must use the Bearer scheme")
    credential = credential.strip()
    if not credential:
        raise MISSING
    if len(credential) > MAX_CREDENTIAL_LEN:
        raise _unauthorized("malformed", f"credential longer than {MAX_CREDENTIAL_LEN} characters")
    if not credential.isascii():  # RFC 6750 token68: header bytes that are not even UTF-8
        raise _unauthorized("malformed", "credential holds characters a bearer token cannot")
    return credential


class IdentityCache:
    """Verified credentials until their expiry: a bounded LRU keyed by the raw credential.

    ``get`` checks the expiry against the clock on every hit, so an entry never outlives
    its credential; the least recently used entry goes when ``size`` is reached."""

    def __init__(self, size: int, clock: Clock = time.time) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, Identity] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, credential: str) -> Identity | None:
        entries = self._entries
        found = entries.get(credential)
        if found is None:
            return None
        if found.exp <= self.clock():
            del entries[credential]
            return None
        entries.move_to_end(credential)
        return found

    def put(self, credential: str, identity: Identity) -> None:
        if self.size <= 0 or identity.exp <= self.clock():
            return
        entries = self._entries
        entries[credential] = identity
        entries.move_to_end(credential)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def drop_kids(self, kids: Collection[str]) -> int:
        """Forget credentials signed by ``kids`` (keys rotated out); how many went."""
        gone = [c for c, ident in self._entries.items() if ident.kid in kids]
        for credential in gone:
            del self._entries[credential]
        return len(gone)


# -- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyKey:
    """One key a JWT may be signed with: its algorithm and the key PyJWT verifies with,
    prepared once (a PyJWK: PyJWT would otherwise prepare a raw key on every check)."""

    kid: str
    alg: str
    key: jwt.PyJWK

    @classmethod
    def of(cls, kid: str, alg: str, raw: Any) -> VerifyKey:
        if alg == "HS256":
            jwk: dict[str, Any] = {"kty": "oct", "k": _b64url(raw)}
        elif alg == "RS256":
            jwk = dict(jwt.algorithms.RSAAlgorithm.to_jwk(raw, as_dict=True))
        else:
            jwk = dict(jwt.algorithms.ECAlgorithm.to_jwk(raw, as_dict=True))
        return cls(kid, alg, jwt.PyJWK(jwk, algorithm=alg))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_key(kid: str, text: str) -> VerifyKey:
    """A configured key: a PEM public key (RSA: RS256, EC P-256: ES256) or an HS256
    secret of at least MIN_SECRET_LEN characters. ValueError says what is wrong."""
    if text.lstrip().startswith("-----BEGIN"):
        try:
            public = load_pem_public_key(text.strip().encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM public key ({str(exc)[:80]})") from None
        if isinstance(public, rsa.RSAPublicKey):
            if public.key_size < 2048:
                raise ValueError(f"RSA key of {public.key_size} bits; at least 2048 needed")
            return VerifyKey.of(kid, "RS256", public)
        if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
            return VerifyKey.of(kid, "ES256", public)
        raise ValueError("only RSA (RS256) and EC P-256 (ES256) public keys are supported")
    if len(text) < MIN_SECRET_LEN:
        raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_LEN} characters")
    return VerifyKey.of(kid, "HS256", text.encode())


def parse_jwks(data: Any) -> dict[str, VerifyKey]:
    """The usable keys of a JWK set (RS256 and ES256 public keys with a ``kid``); others
    are skipped with a log line. ValueError when the document is not a JWK set."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JWK set (expected {"keys": [...]})')
    keys: dict[str, VerifyKey] = {}
    for i, jwk in enumerate(data["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if not isinstance(kid, str) or not kid:
            log.warning("JWKS key %d skipped: no kid", i)
            continue
        try:
            parsed = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        if parsed.algorithm_name not in ("RS256", "ES256"):
            log.warning("JWKS key %r skipped: algorithm %s", kid, parsed.algorithm_name)
            continue
        keys[kid] = VerifyKey(kid, parsed.algorithm_name, parsed)
    return keys


def mint(
    uid: str,
    secret: str,
    kid: str,
    ttl_s: float,
    *,
    audience: str = "",
    issuer: str = "",
    now: float | None = None,
    **claims: Any,
) -> str:
    """An HS256 client token for ``uid`` (what ``imctl token`` prints; what an app's
    backend does with its own key)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": uid, "iat": issued, "exp": issued + int(ttl_s), **claims}
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": kid})


# -- JWT ---------------------------------------------------------------------------------------

# PyJWT's exceptions as the reason a client is told; the order matters (subclasses first).
_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "credential expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "credential not yet valid (nbf or iat)"),
    (jwt.InvalidAudienceError, "wrong_audience", "credential is for another audience"),
    (jwt.InvalidIssuerError, "wrong_issuer", "credential is from another issuer"),
    (jwt.InvalidSignatureError, "bad_signature", "credential signature does not verify"),
    (jwt.MissingRequiredClaimError, "malformed", "credential lacks a required claim"),
    (jwt.InvalidAlgorithmError, "bad_signature", "credential algorithm not allowed"),
    (jwt.InvalidTokenError, "malformed", "credential is not a valid JWT"),
)


def _names(value: Any, claim: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _unauthorized("malformed", f"claim {claim!r} must be a list of strings")
    return frozenset(value)


class JwtVerifier:
    """Checks a JWT against the keys it knows (configured ones, then a JWKS's)."""

    def __init__(
        self,
        keys: Mapping[str, VerifyKey],
        *,
        audience: str = "",
        issuer: str = "",
        leeway_s: float = 0.0,
        uid_pattern: re.Pattern[str] | None = None,
    ) -> None:
        self.static = dict(keys)
        self.keys: dict[str, VerifyKey] = dict(keys)
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s
        self.uid_pattern = uid_pattern
        self.remote_loaded = True  # False while a JWKS is configured but never fetched
        self.on_unknown_kid: Callable[[], None] | None = None

    def set_remote(self, remote: Mapping[str, VerifyKey]) -> set[str]:
        """Take a JWKS's keys (configured keys win a kid clash); the kids that went."""
        merged = {**remote, **self.static}
        gone = set(self.keys) - set(merged)
        self.keys = merged
        self.remote_loaded = True
        return gone

    def _key(self, credential: str) -> VerifyKey:
        # The header read by hand (PyJWT's get_unverified_header costs ~30 us, a fifth of
        # the whole check); PyJWT reads it again, strictly, when it verifies.
        try:
            header = json.loads(_unb64url(credential.partition(".")[0]))
        except (ValueError, RecursionError, binascii.Error):
            header = None
        if not isinstance(header, dict) or credential.count(".") != 2:
            raise _unauthorized("malformed", "credential is not a valid JWT")
        kid = header.get("kid")
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            if not self.remote_loaded:
                raise AuthFailure(503, "keys_unavailable", "signing keys not loaded yet", 1)
            if self.on_unknown_kid is not None:
                self.on_unknown_kid()  # a key newer than our copy: fetch the set early
            raise _unauthorized("unknown_key", "credential signed with an unknown key id")
        if header.get("alg") != key.alg:
            # One algorithm per key: an HS256 token "signed" with an RSA public key as its
            # secret (the classic confusion) never reaches a MAC check.
            raise _unauthorized("bad_signature", "credential algorithm does not match its key")
        return key

    def verify(self, credential: str) -> Identity:
        key = self._key(credential)
        try:
            claims = jwt.decode(
                credential,
                key.key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            for kind, reason, message in _REASONS:
                if isinstance(exc, kind):
                    raise _unauthorized(reason, message) from None
            raise  # pragma: no cover - InvalidTokenError is the last entry
        sub = claims.get("sub")
        if not isinstance(sub, str) or (
            self.uid_pattern is not None and not self.uid_pattern.fullmatch(sub)
        ):
            raise _unauthorized("malformed", "credential subject (sub) is not a valid uid")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            raise _unauthorized("malformed", "credential expiry (exp) is not a number")
        return Identity(
            sub,
            float(exp),
            key.kid,
            _names(claims.get("devices"), "devices"),
            _names(claims.get("platforms"), "platforms"),
        )


class JwksSource:
    """A JWK set fetched from ``url`` every ``refresh_s`` (sooner after a failure, or when
    a credential names a key id we do not have), handed to ``on_keys``.

    Timings derive from ``refresh_s``: a failed fetch is retried after a tenth of it, and
    an unknown key id asks for a fetch at most every thirtieth of it (at least 1 s)."""

    def __init__(
        self,
        url: str,
        refresh_s: float,
        on_keys: Callable[[dict[str, VerifyKey]], None],
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.retry_s = refresh_s / 10
        self.min_gap_s = max(1.0, refresh_s / 30)
        self.timeout_s = min(10.0, self.retry_s)
        self.on_keys = on_keys
        self.clock = clock
        self.wanted = asyncio.Event()
        self.last_fetch = float("-inf")
        self.last_ok = False
        self.kids: tuple[str, ...] = ()

    def want(self) -> None:
        self.wanted.set()

    async def run_once(self, http: aiohttp.ClientSession) -> str:
        """Fetch and apply the set once; a sentence of what happened."""
        self.last_fetch = self.clock()
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with http.get(self.url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                keys = parse_jwks(await resp.json(content_type=None))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RecursionError) as exc:
            self.last_ok = False
            return f"JWKS {self.url}: fetch failed ({exc or type(exc).__name__}); keeping keys"
        self.last_ok = True
        self.kids = tuple(sorted(keys))
        self.on_keys(keys)
        return f"JWKS {self.url}: {len(keys)} key(s): {', '.join(self.kids) or 'none'}"

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                message = await self.run_once(http)
                (log.info if self.last_ok else log.warning)("%s", message)
                self.wanted.clear()
                await self._wait(stop, self.refresh_s if self.last_ok else self.retry_s)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until ``seconds`` pass or a fetch is wanted (and the last was min_gap_s ago)."""
        deadline = self.clock() + seconds
        while not stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wanted.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self.wanted.is_set() and not stop.is_set():
                gap = self.last_fetch + self.min_gap_s - self.clock()
                if gap > 0:
                    await pause(stop, min(gap, max(0.0, deadline - self.clock())))
                return


# -- callback ----------------------------------------------------------------------------------


class CircuitBreaker:
    """Stops asking a failing service: ``failures`` in a row open it for ``open_s``; then
    one trial call is let through (half-open), whose outcome closes or re-opens it."""

    def __init__(self, failures: int, open_s: float, clock: Clock = time.monotonic) -> None:
        self.threshold = failures
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False  # a half-open trial call is out

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() >= self.opened_at + self.open_s else "open"

    def wait(self) -> float:
        """0 when a call may go now (taking the trial slot when half-open), else the
        seconds until one may."""
        if self.opened_at is None:
            return 0.0
        left = self.opened_at + self.open_s - self.clock()
        if left > 0:
            return left
        if self.trial:
            return self.open_s  # the trial's own timeout ends it well before this
        self.trial = True
        return 0.0

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial = False

    def failure(self) -> None:
        self.failures += 1
        if self.trial or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.trial = False


class CallbackVerifier:
    """Asks the app's auth service: ``POST url`` with ``{"token": <credential>}``.

    200 ``{"uid": U, "expires_in": S?, "devices": [...]?, "platforms": [...]?}`` accepts
    (cached for ``min(expires_in, cache_s)``); 401 or 403 rejects. Anything else — a
    timeout, a refused connection, a 5xx, an answer without a uid — is the service
    failing: the client gets a 503 (fail closed) and the breaker counts it."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        cache_s: float,
        breaker: CircuitBreaker,
        uid_pattern: re.Pattern[str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.breaker = breaker
        self.uid_pattern = uid_pattern
        self.clock = clock
        self._http: aiohttp.ClientSession | None = None

    def _unavailable(self, why: str) -> AuthFailure:
        self.breaker.failure()
        log.warning("auth callback %s: %s", self.url, why)
        return AuthFailure(
            503,
            "auth_unavailable",
            f"the auth service {why}; try again",
            max(1, round(self.timeout_s)),
        )

    async def verify(self, credential: str) -> Identity:
        wait = self.breaker.wait()
        if wait > 0:
            return_after = max(1, int(wait + 0.999))
            raise AuthFailure(
                503,
                "auth_unavailable",
                f"the auth service is failing; not asked again for {return_after}s",
                return_after,
            )
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._http.post(self.url, json={"token": credential}) as resp:
                status = resp.status
                body = await resp.json(content_type=None) if status == 200 else None
        except TimeoutError:
            raise self._unavailable(f"did not answer within {self.timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(f"cannot be reached ({type(exc).__name__})") from None
        except (ValueError, RecursionError):
            raise self._unavailable("answered with something that is not JSON") from None
        if status in (401, 403):
            self.breaker.success()  # the service works; the credential does not
            raise _unauthorized("rejected", "the auth service rejected the credential")
        if status != 200:
            raise self._unavailable(f"answered HTTP {status}")
        if not isinstance(body, dict):
            raise self._unavailable("answered with something that is not a JSON object")
        uid = body.get("uid")
        if not isinstance(uid, str) or (
            self.uid_pattern is not None and not self.uid_pattern.fullmatch(uid)
        ):
            raise self._unavailable("answered without a valid uid")
        lifetime = self.cache_s
        expires_in = body.get("expires_in")
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
            lifetime = min(lifetime, float(expires_in))
        try:
            devices = _names(body.get("devices"), "devices")
            platforms = _names(body.get("platforms"), "platforms")
        except AuthFailure:
            raise self._unavailable("answered a bad devices or platforms list") from None
        self.breaker.success()
        return Identity(uid, self.clock() + lifetime, "", devices, platforms)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


# -- the edge's view ---------------------------------------------------------------------------


class ClientAuth:
    """What the scheduler's edge asks: ``cached`` (the hot path: a reconnecting client's
    credential), then ``authenticate`` on a miss. ``trusting`` means no credential is
    checked and ``uid=`` is taken as given (tests and benchmarks, on loopback only)."""

    def __init__(
        self,
        mode: str,
        cache: IdentityCache,
        jwt_verifier: JwtVerifier | None = None,
        callback: CallbackVerifier | None = None,
        jwks: JwksSource | None = None,
    ) -> None:
        self.mode = mode
        self.trusting = mode == "trust"
        self.cache = cache
        self.jwt = jwt_verifier
        self.callback = callback
        self.jwks = jwks
        self._inflight: dict[str, asyncio.Future[Identity]] = {}
        if jwks is not None and jwt_verifier is not None:
            jwt_verifier.remote_loaded = False
            jwt_verifier.on_unknown_kid = jwks.want

    def apply_jwks(self, keys: dict[str, VerifyKey]) -> None:
        """A fetched JWK set: keys that left it no longer vouch for cached credentials."""
        assert self.jwt is not None
        gone = self.jwt.set_remote(keys)
        if gone:
            dropped = self.cache.drop_kids(gone)
            log.info("keys %s rotated out; %d cached credential(s) dropped", sorted(gone), dropped)

    def cached(self, header: str | None) -> Identity | None:
        if not header:
            return None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.cache.get(credential.strip())

    async def authenticate(self, header: str | None) -> Identity:
        credential = bearer(header)
        found = self.cache.get(credential)
        if found is not None:
            return found
        if self.jwt is not None:
            identity = self.jwt.verify(credential)
        else:
            identity = await self._ask(credential)
        self.cache.put(credential, identity)
        return identity

    async def _ask(self, credential: str) -> Identity:
        """One callback per credential at a time: a storm of the same token waits for the
        first answer instead of asking the service once per client."""
        assert self.callback is not None
        pending = self._inflight.get(credential)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._inflight[credential] = future
        try:
            identity = await self.callback.verify(credential)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved here: waiters re-raise their own copy
            else:
                future.cancel()
            raise
        finally:
            del self._inflight[credential]
        future.set_result(identity)
        return identity

    async def close(self) -> None:
        if self.callback is not None:
            await self.callback.close()


def check_claims(identity: Identity, device: str, platform: str) -> AuthFailure | None:
    """A 403 when the credential limits the devices or platforms and this is not one."""
    if identity.devices is not None and device not in identity.devices:
        return AuthFailure(403, "device_not_allowed", "the credential does not allow this device")
    if identity.platforms is not None and platform not in identity.platforms:
        return AuthFailure(
            403, "platform_not_allowed", "the credential does not allow this platform"
        )
    return None
