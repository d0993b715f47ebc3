"""``JwtVerifier``: a client JWT checked against the keys it knows (configured ones, then
a JWKS's); PyJWT does the crypto."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable, Mapping

import jwt

from control.common.client_auth.identity import (
    AuthFailure,
    Identity,
    names_claim,
    unauthorized,
)
from control.common.client_auth.keys import VerifyKey, unb64url

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
            header = json.loads(unb64url(credential.partition(".")[0]))
        except (ValueError, RecursionError, binascii.Error):
            header = None
        if not isinstance(header, dict) or credential.count(".") != 2:
            raise unauthorized("malformed", "credential is not a valid JWT")
        kid = header.get("kid")
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            if not self.remote_loaded:
                raise AuthFailure(503, "keys_unavailable", "signing keys not loaded yet", 1)
            if self.on_unknown_kid is not None:
                self.on_unknown_kid()  # a key newer than our copy: fetch the set early
            raise unauthorized("unknown_key", "credential signed with an unknown key id")
        if header.get("alg") != key.alg:
            # One algorithm per key: an HS256 token "signed" with an RSA public key as its
            # secret (the classic confusion) never reaches a MAC check.
            raise unauthorized("bad_signature", "credential algorithm does not match its key")
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
                    raise unauthorized(reason, message) from None
            raise  # pragma: no cover - InvalidTokenError is the last entry
        sub = claims.get("sub")
        if not isinstance(sub, str) or (
            self.uid_pattern is not None and not self.uid_pattern.fullmatch(sub)
        ):
            raise unauthorized("malformed", "credential subject (sub) is not a valid uid")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            raise unauthorized("malformed", "credential expiry (exp) is not a number")
        return Identity(
            sub,
            float(exp),
            key.kid,
            names_claim(claims.get("devices"), "devices"),
            names_claim(claims.get("platforms"), "platforms"),
        )
