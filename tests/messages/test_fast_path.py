"""The send fast path answers what the route would, and hands everything else to the route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from app.bulk360.simulator import Simulator
from tests.conftest import TEST_API_KEY, Relay

SEND = "/v1/messages"


def counted(metrics: str, status: int) -> float:
    line = f'relay_http_requests_total{{method="POST",route="/v1/messages",status="{status}"}}'
    found = [x for x in metrics.splitlines() if x.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


async def test_a_fast_send_and_a_route_send_are_counted_alike(
    relay: Relay, simulator: Simulator
) -> None:
    before = counted((await relay.client.get("/metrics")).text, 201)  # one registry per process
    fast = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the route reads it
        yield orjson.dumps({"to": "60166600267", "text": "x"})

    routed = await relay.client.post(
        SEND, content=chunked(), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert (fast.status_code, routed.status_code) == (201, 201)
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert set(fast.json()) == set(routed.json())
    assert "x-request-id" in fast.headers and "x-request-id" in routed.headers
    assert counted((await relay.client.get("/metrics")).text, 201) == before + 2
    assert simulator.mt_requests == 2


async def test_refusals_are_the_routes_own(relay: Relay, simulator: Simulator) -> None:
    body = {"to": "60123240066", "text": "x"}
    wrong_key = await relay.client.post(SEND, json=body, headers={"Authorization": "Bearer no"})
    lower = await relay.client.post(
        SEND, json=body, headers={"Authorization": f"bearer {TEST_API_KEY}"}
    )
    bad_json = await relay.client.post(
        SEND, content=b'{"to": ', headers={"Content-Type": "application/json"}
    )
    assert wrong_key.status_code == 401 and wrong_key.json()["error"] == "unauthorized"
    assert wrong_key.headers["www-authenticate"] == "Bearer"
    assert lower.status_code == 201  # the scheme is case-insensitive on both paths
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["detail"]
    assert simulator.mt_requests == 1
