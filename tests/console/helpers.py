"""Signing in to the console over HTTP, as a browser's form post does."""

from __future__ import annotations

import re

import httpx

from tests.conftest import TEST_API_KEY

_TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def csrf_token(html: str) -> str:
    match = _TOKEN.search(html)
    assert match, "the page has a form with a CSRF token"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, api_key: str = TEST_API_KEY) -> httpx.Response:
    """GET the sign-in form, then POST it; returns the POST's answer (303 when signed in)."""
    form = await client.get("/console/sign-in")
    return await client.post(
        "/console/sign-in", data={"api_key": api_key, "csrf_token": csrf_token(form.text)}
    )
