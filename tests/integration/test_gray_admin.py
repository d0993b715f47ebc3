"""The gray release routes (``/v1/gray/releases...``): roles (401/403, nothing changed),
malformed bodies, unknown releases, lost races (409 naming the current revision), the verbs'
state rules as HTTP answers, dry runs that write nothing, and the audit each change leaves.

The tests touch the store only through its interface (create, change, list, history); the
``store`` fixture is the real ``ReleaseStore`` on an embedded key-value store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.admin.config import AdminConfig
from control.admin.gray import RELEASES
from control.admin.routes import mount
from control.common.auth import Grant, TokenTable
from control.common.kv.embedded import EmbeddedKV
from control.common.schema import build
from control.gray.model import Release
from control.gray.store import AuditRecord, ReleaseStore, StoredRelease

PREFIX = "/t-gray"
VIEWER, OPERATOR = "v" * 24, "o" * 24
ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
CANARY = {
    "name": "canary",
    "target": {"pool": "canary"},
    "percent": 10,
    "steps": [1, 10, 25, 50, 100],
}


def as_viewer() -> dict[str, str]:
    return {"Authorization": f"Bearer {VIEWER}"}


def as_operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR}"}


def parse(data: Any) -> Release:
    problems: list[str] = []
    release = build(Release, data, "release", problems)
    assert not problems, problems
    return release


@pytest.fixture
async def store() -> AsyncIterator[ReleaseStore]:
    kv = EmbeddedKV()
    await kv.connect()
    yield ReleaseStore(kv, PREFIX)
    await kv.close()


@pytest.fixture
async def client(store: ReleaseStore, aiohttp_client: ClientMaker) -> TestClient[Any, Any]:
    grants = TokenTable((Grant("ops", VIEWER, "viewer"), Grant("sre", OPERATOR, "operator")))
    app = web.Application()
    mount(AdminConfig("test", PREFIX, frozenset(), 1, grants))(app)
    app[RELEASES] = store
    return await aiohttp_client(app)


async def call(
    client: TestClient[Any, Any], method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    kw.setdefault("headers", as_operator())
    resp = await client.request(method, path, json=body, **kw)
    return resp.status, await resp.json()


async def seed(store: ReleaseStore, data: Any = CANARY) -> StoredRelease:
    """Write a release as someone else would, through the contract."""
    release = parse(data)
    current = await store.get(release.name)
    if current is None:
        return await store.create(release, by="seed")
    return await store.change(release.name, current.revision, release, action="apply", by="seed")


async def snapshot(store: ReleaseStore) -> tuple[Any, ...]:
    """Everything stored: the releases with their revisions, and their audit trails."""
    stored = [(s.release, s.revision) for s in await store.list()]
    return stored, [await store.history(n) for n in ("canary", "other", "ghost")]


async def last(store: ReleaseStore, name: str = "canary") -> AuditRecord:
    return (await store.history(name))[-1]


async def percent(store: ReleaseStore, name: str = "canary") -> float:
    stored = await store.get(name)
    assert stored is not None
    return stored.release.percent


EMPTY: tuple[Any, ...] = ([], [[], [], []])


# Every route that changes something, with a body it would accept.
CHANGES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/gray/releases", {**CANARY, "name": "other"}),
    ("PUT", "/v1/gray/releases/canary", {"release": {**CANARY, "percent": 20}}),
    ("POST", "/v1/gray/releases/canary/set-percent", {"percent": 25}),
    ("POST", "/v1/gray/releases/canary/step", {}),
    ("POST", "/v1/gray/releases/canary/pause", {}),
    ("POST", "/v1/gray/releases/canary/resume", {}),
    ("POST", "/v1/gray/releases/canary/promote", {}),
    ("POST", "/v1/gray/releases/canary/rollback", {"over_s": 30}),
    ("DELETE", "/v1/gray/releases/canary", None),
]
READS = ["/v1/gray/releases", "/v1/gray/releases/canary", "/v1/gray/releases/canary/history"]


async def test_every_route_needs_a_token_and_changes_need_an_operator(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    await seed(store)
    before = await snapshot(store)
    for path in READS:
        assert (await call(client, "GET", path, headers={}))[0] == 401, path
        assert (await call(client, "GET", path, headers=as_viewer()))[0] == 200, path
    for method, path, body in CHANGES:
        status, answer = await call(client, method, path, body, headers={})
        assert (status, answer["error"]) == (401, "unauthorized"), (path, answer)
        status, answer = await call(client, method, path, body, headers=as_viewer())
        assert (status, answer["error"]) == (403, "forbidden"), (path, answer)
    assert await snapshot(store) == before


@pytest.mark.parametrize(
    "raw,problem",
    [
        (b"{not json", "body: not JSON"),
        (b"[1, 2]", "body: a JSON object"),
        (b'{"revision": "7"}', "revision: a revision number"),
        (b'{"revision": true}', "revision: a revision number"),
        (b'{"reason": 5}', "reason: text"),
        (b'{"colour": "red"}', "colour: unknown field"),
    ],
)
async def test_malformed_bodies_are_400_and_change_nothing(
    client: TestClient[Any, Any], store: ReleaseStore, raw: bytes, problem: str
) -> None:
    await seed(store)
    before = await snapshot(store)
    for method, path, _ in CHANGES[1:]:  # create's body is a release: tested below
        resp = await client.request(
            method, path, data=raw, headers={**as_operator(), "Content-Type": "application/json"}
        )
        answer = await resp.json()
        assert resp.status == 400 and answer["error"] == "bad_request", (path, answer)
        assert problem in answer["message"], (path, answer)
    assert await snapshot(store) == before


async def test_create_lists_every_problem_at_once(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    bad = {"name": "Bad Name", "target": {}, "percent": 120, "steps": [50, 5], "colour": 1}
    status, answer = await call(client, "POST", "/v1/gray/releases", bad)
    assert status == 400 and answer["message"] == "the release has 5 problems", answer
    joined = "\n".join(answer["problems"])
    for piece in ("release.name", "release.target", "release.percent", "release.steps"):
        assert piece in joined, answer["problems"]
    assert "release.colour: unknown key" in joined
    for body in (b"{not json", b"[1]"):
        resp = await client.post("/v1/gray/releases", data=body, headers=as_operator())
        assert resp.status == 400, await resp.text()
    assert await snapshot(store) == EMPTY


async def test_create_then_read_list_status_and_history(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    status, answer = await call(
        client, "POST", "/v1/gray/releases", {"release": CANARY, "reason": "ticket 7"}
    )
    assert status == 201 and answer["release"]["percent"] == 10.0
    first = answer["revision"]
    status, again = await call(client, "POST", "/v1/gray/releases", CANARY)
    assert (status, again["error"], again["revision"]) == (409, "exists", first)

    status, listed = await call(client, "GET", "/v1/gray/releases", headers=as_viewer())
    assert listed == {
        "releases": [
            {
                "name": "canary",
                "state": "running",
                "percent": 10.0,
                "target": {"pool": "canary"},
                "revision": first,
            }
        ]
    }
    status, shown = await call(client, "GET", "/v1/gray/releases/canary", headers=as_viewer())
    assert status == 200 and shown["state"] == "running" and shown["revision"] == first
    assert shown["step"] == {"at": 2, "of": 5, "next": 25.0}
    status, history = await call(client, "GET", "/v1/gray/releases/canary/history")
    (record,) = history["history"]
    assert (record["action"], record["by"], record["why"]) == ("create", "sre", "ticket 7")
    assert record["from_revision"] == 0 and record["revision"] == first


async def test_dry_runs_show_the_diff_and_who_moves_and_write_nothing(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    status, answer = await call(client, "POST", "/v1/gray/releases?dry_run=1", CANARY)
    assert status == 200 and answer["dry_run"] is True, answer
    assert answer["diff"]["percent"] == [None, 10.0]
    assert answer["moves"]["sample"] == 10_000 and answer["moves"]["out_of"] == 0
    assert 0.09 <= answer["moves"]["share"] <= 0.11, answer["moves"]
    assert await snapshot(store) == EMPTY

    await seed(store)
    before = await snapshot(store)
    body = {"release": {**CANARY, "percent": 25}}
    status, answer = await call(client, "PUT", "/v1/gray/releases/canary?dry_run=1", body)
    assert status == 200 and answer["diff"] == {"percent": [10.0, 25.0]}, answer
    assert answer["moves"]["out_of"] == 0 and 0.14 <= answer["moves"]["share"] <= 0.16
    assert await snapshot(store) == before
    status, answer = await call(client, "PUT", "/v1/gray/releases/canary?dry_run=maybe", body)
    assert status == 400 and "dry_run" in answer["message"]


async def test_the_verbs_walk_a_release_to_its_end(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    seeded = await seed(store)
    base = "/v1/gray/releases/canary"
    status, answer = await call(client, "POST", f"{base}/step", {"reason": "green"})
    assert status == 200 and answer["release"]["percent"] == 25.0
    assert answer["revision"] > seeded.revision
    status, answer = await call(client, "POST", f"{base}/set-percent", {"percent": 30.5})
    assert answer["release"]["percent"] == 30.5
    status, answer = await call(client, "POST", f"{base}/pause")
    assert answer["release"]["state"] == "paused" and answer["changed"] is True
    # Pausing again changes nothing, and writes nothing.
    count = len(await store.history("canary"))
    status, answer = await call(client, "POST", f"{base}/pause")
    assert (status, answer["changed"]) == (200, False)
    assert len(await store.history("canary")) == count
    status, answer = await call(client, "POST", f"{base}/resume")
    assert answer["release"]["state"] == "running"
    status, answer = await call(client, "POST", f"{base}/rollback", {"over_s": 30})
    assert answer["release"]["state"] == "rolled_back" and answer["release"]["percent"] == 0.0
    record = await last(store)
    assert (record.action, dict(record.figures), record.by) == ("rollback", {"over_s": 30.0}, "sre")
    assert tuple(record.changes["state"]) == ("running", "rolled_back")
    revision = answer["revision"]
    ended = await snapshot(store)
    for method, path, body in CHANGES[1:-1]:
        status, answer = await call(client, method, path, body)
        assert (status, answer["error"]) == (409, "release_ended"), (path, answer)
        assert answer["state"] == "rolled_back" and "rolled_back" in answer["message"]
    assert await snapshot(store) == ended
    status, answer = await call(client, "DELETE", base, {"reason": "done"})
    assert status == 200 and answer == {"deleted": "canary", "revision": revision}
    assert await store.list() == [] and (await last(store)).action == "delete"
    status, history = await call(client, "GET", f"{base}/history?limit=2")
    assert [r["action"] for r in history["history"]] == ["rollback", "delete"]


async def test_promote_makes_the_target_the_stable_version_in_the_history(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    await seed(store)
    base = "/v1/gray/releases/canary"
    status, answer = await call(client, "POST", f"{base}/promote", {"reason": "all green"})
    assert status == 200 and answer["release"]["state"] == "promoted"
    assert answer["stable"]["target"] == {"pool": "canary"}
    stored = await store.stable.get()
    assert stored is not None and stored.stable.target.pool == "canary"
    assert (stored.stable.release_revision, stored.revision) == (
        answer["revision"],
        answer["stable"]["revision"],
    )
    status, history = await call(client, "GET", f"{base}/history")
    trail = [(r["action"], r["by"], r["why"]) for r in history["history"]]
    assert trail[-2:] == [("promote", "sre", "all green"), ("stable", "sre", "all green")]
    assert history["history"][-1]["changes"] == {"stable": [None, {"pool": "canary"}]}


async def test_verb_refusals_are_clear_and_write_nothing(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    await seed(store, {**CANARY, "percent": 100})
    before = await snapshot(store)
    base = "/v1/gray/releases/canary"
    cases = [
        (f"{base}/step", {}, 400, "no step above"),
        (f"{base}/set-percent", {"percent": 101}, 400, "percent"),
        (f"{base}/set-percent", {}, 400, "percent: required"),
        (f"{base}/rollback", {"over_s": -5}, 400, "over_s"),
        (f"{base}/pause", {"percent": 3}, 400, "percent: unknown field"),
        (f"{base}/explode", {}, 404, "no verb"),
        ("/v1/gray/releases/Not_A_Name/pause", {}, 400, "name"),
    ]
    for path, body, code, text in cases:
        status, answer = await call(client, "POST", path, body)
        assert status == code and text in answer["message"], (path, answer)
    status, answer = await call(client, "GET", f"{base}/history?limit=0")
    assert status == 400
    assert await snapshot(store) == before


async def test_an_unknown_release_is_404_everywhere(client: TestClient[Any, Any]) -> None:
    for method, path, body in CHANGES[1:]:
        path = path.replace("canary", "ghost")
        status, answer = await call(client, method, path, body)
        assert (status, answer["error"]) == (404, "not_found"), (path, answer)
        assert "ghost" in answer["message"]
    for path in READS[1:]:
        status, _ = await call(client, "GET", path.replace("canary", "ghost"))
        assert status == 404, path


async def test_a_stale_revision_or_a_lost_race_is_a_409_naming_the_current_one(
    client: TestClient[Any, Any], store: ReleaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await seed(store)
    second = await seed(store, {**CANARY, "percent": 20})
    base = "/v1/gray/releases/canary"
    before = await snapshot(store)
    for method, path, body in CHANGES[1:-1]:
        status, answer = await call(client, method, path, {**body, "revision": first.revision})
        assert (status, answer["error"]) == (409, "conflict"), (path, answer)
        assert answer["revision"] == second.revision and str(second.revision) in answer["message"]
    status, answer = await call(client, "DELETE", f"{base}?revision={first.revision}")
    assert (status, answer["revision"]) == (409, second.revision)
    assert await snapshot(store) == before

    # Another operator writes between this request's read and its write.
    write = store.change
    raced: list[StoredRelease] = []

    async def after_another(*args: Any, **kw: Any) -> StoredRelease:
        if not raced:
            other = parse({**CANARY, "percent": 50})
            read = await store.get("canary")
            assert read is not None
            raced.append(await write("canary", read.revision, other, action="apply", by="seed"))
        return await write(*args, **kw)

    monkeypatch.setattr(store, "change", after_another)
    status, answer = await call(client, "POST", f"{base}/set-percent", {"percent": 30})
    assert (status, answer["error"], answer["revision"]) == (409, "conflict", raced[0].revision)
    assert await percent(store) == 50.0
    assert [r.by for r in await store.history("canary")] == ["seed"] * 3  # no "sre"


async def test_apply_replaces_rules_but_never_ends_or_renames(
    client: TestClient[Any, Any], store: ReleaseStore
) -> None:
    seeded = await seed(store)
    base = "/v1/gray/releases/canary"
    # The name may be left out: the URL names the release.
    body = {"release": {k: v for k, v in CANARY.items() if k != "name"} | {"percent": 5}}
    revision = seeded.revision
    status, answer = await call(
        client, "PUT", base, {**body, "revision": revision, "reason": "slow"}
    )
    assert status == 200 and answer["release"]["percent"] == 5.0
    assert answer["revision"] > revision
    record = await last(store)
    assert {k: tuple(v) for k, v in record.changes.items()} == {"percent": (10.0, 5.0)}
    assert (record.why, record.by, record.action) == ("slow", "sre", "apply")
    before = await snapshot(store)
    for release, text in (
        ({**CANARY, "state": "promoted"}, "imctl gray promote"),
        ({**CANARY, "name": "other"}, "names do not change"),
        ({**CANARY, "percent": "lots"}, "the release has 1 problem"),
    ):
        status, answer = await call(client, "PUT", base, {"release": release})
        assert status == 400 and text in answer["message"], answer
    status, answer = await call(client, "PUT", base, {})
    assert status == 400 and answer["message"] == "release: required"
    assert await snapshot(store) == before
    assert await percent(store) == 5.0
