"""Access control: the API key on every `/v1` route, the DN hook's secret token, and the DN
hook's address allow-list (over ASGI and through a real socket with X-Forwarded-For)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.simulator import Simulator
from app.config import Settings
from app.deps import api_key_name
from app.main import create_app
from app.models import Message
from tests.conftest import DN_TOKEN, TEST_API_KEY, Relay, relay_settings
from tests.notifications.helpers import dns
from tests.security.test_hostile_input import assert_error, count
from tests.servers import serve_in_loop

# The only /v1 routes meant to answer without an API key. A new route lands here only by
# someone deciding it is public: the test below fails for any other route without the key.
PUBLIC_V1 = {("GET", "/v1/error-codes")}
DN = {"msgid": "ref-1", "status": "DELIVERED", "error-code": "000"}


def _needs_api_key(dependant: Dependant) -> bool:
    return any(d.call is api_key_name or _needs_api_key(d) for d in dependant.dependencies)


def served_routes(app: FastAPI) -> list[tuple[str, set[str], Any]]:
    """(path, methods, route) of every route, through included routers."""
    try:  # FastAPI >= 0.16x keeps included routers whole and resolves them per request
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [(r.path, set(r.methods or ()), r) for r in app.routes if hasattr(r, "path")]
    return [
        (c.path or "", set(c.methods or ()), c.original_route)
        for c in iter_route_contexts(app.routes)
    ]


def v1_routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, path template, needs an API key) of every /v1 route the app serves."""
    found = []
    for path, methods, route in served_routes(app):
        if not path.startswith("/v1"):
            continue
        assert isinstance(route, APIRoute), f"{path}: not an APIRoute, cannot tell its auth"
        for method in sorted(methods):
            found.append((method, path, _needs_api_key(route.dependant)))
    return found


def concrete(path: str) -> str:
    return path.replace("{ref}", "some-ref").replace("{", "").replace("}", "")


def _request_kwargs(method: str, path: str) -> dict[str, Any]:
    # A valid request in every other respect, so only the key can be what is refused.
    if (method, path) == ("POST", "/v1/messages"):
        return {"json": {"to": "60123240066", "text": "hello"}}
    return {}


WRONG_CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong key": {"Authorization": "Bearer not-the-key"},
    "near-miss key": {"Authorization": f"Bearer {TEST_API_KEY}x"},
    "key in upper case": {"Authorization": f"Bearer {TEST_API_KEY.upper()}"},
    "empty bearer": {"Authorization": "Bearer "},
    "no scheme": {"Authorization": TEST_API_KEY},
    "basic scheme": {
        "Authorization": "Basic " + base64.b64encode(f"{TEST_API_KEY}:x".encode()).decode()
    },
    "key in another header": {"X-API-Key": TEST_API_KEY},
    "key in the query": {},  # ?api_key=… below
}


async def test_every_v1_route_but_the_public_ones_needs_the_api_key(relay: Relay) -> None:
    routes = v1_routes(relay.app)
    assert ("POST", "/v1/messages") in {(m, p) for m, p, _ in routes}  # enumeration works
    open_routes = {(method, path) for method, path, needs_key in routes if not needs_key}
    assert open_routes == PUBLIC_V1, "a /v1 route without ApiKeyDep: add it, or make it public"


async def anonymous(
    relay: Relay, method: str, path: str, headers: dict[str, str], **kwargs: Any
) -> httpx.Response:
    """A request through the relay's client without its default API key."""
    request = relay.client.build_request(method, path, **kwargs)
    del request.headers["Authorization"]
    request.headers.update(headers)
    return await relay.client.send(request)


