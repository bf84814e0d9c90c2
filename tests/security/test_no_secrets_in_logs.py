"""No secret and no message text in any log line, at any level, on the error paths too.

One session runs everything that could leak, with the root logger at DEBUG (every library's
debug output included) and in both formats (console renders tracebacks differently from
JSON): sends that succeed, fail upstream (500, timeout, dropped connection, garbage) or fail
on the token (`invalid_client` with a wrong app secret), DNs from the simulator and by hand,
a wrong API key, a wrong DN token, validation errors that echo the text in the answer, and an
unhandled exception in the send path. Everything written is captured twice: every log record
as the app's own handler renders it, and the raw stdout/stderr of the process. Then none of
the secrets may appear in it: the API keys (valid and wrong), BULK360_APP_KEY and the app
secrets (valid and wrong), every bearer token the simulator issued, the DN hook token (and a
near miss of it), and every message text.

A second test does the same for a real `bulk360-relay serve` process and its log file: the DN
token is in the path of every DN request, which uvicorn's access log would print.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

import app
from app.bulk360 import simulator as simulator_module
from app.bulk360.simulator import Simulator, SimulatorConfig
from app.config import hash_api_key
from app.main import create_app
from app.messages.service import SendService
from tests.conftest import relay_settings
from tests.servers import RelayProcess, bound_socket, serve_in_loop

APP_DIR = Path(app.__file__).parent

VALID_KEY = "relay-key-V4lid9QmZt"
WRONG_KEY = "wrong-key-W7rng3XpLq"
APP_KEY = "app-key-K3y77HdRw"
APP_SECRET = "app-secret-S3cr51JqTe"
WRONG_APP_SECRET = "bad-app-secret-B4d28VnXa"
DN_TOKEN = "dn-token-T0k64RwYu"
WRONG_DN_TOKEN = "dn-token-T0k64RwYv"  # one character off: a log of it would give most away

SECRETS = {
    "valid API key": VALID_KEY,
    "wrong API key": WRONG_KEY,
    "BULK360_APP_KEY": APP_KEY,
    "BULK360_APP_SECRET": APP_SECRET,
    "wrong BULK360_APP_SECRET": WRONG_APP_SECRET,
    "DN hook token": DN_TOKEN,
    "wrong DN token": WRONG_DN_TOKEN,
}
# Every text carries a marker word found nowhere else, so a partial echo is caught too.
TEXTS = {
    "delivered": "Your OTP is 918273 ZEPHYR",
    "upstream 500": "PIN 5521 for QUOKKA",
    "upstream timeout": "Code 7731 for NARWHAL",
    "connection reset": "Code 6620 for PANGOLIN",
    "garbage answer": "Code 1187 for AXOLOTL",
    "invalid_client": "Code 3359 for WOMBAT",
    "wrong API key": "Code 4478 for KINKAJOU",
    "422 on to": "Code 5051 for MARMOT",
    "422 on text": "Code 6162 for LEMUR \ud800",
    "422 extra field": "Code 7273 for OCELOT",
    "unhandled error": "Code 8384 for TAPIR",
}
MARKERS = {label: re.findall(r"[A-Z]{5,}", text)[-1] for label, text in TEXTS.items()}


class Capture(logging.Handler):
    """Every record that reaches the root logger, rendered by the app's own formatter.

    Except the test's own httpx client's: it logs every URL it requests, the DN token with
    it. The app never uses httpx (asserted in the test), so those loggers are the test's.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        root = logging.getLogger()
        self.setFormatter(root.handlers[0].formatter if root.handlers else None)
        self.lines: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("httpx", "httpcore")):
            self.lines.append((record.levelno, record.name, self.format(record)))


def _token_fragments(token: str) -> list[str]:
    # The header segment is the same for every token; the claims and the signature are not.
    _, claims, signature = token.split(".")
    return [token, claims, signature, token[-40:]]


def find_leaks(text: str, tokens: list[str]) -> list[str]:
    found = [f"{label} {value!r}" for label, value in SECRETS.items() if value in text]
    found += [f"text {label!r}" for label, word in MARKERS.items() if word in text]
    for token in tokens:
        parts = _token_fragments(token)
        found += [f"bearer token fragment {part[:12]}..." for part in parts if part in text]
    return found


