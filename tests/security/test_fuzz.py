"""Property-based fuzzing of every operation in the served OpenAPI document (schemathesis).

The real app runs over ASGI with its lifespan (PostgreSQL, the simulator as its upstream, so a
generated send that happens to be valid really goes out). Schemathesis generates the requests
from `/openapi.json` as the app serves it; the requests go through an httpx client in the
test's event loop, and each answer is held to:

- no response >= 500 (`not_a_server_error`);
- the status code, content type, headers and body documented for the operation;
- schema-violating input rejected with a 4xx (`negative_data_rejection`);
- every 4xx in the contract's error shape `{"error": str, "detail": str}`.

Per operation, positive and negative data, both with valid credentials (the API key; the DN
hook's token in the path, else everything would be a 404) and with whatever credentials
schemathesis makes up. `FUZZ_EXAMPLES` raises the count per (operation, mode, credentials)
for a longer run by hand (e.g. `FUZZ_EXAMPLES=200`); the default keeps
the test to some fifteen seconds. Every failure is
collected (no shrinking) and reported together, with the request that caused it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.bulk360.simulator import Simulator
from app.main import create_app
from tests.conftest import DN_TOKEN, TEST_API_KEY, relay_settings

pytestmark = [
    # The hook's GET and POST share one operation id; building the schema warns about it.
    pytest.mark.filterwarnings("ignore:Duplicate Operation ID dn_hook"),
]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
BASE_URL = "http://relay.test"


class StatusCounter:
    """Outermost ASGI wrapper: counts every response the app starts, by status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.statuses: Counter[int] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


def error_shape(_ctx: CheckContext, response: schemathesis.Response, case: Case) -> bool | None:
    """Every 4xx is JSON `{"error": str, "detail": str}` (402 adds the recorded messages)."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (
        f"{case.operation.label}: {response.status_code} answered {content_type!r}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    extra = set(body) - {"error", "detail"}
    if response.status_code == 402:
        extra -= {"messages", "balance", "currency", "sandbox"}
    assert not extra, f"{response.status_code} body has extra keys {sorted(extra)}"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]

_REQUEST_ARGS = ("method", "url", "headers", "params", "data", "json", "files", "cookies")


def to_wire(case: Case) -> tuple[str, str, dict[str, str], bytes]:
    """The exact request schemathesis would send (its own serialisation), as bytes."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    prepared = requests.Request(**{k: kwargs[k] for k in _REQUEST_ARGS if k in kwargs}).prepare()
    body = prepared.body or b""
    return (
        str(prepared.method),
        str(prepared.url),
        dict(prepared.headers),
        body.encode() if isinstance(body, str) else body,
    )


@dataclass
class Fuzz:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    counter: StatusCounter
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    by_operation: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def exchange(self, case: Case) -> None:
        """Send one case from the hypothesis thread through the app in the test's loop."""
        method, url, headers, body = to_wire(case)
        future = asyncio.run_coroutine_threadsafe(
            self.client.request(method, url, headers=headers, content=body), self.loop
        )
        response = future.result(timeout=30)
        with self.lock:
            self.requests += 1
            self.by_operation[case.operation.label] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            curl = f"{method} {url} headers={headers} body={body[:300]!r}"
            with self.lock:
                self.failures.append(f"{case.operation.label}: {exc}\n  {curl}")

    def run(self, operation: Any, mode: GenerationMode, phase: TestPhase, **fixed: Any) -> None:
        @settings(
            max_examples=EXAMPLES if phase is TestPhase.FUZZING else 3,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests on every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, phase=phase, **fixed))
        def fuzz(case: Case) -> None:
            self.exchange(case)

        try:
            fuzz()
        except Unsatisfiable:
            # An operation without inputs (/healthz…) has no negative data to generate.
            assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.fixture
async def fuzz(db_url: str, simulator: Simulator) -> AsyncIterator[Fuzz]:
    app = create_app(relay_settings(db_url, simulator.base_url))
    async with LifespanManager(app) as manager:
        counter = StatusCounter(manager.app)
        # raise_app_exceptions=False: an exception becomes the 500 it is on a real server,
        # counted and reported by the checks instead of aborting the run.
        transport = httpx.ASGITransport(app=counter, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield Fuzz(asyncio.get_running_loop(), client, counter)


def _credentials(operation: Any) -> dict[str, Any]:
    """Fixed parameters that get a generated request past authentication."""
    if operation.path.startswith("/v1/") and operation.path != "/v1/error-codes":
        return {"headers": {"Authorization": f"Bearer {TEST_API_KEY}"}}
    if "{token}" in operation.path:
        return {"path_parameters": {"token": DN_TOKEN}}
    return {}


async def test_fuzzing_every_operation_finds_no_5xx_and_no_contract_violation(
    fuzz: Fuzz,
) -> None:
    spec = (await fuzz.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/messages", "GET /v1/messages", "POST /dn/{token}"} <= labels

    # The documented examples first (real sends, so the lists have rows), then generated data.
    positive, negative = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    plan = [(op, positive, TestPhase.EXAMPLES, _credentials(op)) for op in operations]
    for op in operations:
        for mode in (positive, negative):
            plan.append((op, mode, TestPhase.FUZZING, _credentials(op)))
            if _credentials(op):
                plan.append((op, mode, TestPhase.FUZZING, {}))  # a made-up key or token

    def run_all() -> None:
        for op, mode, phase, fixed in plan:
            fuzz.run(op, mode, phase, **fixed)

    # Hypothesis drives a synchronous test: run it in a thread, the app stays in this loop.
    await asyncio.to_thread(run_all)

    statuses = fuzz.counter.statuses
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    summary = (
        f"{fuzz.requests} requests fuzzed over {len(operations)} operations, "
        f"{server_errors} responses >= 500; statuses {dict(sorted(statuses.items()))}"
    )
    print(summary)  # shown with -s or -rP: the figure the issue asks for
    assert fuzz.requests >= len(operations) * EXAMPLES, summary
    assert server_errors == 0, summary
    assert not fuzz.failures, f"{summary}\n" + "\n\n".join(fuzz.failures[:20])
