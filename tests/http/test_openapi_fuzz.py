"""schemathesis (a schema-driven fuzzer nobody here wrote) against a live scheduler's
/openapi.json: a throwaway `imctl up` cluster on embedded backends, with an operator token
so that every admin route, the changing ones included, is exercised. Every answer must be
documented (status, content type, headers, body schema) and none may be a 500.

Bounded: a few examples per operation, no shrinking (a failure is reported as found)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from control.api import scheduler_document
from control.testing import local_config, log_tail, spawn_imctl, stop_process, until_sync


def _import_eagerly(package: Any) -> None:
    """Import every module of ``package`` now, at collection. schemathesis is a pytest
    plugin, so pytest rewrites its modules as they are imported; imported lazily, deep in
    a fixture's stack, a rewrite likely ran out of AST recursion depth, and CPython 3.11.7 then
    fails every later ast.parse in the process ("AST constructor recursion depth
    mismatch", cpython#106905): all 48 cases errored at setup once."""
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        with contextlib.suppress(Exception):  # optional extras (other specs, CLI bits)
            importlib.import_module(info.name)


_import_eagerly(schemathesis)

EXAMPLES = int(
    os.environ.get("OPENAPI_FUZZ_EXAMPLES", "5")
)  # per operation and mode: ~30 operations x 2 modes, under 40 s in all
OPERATOR = "fuzz-operator-token-0123456789abcdef"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=1) as resp:
            return bool(json.load(resp)["ready"])
    except OSError:
        return False


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway local cluster: its base URL. Client auth in trust mode (loopback only),
    so that /v1/endpoint's answers get as far as an assignment."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    config = local_config(
        tmp / "cluster.yaml",
        admin={"tokens": [{"name": "fuzz", "token": OPERATOR, "role": "operator"}]},
        client_auth={"mode": "trust"},
    )
    log = tmp / "up.log"
    proc = spawn_imctl(["up", "--config", str(tmp / "cluster.yaml")], log=log)
    base = f"http://127.0.0.1:{config['scheduler']['port']}"
    try:
        try:
            until_sync(lambda: _ready(base), 30, "the scheduler never became ready")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; its log:\n{log_tail(log)}") from None
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def api(scheduler: str) -> BaseSchema:
    return schemathesis.openapi.from_url(scheduler + "/openapi.json")


# Without count= it streams until the reader leaves: the fuzzer would wait forever.
ENDLESS = {"GET /v1/presence/events"}


def _can_be_invalid(op: dict[str, Any]) -> bool:
    """A body, or a parameter outside the headers: a free-form header (the CORS preflight's)
    has no invalid value for the fuzzer to make."""
    return "requestBody" in op or any(p["in"] != "header" for p in op.get("parameters", ()))


# Each operation with valid inputs; those that take any input with invalid ones too.
CASES = sorted(
    (f"{method.upper()} {path}", mode)
    for path, item in scheduler_document()["paths"].items()
    for method, op in item.items()
    if f"{method.upper()} {path}" not in ENDLESS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or _can_be_invalid(op)
)


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{o}-{m.value}" for o, m in CASES])
def test_every_answer_is_documented(api: BaseSchema, operation: str, mode: GenerationMode) -> None:
    method, path = operation.split(" ", 1)
    strategy = api[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Case) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {OPERATOR}"}, checks=CHECKS, timeout=10
        )

    run()