@dataclass
class Upstream:
    simulator: Simulator
    relay_socket: socket.socket  # the relay serves here; the simulator sends its DNs to it
    tokens: list[str] = field(default_factory=list)  # every bearer token issued


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sock = bound_socket()
    sim = Simulator(
        SimulatorConfig(
            app_key=APP_KEY,
            app_secret=APP_SECRET,
            dn_url=f"http://127.0.0.1:{sock.getsockname()[1]}/dn/{DN_TOKEN}",
            dn_delay_s=0.0,
            slow_s=2.0,
        )
    )
    result = Upstream(sim, sock)
    issue = simulator_module.new_token

    def recording_issue(ttl_s: float) -> str:
        token = issue(ttl_s)
        result.tokens.append(token)
        return token

    simulator_module.new_token = recording_issue  # the simulator issues its tokens with it
    try:
        await sim.start()
        yield result
        await sim.stop()
    finally:
        simulator_module.new_token = issue
        sock.close()


def _settings(db_url: str, upstream: str, fmt: str, app_secret: str) -> Any:
    return relay_settings(
        db_url,
        upstream,
        api_keys=f"svc:{hash_api_key(VALID_KEY)}",
        dn_hook_token=DN_TOKEN,
        bulk360_app_key=APP_KEY,
        bulk360_app_secret=app_secret,
        bulk360_timeout_s=1.0,  # short for the timeout step, long enough on a loaded machine
        log_level="DEBUG",
        log_format=fmt,
    )


async def _session(relay: httpx.AsyncClient, refused: httpx.AsyncClient) -> dict[str, int]:
    """Everything that could leak; returns the status of each step."""
    key = {"Authorization": f"Bearer {VALID_KEY}"}
    steps: dict[str, httpx.Response] = {}

    async def send(label: str, to: str, client: httpx.AsyncClient = relay, **extra: Any) -> None:
        body = {"to": to, "text": TEXTS[label], **extra.get("body", {})}
        headers = {**key, **extra.get("headers", {})}
        steps[label] = await client.post("/v1/messages", json=body, headers=headers)

    await send("delivered", "60123240066", headers={"Idempotency-Key": "log-1"})
    await send("upstream 500", "60199990500")
    await send("upstream timeout", "60199990900")
    await send("connection reset", "60199990901")
    await send("garbage answer", "60199990902")
    await send("invalid_client", "60123240077", client=refused)
    steps["wrong API key"] = await relay.post(
        "/v1/messages",
        json={"to": "60123240066", "text": TEXTS["wrong API key"]},
        headers={"Authorization": f"Bearer {WRONG_KEY}"},
    )
    await send("422 on to", "not-a-number")
    steps["422 on text"] = await relay.post(
        "/v1/messages",
        content=b'{"to": "60123240066", "text": "Code 6162 for LEMUR \\ud800"}',
        headers={**key, "content-type": "application/json"},
    )
    await send("422 extra field", "60123240066", body={"note": TEXTS["422 extra field"]})
    dn = {"msgid": "by-hand", "status": "DELIVERED", "error-code": "000"}
    steps["DN GET"] = await relay.get(f"/dn/{DN_TOKEN}", params=dn)
    steps["DN POST"] = await relay.post(f"/dn/{DN_TOKEN}", data=dn)
    steps["wrong DN token GET"] = await relay.get(f"/dn/{WRONG_DN_TOKEN}", params=dn)
    steps["wrong DN token POST"] = await relay.post(f"/dn/{WRONG_DN_TOKEN}", data=dn)
    return {label: r.status_code for label, r in steps.items()}


