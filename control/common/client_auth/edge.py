"""``ClientAuth``: what the scheduler's edge asks, a cache in front of the JWT verifier or
the auth callback."""

from __future__ import annotations

import asyncio
import logging

from control.common.client_auth.callback import CallbackVerifier
from control.common.client_auth.identity import Identity, IdentityCache, bearer
from control.common.client_auth.jwks import JwksSource
from control.common.client_auth.jwt_verifier import JwtVerifier
from control.common.client_auth.keys import VerifyKey

log = logging.getLogger(__name__)


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
