"""`/docs`: the lookup and operations endpoints are documented with summaries, examples and
the one error shape; the document is one schemathesis accepts (every path parameter declared,
an example for every `/v1` operation), and a 405 names every method of its path.

The whole document is exercised by schemathesis against a served relay, by hand (a minute;
DATABASE_URL a migrated database, API_KEYS holding the key's hash):

    bulk360-relay serve --port 18731 &
    schemathesis run http://127.0.0.1:18731/openapi.json --checks all \
        -H 'Authorization: Bearer <key>'

Expected: no schema error, no 5xx. What remains is what a schema cannot say: a cursor is only
valid if this API issued it (400), a phone number must exist in the numbering plan (422).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import DN_TOKEN, Relay

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
    ref = params["status"]["schema"]["anyOf"][0]["$ref"]  # the one MessageStatus schema
    statuses = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["enum"]
    assert set(statuses) == {
        "pending",
        "delivered",
        "undelivered",
        "expired",
        "rejected",
        "unknown",
    }


def test_every_path_parameter_is_declared(spec: dict[str, Any]) -> None:
    """schemathesis refuses a document whose template names an undeclared parameter."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert set(re.findall(r"{([^}]+)}", path)) == declared, (method, path)
    tokens = [p for p in spec["paths"]["/dn/{token}"]["post"]["parameters"] if p["name"] == "token"]
    assert tokens and tokens[0]["required"] is True


def test_every_v1_operation_has_an_example(spec: dict[str, Any]) -> None:
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            success = next(code for code in operation["responses"] if code.startswith("2"))
            assert has_example(spec, operation["responses"][success]), (method, path)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/v1/messages", {"GET", "POST"}),
        ("DELETE", "/v1/messages", {"GET", "POST"}),
        ("PUT", f"/dn/{DN_TOKEN}", {"GET", "POST"}),
        ("PATCH", "/dn/wrong-token", {"GET", "POST"}),
        ("POST", "/v1/error-codes", {"GET"}),
    ],
)
async def test_405_allows_every_method_of_the_path(
    relay: Relay, method: str, path: str, allowed: set[str]
) -> None:
    response = await relay.client.request(method, path)

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed
