"""``CallbackVerifier``: the app's own auth service asked about a credential, behind a
``CircuitBreaker`` so a failing service is not asked again and again."""

from __future__ import annotations

import logging
import re
import time

import aiohttp

from control.common.client_auth.identity import (
    AuthFailure,
    Clock,
    Identity,
    names_claim,
    unauthorized,
)

log = logging.getLogger(__name__)


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
            raise unauthorized("rejected", "the auth service rejected the credential")
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
            devices = names_claim(body.get("devices"), "devices")
            platforms = names_claim(body.get("platforms"), "platforms")
        except AuthFailure:
            raise self._unavailable("answered a bad devices or platforms list") from None
        self.breaker.success()
        return Identity(uid, self.clock() + lifetime, "", devices, platforms)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