async def _unhandled_error(relay: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> int:
    # A fault injected where none can be made otherwise: an exception inside the send path,
    # with the request body and the API key's name in the frames of its traceback.
    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    with monkeypatch.context() as patch:
        patch.setattr(SendService, "send", boom)
        response = await relay.post(
            "/v1/messages",
            json={"to": "60123240066", "text": TEXTS["unhandled error"]},
            headers={"Authorization": f"Bearer {VALID_KEY}"},
        )
    return response.status_code


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_no_secret_or_text_in_any_log_line(
    db_url: str,
    fmt: str,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sim, tokens = upstream.simulator, upstream.tokens
    relay_app = create_app(_settings(db_url, sim.base_url, fmt, APP_SECRET))
    refused_app = create_app(_settings(db_url, sim.base_url, fmt, WRONG_APP_SECRET))
    capture = Capture()  # after create_app: configure_logging replaces the root handlers
    logging.getLogger().addHandler(capture)
    # And out of the process output (see Capture).
    monkeypatch.setattr(logging.getLogger("httpx"), "disabled", True)
    try:
        async with (
            serve_in_loop(relay_app, upstream.relay_socket) as url,
            LifespanManager(refused_app) as refused_manager,
            httpx.AsyncClient(base_url=url) as relay,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=refused_manager.app), base_url="http://r.test"
            ) as refused,
        ):
            statuses = await _session(relay, refused)
            statuses["unhandled error"] = await _unhandled_error(relay, monkeypatch)
            await sim.wait_dns_sent()
    finally:
        logging.getLogger().removeHandler(capture)
    out, err = capfd.readouterr()

    assert statuses == {
        "delivered": 201,
        "upstream 500": 502,
        "upstream timeout": 504,
        "connection reset": 502,
        "garbage answer": 502,
        "invalid_client": 502,
        "wrong API key": 401,
        "422 on to": 422,
        "422 on text": 422,
        "422 extra field": 422,
        "DN GET": 200,
        "DN POST": 200,
        "wrong DN token GET": 404,
        "wrong DN token POST": 404,
        "unhandled error": 500,
    }
    assert tokens, "the simulator issued no token: nothing was checked"
    assert not [p for p in APP_DIR.rglob("*.py") if "import httpx" in p.read_text()]
    assert any(d["http_status"] == 200 for d in sim.dn_deliveries), "no DN reached the relay"
    logged = "\n".join(line for _, _, line in capture.lines)
    # The capture did capture: request lines of each route, upstream calls, the traceback,
    # at DEBUG (driver loggers, which would print SQL parameters, are held at WARNING).
    for expected in ("/v1/messages", "/dn/{token}", "bulk360 request", "unhandled_error"):
        assert expected in logged, expected
    assert "injected fault" in logged
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    assert not any(name.startswith("sqlalchemy.engine") for _, name, _ in capture.lines)

    leaks = [
        f"{name} [{logging.getLevelName(level)}]: {leak}"
        for level, name, line in capture.lines
        for leak in find_leaks(line, tokens)
    ]
    leaks += [f"process output: {leak}" for leak in find_leaks(out + err, tokens)]
    assert not leaks, "\n".join(leaks)


async def test_a_served_relay_process_logs_no_token_key_or_text(
    db_url: str, tmp_path: Path
) -> None:
    """`bulk360-relay serve` (sandbox, its built-in simulator sending DNs to its own hook)."""
    relay = RelayProcess(
        {
            "DATABASE_URL": db_url,
            "BULK360_MODE": "sandbox",
            "API_KEYS": f"svc:{hash_api_key(VALID_KEY)}",
            "DN_HOOK_TOKEN": DN_TOKEN,
            "BULK360_APP_KEY": APP_KEY,
            "BULK360_APP_SECRET": APP_SECRET,
            "SANDBOX_DN_DELAY_S": "0",
            "LOG_LEVEL": "DEBUG",
            "LOG_FORMAT": "json",
        }
    )
    log_path = tmp_path / "relay.log"
    await relay.start(log_path)
    key = {"Authorization": f"Bearer {VALID_KEY}"}
    dn = {"msgid": "by-hand", "status": "DELIVERED"}
    try:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            sent = await client.post(
                "/v1/messages", json={"to": "60123240066", "text": TEXTS["delivered"]}, headers=key
            )
            ref = sent.json()["messages"][0]["ref"]
            answers = [
                await client.get(f"/dn/{DN_TOKEN}", params=dn),
                await client.post(f"/dn/{DN_TOKEN}", data=dn),
                await client.get(f"/dn/{WRONG_DN_TOKEN}", params=dn),
                await client.post(
                    "/v1/messages",
                    json={"to": "60123240066", "text": TEXTS["wrong API key"]},
                    headers={"Authorization": f"Bearer {WRONG_KEY}"},
                ),
            ]
            # The built-in simulator's DN arrives over HTTP, from another task: poll for it.
            deadline = time.monotonic() + 10
            while (await client.get(f"/v1/messages/{ref}", headers=key)).json()["dn_count"] == 0:
                assert time.monotonic() < deadline, "the simulator's DN never arrived"
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()

    assert sent.status_code == 201
    assert [a.status_code for a in answers] == [200, 200, 404, 401]
    logged = log_path.read_text()
    assert '"route":"/dn/{token}"' in logged  # the DN requests were logged, by template
    assert not find_leaks(logged, []), find_leaks(logged, [])
