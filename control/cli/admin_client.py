"""The admin HTTP API as the CLI calls it: one class, the bearer token on every call, and
every failure (unreachable, or an HTTP error with the server's message) as one
``AdminError`` whose text is the line the user is told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import aiohttp

from control.common.tls import CertificateError, client_context

# A decoded JSON answer, of whatever shape the server sent: a verb reading a field that is
# not there (KeyError, TypeError...) has met another kind of server.
Answer = Any

CALL_TIMEOUT_S = 10.0  # a whole request/answer; a tail of events has no total limit
_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, CertificateError)


class AdminError(Exception):
    """A call that failed; ``str()`` is the one line to print (after ``imctl: ``)."""

    def __init__(
        self, url: str, line: str, status: int | None = None, answer: Answer = None
    ) -> None:
        super().__init__(line)
        self.url = url
        self.status = status  # None: the server was not reached
        self.answer = answer  # the server's JSON error (its "problems", a "revision"...)


class EventStream(NamedTuple):
    """An open tail of presence events: raw lines, a blank one now and then (keepalive)."""

    url: str
    lines: AsyncIterator[bytes]


class AdminClient:
    """Calls one scheduler's admin API at ``server`` (a base URL) with ``token``."""

    def __init__(
        self, server: str, token: str | None, timeout_s: float = CALL_TIMEOUT_S, cafile: str = ""
    ) -> None:
        self.server = server
        self.token = token
        self.timeout_s = timeout_s
        self.cafile = cafile  # a private CA for an https:// server ("": the system's)

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(ssl=client_context(self.cafile) if self.cafile else True)

    def url(self, path: str) -> str:
        return self.server + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # -- the transport -------------------------------------------------------------------------

    async def _request(self, method: str, url: str, body: Any) -> tuple[int, Answer]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=self._connector()) as session,
            session.request(method, url, headers=self._headers(), json=body) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except (ValueError, RecursionError):
                data = {"error": "bad_response", "message": (await resp.text())[:200]}
            return resp.status, data

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        """One request, its JSON answer when 2xx (202: a change accepted); AdminError
        otherwise."""
        url = self.url(path)
        try:
            status, data = asyncio.run(self._request(method, url, body))
        except _ERRORS as exc:
            raise AdminError(url, f"cannot reach {url}: {exc}") from None
        if not 200 <= status < 300:
            message = data.get("message", data) if isinstance(data, dict) else data
            raise AdminError(url, f"{url}: HTTP {status}: {message}", status, data)
        return data

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    # -- the endpoints -------------------------------------------------------------------------

    def nodes(self) -> Answer:
        return self.get("/v1/nodes")

    def drain(self, node: str, over_s: float) -> Answer:
        return self.call("POST", f"/v1/nodes/{quote(node, safe='')}/drain", {"over_s": over_s})

    def rebalance(self, max_rate: float, until_ratio: float) -> Answer:
        body = {"max_rate": max_rate, "until_ratio": until_ratio}
        return self.call("POST", "/v1/nodes/rebalance", body)

    def undrain(self, node: str) -> Answer:
        return self.call("DELETE", f"/v1/nodes/{quote(node, safe='')}/drain")

    def presence(self, uid: str) -> Answer:
        return self.get(f"/v1/presence/{quote(uid, safe='')}")

    def lookup(self, uids: Sequence[str]) -> Answer:
        return self.call("POST", "/v1/presence/lookup", {"uids": list(uids)})

    def presence_status(self) -> Answer:
        return self.get("/v1/presence/status")

    def count(self, by: str | None) -> Answer:
        return self.get("/v1/presence/count" + (f"?by={by}" if by else ""))

    def explain(self, params: Mapping[str, str]) -> Answer:
        return self.get("/v1/explain?" + urlencode(params))

    def ring(self) -> Answer:
        return self.get("/v1/ring")

    def ring_add(self, url: str, weight: int | None, shard_id: str | None) -> Answer:
        body: dict[str, Any] = {"url": url}
        if weight is not None:
            body["weight"] = weight
        if shard_id is not None:
            body["id"] = shard_id
        return self.call("POST", "/v1/ring/shards", body)

    def ring_remove(self, shard: str) -> Answer:
        return self.call("DELETE", f"/v1/ring/shards/{quote(shard, safe='')}")

    def ring_reweight(self, shard: str, weight: int) -> Answer:
        path = f"/v1/ring/shards/{quote(shard, safe='')}"
        return self.call("PUT", path, {"weight": weight})

    def ring_pause(self, paused: bool) -> Answer:
        return self.call("POST", "/v1/ring/" + ("pause" if paused else "resume"))

    def ring_throttle(self, users_per_s: float) -> Answer:
        return self.call("PUT", "/v1/ring/throttle", {"users_per_s": users_per_s})

    def gray_list(self) -> Answer:
        return self.get("/v1/gray/releases")

    def gray_status(self, name: str) -> Answer:
        return self.get(_release_path(name))

    def gray_history(self, name: str, limit: int) -> Answer:
        return self.get(f"{_release_path(name)}/history?limit={limit}")

    def gray_create(self, release: Any, dry_run: bool, reason: str | None) -> Answer:
        body = {"release": release, **({"reason": reason} if reason else {})}
        return self.call("POST", "/v1/gray/releases" + _dry(dry_run), body)

    def gray_apply(
        self, name: str, release: Any, dry_run: bool, reason: str | None, revision: int | None
    ) -> Answer:
        body = {"release": release, **_change_args(reason, revision)}
        return self.call("PUT", _release_path(name) + _dry(dry_run), body)

    def gray_verb(
        self,
        name: str,
        verb: str,
        args: Mapping[str, Any],
        reason: str | None,
        revision: int | None,
    ) -> Answer:
        body = {**args, **_change_args(reason, revision)}
        return self.call("POST", f"{_release_path(name)}/{quote(verb, safe='')}", body)

    def gray_delete(self, name: str, reason: str | None, revision: int | None) -> Answer:
        query = f"?revision={revision}" if revision is not None else ""
        body = {"reason": reason} if reason else None
        return self.call("DELETE", _release_path(name) + query, body)

    @asynccontextmanager
    async def events(self, uid: str | None, count: int | None) -> AsyncIterator[EventStream]:
        """A tail of presence events; AdminError when it cannot start or breaks off."""
        url = self.url("/v1/presence/events")
        query = {k: v for k, v in (("uid", uid), ("count", count)) if v is not None}
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        # No total timeout: a tail runs until the count is reached or Ctrl-C.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=self._connector()) as session,
                session.get(url, headers=self._headers()) as resp,
            ):
                if resp.status != 200:
                    line = f"{url}: HTTP {resp.status}: {_stream_message(await resp.text())}"
                    raise AdminError(url, line, resp.status)
                yield EventStream(url, resp.content.__aiter__())
        except _ERRORS as exc:
            raise AdminError(url, f"cannot reach {url}: {exc}") from None


def _release_path(name: str) -> str:
    return f"/v1/gray/releases/{quote(name, safe='')}"


def _dry(dry_run: bool) -> str:
    return "?dry_run=1" if dry_run else ""


def _change_args(reason: str | None, revision: int | None) -> dict[str, Any]:
    """What every gray change may carry: the operator's reason, the revision it read."""
    out: dict[str, Any] = {"reason": reason} if reason else {}
    if revision is not None:
        out["revision"] = revision
    return out


def _stream_message(text: str) -> object:
    """A refused tail's message: the JSON answer's ``message``, else the raw text."""
    try:
        return json.loads(text).get("message")
    except (ValueError, RecursionError, AttributeError):
        return text[:200]
