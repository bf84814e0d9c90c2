"""Console sign-in without a browser: cookie flags and lifetime, CSRF refusals, security
headers, the signing key's configuration (the sign-in throttle: test_throttle.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.config import ConfigError, hash_api_key, load_settings
from app.console.session import COOKIE, SESSION_MAX_AGE_S
from app.console.web import SECURITY_HEADERS, Console, safe_next
from tests.conftest import OTHER_API_KEY, TEST_API_KEY, Relay
from tests.console.helpers import csrf_token, sign_in

PAGES = ["/console", "/console/messages", "/console/messages/x", "/console/unmatched-dns"]
MakeRelay = Callable[..., AbstractAsyncContextManager[Relay]]
SECRET = "s" * 40


def console_of(relay: Relay) -> Console:
    console = relay.state.extras["console"]
    assert isinstance(console, Console)
    return console


@pytest.mark.parametrize("page", PAGES)
async def test_pages_send_a_visitor_to_sign_in_and_back(relay: Relay, page: str) -> None:
    response = await relay.client.get(page)  # the API key header is not a console session
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/console/sign-in?next=")
    assert (await sign_in(relay.client)).status_code == 303
    form = await relay.client.get(location)  # signed in: straight on to where it was going
    assert form.status_code == 303
    assert form.headers["location"] == page


async def test_session_cookie_is_signed_httponly_lax_and_twelve_hours(relay: Relay) -> None:
    response = await sign_in(relay.client)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "SameSite=lax" in cookie and "Path=/console" in cookie
    assert f"Max-Age={SESSION_MAX_AGE_S}" in cookie and SESSION_MAX_AGE_S <= 12 * 3600
    assert "secure" not in attributes  # plain http://relay.test
    assert TEST_API_KEY not in cookie
    assert (await relay.client.get("/console")).status_code == 200


async def test_https_public_url_makes_the_cookie_secure(make_relay: MakeRelay) -> None:
    async with make_relay(None, public_base_url="https://relay.example") as relay:
        response = await sign_in(relay.client)
        assert "; secure" in response.headers["set-cookie"].lower()


async def test_forged_or_expired_cookie_is_no_session(relay: Relay) -> None:
    await sign_in(relay.client)
    value = relay.client.cookies[COOKIE]
    payload = console_of(relay).sessions._serializer.loads(value)

    class ThirteenHoursAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 13 * 3600

    old = URLSafeTimedSerializer(
        relay.settings.console_signing_key, salt="console-session", signer=ThirteenHoursAgo
    ).dumps(payload)
    forged = URLSafeTimedSerializer(b"another key" * 4, salt="console-session").dumps(payload)
    for cookie in (old, forged, value[:-2] + "xx"):
        relay.client.cookies.set(COOKIE, cookie, path="/console")
        assert (await relay.client.get("/console")).status_code == 303


async def test_api_key_is_never_read_from_the_url(relay: Relay) -> None:
    page = await relay.client.get("/console/sign-in", params={"api_key": TEST_API_KEY})
    token = csrf_token(page.text)
    posted = await relay.client.post(
        "/console/sign-in", params={"api_key": TEST_API_KEY}, data={"csrf_token": token}
    )
    assert posted.status_code == 401
    assert (await relay.client.get("/console")).status_code == 303


async def test_state_changing_forms_refuse_a_missing_or_wrong_csrf_token(relay: Relay) -> None:
    await relay.client.get("/console/sign-in")
    for token in ("", "0" * 64):
        no_token = await relay.client.post(
            "/console/sign-in", data={"api_key": TEST_API_KEY, "csrf_token": token}
        )
        assert no_token.status_code == 403
    assert (await relay.client.get("/console")).status_code == 303
    await sign_in(relay.client)
    refused = await relay.client.post("/console/sign-out", data={"csrf_token": "0" * 64})
    assert refused.status_code == 403
    assert (await relay.client.get("/console")).status_code == 200  # still signed in
    token = csrf_token((await relay.client.get("/console")).text)
    signed_out = await relay.client.post("/console/sign-out", data={"csrf_token": token})
    assert signed_out.status_code == 303
    assert (await relay.client.get("/console")).status_code == 303


async def test_signing_in_issues_a_new_session_nonce(relay: Relay) -> None:
    await relay.client.get("/console/sign-in")
    before = relay.client.cookies[COOKIE]
    await sign_in(relay.client)
    after_token = csrf_token((await relay.client.get("/console")).text)
    relay.client.cookies.set(COOKIE, before, path="/console")
    refused = await relay.client.post("/console/sign-out", data={"csrf_token": after_token})
    assert refused.status_code == 403


async def test_a_key_removed_from_api_keys_ends_its_sessions(make_relay: MakeRelay) -> None:
    both = f"tester:{hash_api_key(TEST_API_KEY)},other:{hash_api_key(OTHER_API_KEY)}"
    async with make_relay(None, console_secret=SECRET, api_keys=both) as relay:
        await sign_in(relay.client)
        cookie = relay.client.cookies[COOKIE]
    async with make_relay(None, console_secret=SECRET, api_keys=both) as relay:
        relay.client.cookies.set(COOKIE, cookie, path="/console")
        assert (await relay.client.get("/console")).status_code == 200  # same secret: kept
    # `tester` now has another key: the old key's session is over.
    rotated = f"tester:{hash_api_key('new-key')},other:{hash_api_key(OTHER_API_KEY)}"
    async with make_relay(None, console_secret=SECRET, api_keys=rotated) as relay:
        relay.client.cookies.set(COOKIE, cookie, path="/console")
        assert (await relay.client.get("/console")).status_code == 303


@pytest.mark.parametrize("path", ["/console/sign-in", "/console", "/console/messages/none"])
async def test_console_answers_carry_the_security_headers(relay: Relay, path: str) -> None:
    if path != "/console/sign-in":
        await sign_in(relay.client)
    response = await relay.client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    csp = response.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # so: no script at all
    assert "unsafe-inline" not in csp


async def test_console_pages_have_no_inline_script_or_style(relay: Relay) -> None:
    await sign_in(relay.client)
    for path in ["/console", "/console/messages", "/console/unmatched-dns"]:
        html = (await relay.client.get(path)).text.lower()
        assert "<script" not in html and "style=" not in html and "<style" not in html


async def test_static_css_is_cached(relay: Relay) -> None:
    page = await relay.client.get("/console/sign-in")
    href = page.text.split('rel="stylesheet" href="')[1].split('"')[0]
    css = await relay.client.get(href)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "immutable" in css.headers["cache-control"]


def _settings(**values: Any) -> Any:
    return load_settings(_env_file=None, **values)


def test_console_secret_configuration() -> None:
    with pytest.raises(ConfigError, match="CONSOLE_SECRET"):
        _settings(console_secret="short")
    assert _settings(console_secret=SECRET).console_signing_key == SECRET.encode()
    # Sandbox without it: random per start.
    assert _settings().console_signing_key != _settings().console_signing_key
    live = {
        "bulk360_mode": "live",
        "database_url": "postgresql+asyncpg://db/relay",
        "bulk360_app_key": "k",
        "bulk360_app_secret": "app-secret",
        "api_keys": f"a:{hash_api_key('x')}",
        "dn_hook_token": "hook-token",
    }
    # Live without it: derived, so every replica and restart agrees, and not the secrets.
    key = _settings(**live).console_signing_key
    assert key == _settings(**live).console_signing_key
    assert key != _settings(**(live | {"dn_hook_token": "other"})).console_signing_key
    assert b"app-secret" not in key and b"hook-token" not in key
    assert "CONSOLE_SECRET" in " ".join(_settings().sandbox_defaults_in_use())


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/console", "/console/\\evil", "/other", ""]
)
def test_after_sign_in_only_console_paths_are_followed(target: str) -> None:
    assert safe_next(target) == "/console"
    assert safe_next("/console/messages?q=0123240066") == "/console/messages?q=0123240066"
