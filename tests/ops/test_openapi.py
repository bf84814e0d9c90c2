"""`/docs`: the lookup and operations endpoints are documented with summaries, examples and
the one error shape."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Relay

# The DN hook's GET and POST share one operation id (app/notifications/endpoints.py); until it
# gets one per method, building the schema warns. Not what these tests pin.
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate Operation ID dn_hook")

DOCUMENTED = {
    ("get", "/v1/messages/{ref}"): {"401", "404", "422", "503"},
    ("get", "/v1/messages"): {"400", "401", "422", "503"},
    ("get", "/healthz"): set(),
    ("get", "/readyz"): set(),
    ("get", "/metrics"): set(),
}


@pytest.fixture
async def spec(relay: Relay) -> dict[str, Any]:
    response = await relay.client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def has_example(spec: dict[str, Any], response: dict[str, Any]) -> bool:
    for content in response.get("content", {}).values():
        if "example" in content or "examples" in content:
            return True
        ref = content.get("schema", {}).get("$ref", "")
        schema = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
        if "example" in schema or "examples" in schema:
            return True
    return False


@pytest.mark.parametrize(("method", "path"), list(DOCUMENTED))
async def test_endpoint_has_summary_example_and_error_shape(
    spec: dict[str, Any], method: str, path: str
) -> None:
    operation = spec["paths"][path][method]

    assert operation["summary"] and "\n" not in operation["summary"]
    assert operation["description"]  # the route's docstring
    assert has_example(spec, operation["responses"]["200"])
    errors = {code for code in operation["responses"] if code.startswith(("4", "5"))}
    assert DOCUMENTED[(method, path)] <= errors
    for code in errors - {"503"} if path == "/readyz" else errors:
        schema = operation["responses"][code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)


async def test_list_filters_are_documented_with_limits(spec: dict[str, Any]) -> None:
    params = {p["name"]: p for p in spec["paths"]["/v1/messages"]["get"]["parameters"]}

    assert set(params) == {
        "to",
        "status",
        "client_ref",
        "channel",
        "since",
        "until",
        "limit",
        "cursor",
    }
    assert params["limit"]["schema"]["maximum"] == 500
    statuses = params["status"]["schema"]["anyOf"][0]["enum"]
    assert set(statuses) == {
        "pending",
        "delivered",
        "undelivered",
        "expired",
        "rejected",
        "unknown",
    }
