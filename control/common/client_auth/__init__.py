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

Modules: ``identity`` (Identity, AuthFailure, the bearer header, IdentityCache, the claims
check), ``keys`` (VerifyKey, configured keys, JWK sets), ``jwt_verifier``, ``jwks`` (the
background refresh), ``callback`` (the auth service and its circuit breaker), ``edge``
(ClientAuth) and ``mint`` (tokens for ``imctl token``).
"""

from control.common.client_auth.callback import CallbackVerifier, CircuitBreaker
from control.common.client_auth.edge import ClientAuth
from control.common.client_auth.identity import (
    MAX_CREDENTIAL_LEN,
    MISSING,
    AuthFailure,
    Clock,
    Identity,
    IdentityCache,
    bearer,
    check_claims,
)
from control.common.client_auth.jwks import JwksSource
from control.common.client_auth.jwt_verifier import JwtVerifier
from control.common.client_auth.keys import (
    ALGORITHMS,
    MIN_SECRET_LEN,
    VerifyKey,
    parse_jwks,
    parse_key,
)
from control.common.client_auth.mint import mint

__all__ = [
    "ALGORITHMS",
    "MAX_CREDENTIAL_LEN",
    "MIN_SECRET_LEN",
    "MISSING",
    "AuthFailure",
    "CallbackVerifier",
    "CircuitBreaker",
    "ClientAuth",
    "Clock",
    "Identity",
    "IdentityCache",
    "JwksSource",
    "JwtVerifier",
    "VerifyKey",
    "bearer",
    "check_claims",
    "mint",
    "parse_jwks",
    "parse_key",
]