async def test_wrong_or_missing_api_key_is_401_on_every_v1_route(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    failures = []
    for method, template, needs_key in v1_routes(relay.app):
        if not needs_key:
            continue
        path, kwargs = concrete(template), _request_kwargs(method, template)
        for label, headers in WRONG_CREDENTIALS.items():
            params = {"api_key": TEST_API_KEY} if label == "key in the query" else None
            r = await anonymous(relay, method, path, headers, params=params, **kwargs)
            try:
                assert_error(r, 401)
                assert r.headers["www-authenticate"] == "Bearer"
            except (AssertionError, KeyError) as exc:
                failures.append(f"{method} {path} with {label}: {exc!r}")
        # The control: the right key (scheme in any case) gets past authentication.
        ok = await anonymous(
            relay, method, path, {"Authorization": f"bearer {TEST_API_KEY}"}, **kwargs
        )
        if ok.status_code == 401:
            failures.append(f"{method} {path}: the valid key was refused")
    assert not failures, "\n".join(failures)
    # Only the control send (with the valid key) reached the database and the provider.
    assert await count(engine, Message) == 1
    assert simulator.mt_requests == 1


async def test_public_v1_routes_answer_without_a_key(relay: Relay) -> None:
    for method, path in PUBLIC_V1:
        assert (await anonymous(relay, method, path, {})).status_code == 200


# -- the DN hook's token --------------------------------------------------------------------


def _fingerprint(response: httpx.Response) -> tuple[Any, ...]:
    varying = {"x-request-id", "date", "content-length"}
    names = sorted(k for k in response.headers if k.lower() not in varying)
    return (response.status_code, response.content, response.headers.get("content-type"), names)


WRONG_TOKENS = [
    DN_TOKEN[:-1] + chr(ord(DN_TOKEN[-1]) + 1),  # one character off
    DN_TOKEN[:-1],  # a prefix
    DN_TOKEN + "x",
    DN_TOKEN.upper(),
    "x" * 4096,
    "%00",
    "..%2F..%2Fv1%2Fmessages",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_wrong_dn_token_is_404_byte_identical_to_an_unknown_path(
    relay: Relay, engine: AsyncEngine, method: str
) -> None:
    kwargs: dict[str, Any] = {"params": DN} if method == "GET" else {"data": DN}
    unknown = await relay.client.request(method, "/no/such/path", **kwargs)
    assert unknown.status_code == 404

    answers = {
        token: await relay.client.request(method, f"/dn/{token}", **kwargs)
        for token in WRONG_TOKENS
    }

    for token, response in answers.items():
        assert _fingerprint(response) == _fingerprint(unknown), token[:40]
    assert await dns(engine) == []
    right = await relay.client.request(method, f"/dn/{DN_TOKEN}", **kwargs)
    assert right.status_code == 200  # the control


# -- DN_ALLOWED_CIDRS ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_seen_from(settings: Settings) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """The relay over ASGI; `client_from(ip)` is a client whose requests come from `ip`."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:

        def client_from(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=manager.app, client=(ip, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://relay.test")

        yield client_from


ALLOWED = "203.0.113.0/24,2001:db8::/32"


async def test_allowed_cidrs_admit_inside_addresses_and_refuse_outside_ones(
    db_url: str, simulator: Simulator, engine: AsyncEngine
) -> None:
    settings = relay_settings(db_url, simulator.base_url, dn_allowed_cidrs=ALLOWED)
    expected = {
        "203.0.113.7": 200,
        "203.0.113.255": 200,
        "::ffff:203.0.113.7": 200,  # IPv4-mapped IPv6 matches the IPv4 network
        "2001:db8::1": 200,
        "198.51.100.7": 403,
        "203.0.114.1": 403,
        "::ffff:198.51.100.7": 403,
        "2001:db9::1": 403,
        "127.0.0.1": 403,
        "not-an-address": 403,
    }
    seen = {}
    async with relay_seen_from(settings) as client_from:
        for n, (ip, _) in enumerate(expected.items()):
            async with client_from(ip) as client:
                response = await client.post(f"/dn/{DN_TOKEN}", data={**DN, "msgid": f"m{n}"})
            seen[ip] = response.status_code
            if response.status_code == 403:
                assert_error(response, 403)

    assert seen == expected
    stored = {row["msgid"] for row in await dns(engine)}
    assert stored == {f"m{n}" for n, code in enumerate(expected.values()) if code == 200}


async def test_outside_address_with_a_wrong_token_learns_nothing_and_the_api_is_not_limited(
    db_url: str, simulator: Simulator
) -> None:
    settings = relay_settings(db_url, simulator.base_url, dn_allowed_cidrs=ALLOWED)
    async with relay_seen_from(settings) as client_from, client_from("198.51.100.7") as outside:
        wrong = await outside.post("/dn/not-the-token", data=DN)
        unknown = await outside.post("/no/such/path", data=DN)
        api = await outside.get("/v1/messages", headers={"Authorization": f"Bearer {TEST_API_KEY}"})

    # The token is checked first: a 403 would tell an outsider the token was right.
    assert _fingerprint(wrong) == _fingerprint(unknown)
    assert api.status_code == 200  # the allow-list is the DN hook's alone


def forwarded_allow_ips(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    # uvicorn reads FORWARDED_ALLOW_IPS when --forwarded-allow-ips is not given (its default
    # is 127.0.0.1, which `bulk360-relay serve` keeps unless told otherwise).
    if value is None:
        monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    else:
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", value)


async def test_behind_a_trusted_proxy_the_forwarded_address_is_what_is_checked(
    db_url: str, simulator: Simulator, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = relay_settings(db_url, simulator.base_url, dn_allowed_cidrs=ALLOWED)
    cases = {
        "203.0.113.7": 200,
        "::ffff:203.0.113.7": 200,
        "198.51.100.7": 403,
        # A client's own X-Forwarded-For is kept on the left by the proxy, which appends the
        # address it saw: the rightmost untrusted entry is the one that counts.
        "203.0.113.7, 198.51.100.7": 403,
        "198.51.100.7, 203.0.113.9": 200,
        None: 403,  # no header: the peer is the proxy itself (127.0.0.1), outside the list
    }
    seen = {}
    forwarded_allow_ips(monkeypatch, None)  # uvicorn's default: trust 127.0.0.1, the test
    app = create_app(settings)
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as client:
        for n, forwarded in enumerate(cases):
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            response = await client.post(
                f"/dn/{DN_TOKEN}", data={**DN, "msgid": f"p{n}"}, headers=headers
            )
            seen[forwarded] = response.status_code

    assert seen == cases
    assert {row["msgid"] for row in await dns(engine)} == {
        f"p{n}" for n, code in enumerate(cases.values()) if code == 200
    }


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    db_url: str, simulator: Simulator, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = relay_settings(db_url, simulator.base_url, dn_allowed_cidrs=ALLOWED)
    forwarded_allow_ips(monkeypatch, "10.9.9.9")  # some other proxy, not this client
    app = create_app(settings)
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as client:
        spoofed = await client.post(
            f"/dn/{DN_TOKEN}", data=DN, headers={"X-Forwarded-For": "203.0.113.7"}
        )

    assert_error(spoofed, 403)
    assert await dns(engine) == []


@pytest.mark.parametrize(
    ("label", "body", "status_with_key"),
    [
        ("malformed JSON", b'{"to": "60123240066", "text": ', 422),
        ("not UTF-8", b'{"to": "60123240066", "text": "\xff\xfe"}', 400),
    ],
)
async def test_an_unreadable_body_without_a_valid_key_is_401_not_a_parse_error(
    relay: Relay, simulator: Simulator, label: str, body: bytes, status_with_key: int
) -> None:
    """FastAPI reads the body before it runs the key's dependency: without a valid key the
    answer must still be the 401, so the caller learns nothing about how its body was read."""
    json_type = {"Content-Type": "application/json"}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        r = await anonymous(relay, "POST", "/v1/messages", {**json_type, **headers}, content=body)
        assert_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    with_key = await anonymous(
        relay,
        "POST",
        "/v1/messages",
        {**json_type, "Authorization": f"Bearer {TEST_API_KEY}"},
        content=body,
    )
    assert_error(with_key, status_with_key)
    assert simulator.mt_requests == 0
