"""The keys a client JWT may be signed with: configured ones (``parse_key``) and a JWK
set's (``parse_jwks``), each prepared once as a ``VerifyKey``."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = logging.getLogger(__name__)

MIN_SECRET_LEN = 32  # HS256 secrets: RFC 7518 asks for at least the hash's 256 bits
ALGORITHMS = ("HS256", "RS256", "ES256")


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
            jwk: dict[str, Any] = {"kty": "oct", "k": b64url(raw)}
        elif alg == "RS256":
            jwk = dict(jwt.algorithms.RSAAlgorithm.to_jwk(raw, as_dict=True))
        else:
            jwk = dict(jwt.algorithms.ECAlgorithm.to_jwk(raw, as_dict=True))
        return cls(kid, alg, jwt.PyJWK(jwk, algorithm=alg))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
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
