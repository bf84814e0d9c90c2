"""The Bulk360 simulator, spoken to over a real socket: the provider doc's examples and every
reserved test number's behaviour."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.bulk360.simulator import Simulator, SimulatorConfig

KEY, SECRET = "test-app-key", "test-app-secret"
FLAT_REF = re.compile(r"E[0-9A-Za-z]{14}")
MULTI_REF = re.compile(r"E[0-9A-Za-z]{14}-[0-9A-Za-z]{10}")
BAD_REQUEST = {"code": 400, "desc": "Missing parameters or invalid field type"}
DESC_403 = (
    "Email or Mobile Number not verify, message API not enabled, requested IP not whitelisted "
    "or not enabled"
)


def special(last4: str) -> str:
    return f"6019999{last4}"


@dataclass
class Provider:
    sim: Simulator
    url: str
    http: aiohttp.ClientSession

    async def token(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": KEY, "client_secret": SECRET}
        async with self.http.post(f"{self.url}/oauth/token", data=form) as resp:
            assert resp.status == 200
            token: str = (await resp.json())["access_token"]
            return token

    async def send(
        self, to: str | None, text: str | None = "Hello", *, token: str | None = None, **extra: str
    ) -> tuple[int, Any]:
        form = {k: v for k, v in {"to": to, "text": text, **extra}.items() if v is not None}
        token = token if token is not None else await self.token()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with self.http.post(f"{self.url}/api/bulk360/v2.0", data=form, headers=headers) as r:
            return r.status, await r.json()


@dataclass
class DNReceiver:
    """Stands in for the relay's DN hook; answers from `statuses` first, then 200."""

    url: str = ""
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            fields = dict(request.query)
        else:
            assert request.content_type == "application/x-www-form-urlencoded"
            fields = {k: str(v) for k, v in (await request.post()).items()}
        self.received.append((request.method, fields))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def by_ref(self) -> dict[str, list[tuple[str, str | None]]]:
        out: dict[str, list[tuple[str, str | None]]] = {}
        for _, f in self.received:
            out.setdefault(f["msgid"], []).append((f["status"], f.get("error-code")))
        return out


def config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {
        "app_key": KEY,
        "app_secret": SECRET,
        "dn_delay_s": 0.0,
        "slow_s": 0.3,
        "dn_backoff_s": 0.01,
    }
    return SimulatorConfig(**(values | overrides))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def provider(http: aiohttp.ClientSession) -> AsyncIterator[Provider]:
    sim = Simulator(config())
    url = await sim.start()
    yield Provider(sim, url, http)
    await sim.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[DNReceiver]:
    rec = DNReceiver()
    app = web.Application()
    app.router.add_route("*", "/dn/hook", rec.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/dn/hook"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def dn_provider(provider: Provider, receiver: DNReceiver) -> Provider:
    provider.sim.config.dn_url = receiver.url
    return provider


# -- token ---------------------------------------------------------------------------------


async def test_token_success_has_the_doc_shape(provider: Provider) -> None:
    form = {"grant_type": "client_credentials", "client_id": KEY, "client_secret": SECRET}
    async with provider.http.post(f"{provider.url}/oauth/token", data=form) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert list(body) == ["token_type", "expires_in", "access_token"]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"].split(".")) == 3  # JWT-looking, opaque to the client
    assert provider.sim.token_requests == 1


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials", "client_id": KEY, "client_secret": "wrong"},
        {"grant_type": "client_credentials", "client_id": "wrong", "client_secret": SECRET},
        {"grant_type": "password", "client_id": KEY, "client_secret": SECRET},
        {"grant_type": "client_credentials"},
        {},
    ],
    ids=["wrong-secret", "wrong-key", "wrong-grant-type", "no-credentials", "empty"],
)
async def test_wrong_credentials_get_the_doc_invalid_client_body_exactly(
    provider: Provider, form: dict[str, str]
) -> None:
    async with provider.http.post(f"{provider.url}/oauth/token", data=form) as resp:
        assert resp.status == 401
        raw = await resp.read()
    assert json.loads(raw) == {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
        "message": "Client authentication failed",
    }
    assert list(json.loads(raw)) == ["error", "error_description", "message"]


async def test_only_the_configured_credentials_are_accepted(provider: Provider) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "sandbox-app-key",
        "client_secret": "sandbox-app-secret",
    }
    async with provider.http.post(f"{provider.url}/oauth/token", data=form) as resp:
        assert resp.status == 401


async def test_token_past_its_ttl_is_refused(provider: Provider) -> None:
    provider.sim.config.token_ttl_s = 0
    token = await provider.token()
    assert await provider.send("60123240066", token=token) == (
        401,
        {"code": 401, "desc": "Invalid Username or password"},
    )


async def test_expire_tokens_invalidates_every_issued_token(provider: Provider) -> None:
    token = await provider.token()
    assert (await provider.send("60123240066", token=token))[0] == 200
    async with provider.http.post(f"{provider.url}/_simulator/expire-tokens") as resp:
        assert resp.status == 200
    status, body = await provider.send("60123240066", token=token)
    assert (status, body) == (401, {"code": 401, "desc": "Invalid Username or password"})
    assert (await provider.send("60123240066"))[0] == 200  # a fresh token works again


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dGVzdA=="])
async def test_send_without_a_valid_bearer_token_is_401(
    provider: Provider, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with provider.http.post(
        f"{provider.url}/api/bulk360/v2.0", data={"to": "60123240066", "text": "x"}, headers=headers
    ) as resp:
        assert resp.status == 401
        assert await resp.json() == {"code": 401, "desc": "Invalid Username or password"}
    assert provider.sim.sent == []


# -- send: the doc's response shapes ---------------------------------------------------------


async def test_single_recipient_answers_the_flat_shape(provider: Provider) -> None:
    status, body = await provider.send(
        "60123240066", "Hi from Bulk360 SMS API V2.0", **{"from": "68068"}
    )
    assert status == 200
    assert list(body) == ["code", "desc", "to", "ref"]
    assert body["code"] == 200 and body["desc"] == "OK" and body["to"] == "60123240066"
    assert FLAT_REF.fullmatch(body["ref"])


async def test_flat_with_detail_adds_currency_and_the_balance_before_the_send(
    provider: Provider,
) -> None:
    status, body = await provider.send("60123240066", detail="1")
    assert status == 200
    assert list(body) == ["code", "desc", "to", "ref", "currency", "balance"]
    assert (body["currency"], body["balance"]) == ("MYR", "1000.0000")
    _, second = await provider.send("60123240066", detail="1")
    assert second["balance"] == "999.8900"  # "RM0 Hello" is one segment at 0.11


async def test_several_recipients_answer_the_messages_shape(provider: Provider) -> None:
    status, body = await provider.send("60123240066,60126660125")
    assert status == 200
    assert list(body) == ["messages"]
    for entry, to in zip(body["messages"], ["60123240066", "60126660125"], strict=True):
        assert list(entry) == ["code", "desc", "to", "ref"]
        assert (entry["code"], entry["desc"], entry["to"]) == (200, "OK", to)
        assert MULTI_REF.fullmatch(entry["ref"])


async def test_messages_with_detail_give_rate_as_number_for_even_and_string_for_odd(
    provider: Provider,
) -> None:
    token = await provider.token()
    headers = {"Authorization": f"Bearer {token}"}
    form = {"to": "60123240066,60126660125", "text": "Hello", "detail": "1"}
    async with provider.http.post(
        f"{provider.url}/api/bulk360/v2.0", data=form, headers=headers
    ) as resp:
        raw = await resp.text()
    body = json.loads(raw)
    assert list(body) == ["messages", "currency", "balance"]
    assert (body["currency"], body["balance"]) == ("MYR", "1000.0000")
    even, odd = body["messages"]
    assert list(even) == ["code", "desc", "to", "ref", "currency", "rate"]
    assert even["rate"] == 0.11 and isinstance(even["rate"], float)
    assert odd["rate"] == "0.2500"
    assert '"rate":0.11' in raw.replace(" ", "")
    assert provider.sim.balance == Decimal("1000") - Decimal("0.36")


@pytest.mark.parametrize(
    "form",
    [
        {"text": "Hello"},
        {"to": "60123240066"},
        {"to": "", "text": "Hello"},
        {"to": "60123240066", "text": ""},
        {"to": "60123240066,,60126660125", "text": "Hello"},
        {"to": "not-a-number", "text": "Hello"},
        {"to": "60123240066", "text": "Hello", "from": "TwelveChars1"},
    ],
    ids=["no-to", "no-text", "empty-to", "empty-text", "empty-entry", "letters", "long-from"],
)
async def test_missing_or_malformed_field_is_400(provider: Provider, form: dict[str, str]) -> None:
    status, body = await provider.send(form.pop("to", None), form.pop("text", None), **form)
    assert (status, body) == (400, BAD_REQUEST)
    assert provider.sim.sent == []


def recipients_of_length(total: int) -> str:
    numbers = [f"6012345678{i:04d}" for i in range(10)]  # 14 digits each: 149 characters
    extra = total - 149
    numbers[:extra] = [n + "0" for n in numbers[:extra]]
    return ",".join(numbers)


async def test_to_over_150_characters_is_400_and_150_is_accepted(provider: Provider) -> None:
    assert len(recipients_of_length(151)) == 151
    status, body = await provider.send(recipients_of_length(151))
    assert (status, body) == (400, BAD_REQUEST)
    status, body = await provider.send(recipients_of_length(150))
    assert status == 200 and len(body["messages"]) == 10


async def test_balance_short_of_the_whole_request_is_402_and_nothing_is_sent(
    provider: Provider,
) -> None:
    provider.sim.config.balance = Decimal("0.30")  # covers either recipient, not both (0.36)
    status, body = await provider.send("60123240066,60126660125")
    assert (status, body) == (402, {"code": 402, "desc": "Insufficient Account credit"})
    assert provider.sim.sent == []
    assert provider.sim.balance == Decimal("0.30")


async def test_malaysian_sms_is_charged_per_segment_of_the_rm0_prefixed_text(
    provider: Provider,
) -> None:
    text = "a" * 157  # 161 GSM-7 characters with "RM0 ": two segments
    await provider.send("60123240066,whatsapp:60166600268,6591234568", text)
    sms, whatsapp, singapore = provider.sim.sent
    assert (sms["channel"], sms["segments"], sms["charged"]) == ("sms", 2, "0.2200")
    assert (whatsapp["channel"], whatsapp["segments"], whatsapp["charged"]) == (
        "whatsapp",
        1,
        "0.1100",
    )
    assert (singapore["segments"], singapore["charged"]) == (1, "0.1100")  # no prefix abroad
    assert provider.sim.balance == Decimal("1000") - Decimal("0.44")


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 156, "gsm7", 1),
        ("a" * 157, "gsm7", 2),
        ("€" * 78, "gsm7", 1),  # extension characters take two septets
        ("€" * 79, "gsm7", 2),
        ("您" * 66, "ucs2", 1),
        ("您" * 67, "ucs2", 2),
        ("您" * 130, "ucs2", 2),
        ("您" * 131, "ucs2", 3),
    ],
)
async def test_segments_count_the_rm0_prefix(
    provider: Provider, text: str, encoding: str, segments: int
) -> None:
    await provider.send("60123240066", text)
    assert (provider.sim.sent[0]["encoding"], provider.sim.sent[0]["segments"]) == (
        encoding,
        segments,
    )


async def test_whatsapp_recipient_is_echoed_as_given(provider: Provider) -> None:
    status, body = await provider.send("whatsapp:60166600267")
    assert status == 200 and body["to"] == "whatsapp:60166600267"
    assert provider.sim.sent[0]["to"] == "whatsapp:60166600267"
    assert provider.sim.sent[0]["channel"] == "whatsapp"


async def test_a_number_given_twice_is_sent_twice_with_two_refs(provider: Provider) -> None:
    _, body = await provider.send("60123240066,60123240066")
    refs = [m["ref"] for m in body["messages"]]
    assert len(set(refs)) == 2
    assert [m["ref"] for m in provider.sim.sent] == refs


async def test_refs_are_unique_and_shaped_like_the_doc(provider: Provider) -> None:
    refs = []
    for _ in range(5):
        _, body = await provider.send(",".join(f"6012324{i:04d}" for i in range(12)))
        multi = [m["ref"] for m in body["messages"]]
        assert all(MULTI_REF.fullmatch(ref) for ref in multi)
        _, body = await provider.send("60123240066")
        assert FLAT_REF.fullmatch(body["ref"])
        refs += [*multi, body["ref"]]
    assert len(set(refs)) == len(refs) == 65


# -- reserved numbers: whole-request outcomes ------------------------------------------------


@pytest.mark.parametrize(
    ("last4", "code", "desc"),
    [
        ("0402", 402, "Insufficient Account credit"),
        ("0403", 403, DESC_403),
        ("0412", 412, "Account suspended / Terminated / Not activated"),
        ("0413", 413, "Account under observation mode, limited features enabled"),
        ("0500", 500, "Internal server error"),
    ],
)
async def test_reserved_number_fails_the_whole_request_with_its_code(
    dn_provider: Provider, receiver: DNReceiver, last4: str, code: int, desc: str
) -> None:
    status, body = await dn_provider.send(f"60123240066,{special(last4)}")
    assert (status, body) == (code, {"code": code, "desc": desc})
    await dn_provider.sim.wait_dns_sent()
    assert dn_provider.sim.sent == [] and receiver.received == []
    assert dn_provider.sim.balance == Decimal("1000")


@pytest.mark.parametrize(
    ("last4", "code", "desc"),
    [
        ("0405", 405, "Invalid Message Type"),
        ("0406", 406, "Message content is not approved"),
        ("0407", 407, "Banned Content detected. Your account is suspended"),
    ],
)
async def test_reserved_number_rejects_only_that_recipient(
    dn_provider: Provider, receiver: DNReceiver, last4: str, code: int, desc: str
) -> None:
    status, body = await dn_provider.send(f"60123240066,{special(last4)}", detail="1")
    assert status == 200
    accepted, rejected = body["messages"]
    assert accepted["code"] == 200 and MULTI_REF.fullmatch(accepted["ref"])
    assert rejected == {"code": code, "desc": desc, "to": special(last4)}
    status, body = await dn_provider.send(special(last4))
    assert (status, body) == (200, {"code": code, "desc": desc, "to": special(last4)})
    await dn_provider.sim.wait_dns_sent()
    assert [m["to"] for m in dn_provider.sim.sent] == ["60123240066"]
    assert [f["msisdn"] for _, f in receiver.received] == ["60123240066"]


async def test_0900_answers_after_slow_s_but_the_mt_is_sent(provider: Provider) -> None:
    token = await provider.token()
    headers = {"Authorization": f"Bearer {token}"}
    url, form = f"{provider.url}/api/bulk360/v2.0", {"to": special("0900"), "text": "x"}
    with pytest.raises(TimeoutError):
        async with provider.http.post(
            url, data=form, headers=headers, timeout=aiohttp.ClientTimeout(total=0.05)
        ):
            pass
    assert len(provider.sim.sent) == 1  # the provider acted: the timeout is ambiguous
    started = time.monotonic()
    async with provider.http.post(url, data=form, headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["code"] == 200
    assert time.monotonic() - started >= provider.sim.config.slow_s
    assert len(provider.sim.sent) == 2


async def test_0901_resets_the_connection_after_recording_the_mt(provider: Provider) -> None:
    token = await provider.token()
    with pytest.raises(aiohttp.ClientConnectionError):
        await provider.send(special("0901"), token=token)
    body = f"to={special('0901')}&text=x".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(provider.url.rsplit(":")[-1]))
    writer.write(
        b"POST /api/bulk360/v2.0 HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    with pytest.raises(ConnectionResetError):  # a reset, not a clean close
        await reader.read()
    writer.close()
    assert len(provider.sim.sent) == 2


async def test_0902_answers_200_with_a_non_json_body_after_recording_the_mt(
    provider: Provider,
) -> None:
    token = await provider.token()
    async with provider.http.post(
        f"{provider.url}/api/bulk360/v2.0",
        data={"to": special("0902"), "text": "x"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
        raw = await resp.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert len(provider.sim.sent) == 1


# -- delivery notifications ------------------------------------------------------------------


async def test_ordinary_number_gets_exactly_one_delivered_dn(
    dn_provider: Provider, receiver: DNReceiver
) -> None:
    _, body = await dn_provider.send("60123240066")
    await dn_provider.sim.wait_dns_sent()
    [(_, fields)] = receiver.received
    assert fields == {
        "status": "DELIVERED",
        "error-code": "000",
        "msisdn": "60123240066",
        "msgid": body["ref"],
    }
    assert list(fields) == ["status", "error-code", "msisdn", "msgid"]


async def test_whatsapp_dn_carries_the_bare_msisdn(
    dn_provider: Provider, receiver: DNReceiver
) -> None:
    await dn_provider.send("whatsapp:60166600267")
    await dn_provider.sim.wait_dns_sent()
    assert receiver.received[0][1]["msisdn"] == "60166600267"


async def test_dns_alternate_between_get_query_and_post_form(
    dn_provider: Provider, receiver: DNReceiver
) -> None:
    _, body = await dn_provider.send("60123240066,60126660125")
    await dn_provider.sim.wait_dns_sent()
    how = {f["msgid"]: method for method, f in receiver.received}
    first, second = (m["ref"] for m in body["messages"])
    assert (how[first], how[second]) == ("GET", "POST")
    assert sorted(d["how"] for d in dn_provider.sim.dn_deliveries) == ["GET", "POST"]


@pytest.mark.parametrize(
    ("last4", "dns"),
    [
        ("2501", [("UNDELIVERED", "501")]),
        ("2050", [("UNDELIVERED", "50")]),
        ("3000", []),
        ("3001", [("UNDELIVERED", "511"), ("DELIVERED", "000")]),
        ("3002", [("DELIVERED", "000"), ("DELIVERED", "000")]),
        ("3003", [("DELIVERED", "000"), ("UNDELIVERED", "501")]),
        ("3004", [("DELIVERED", None)]),
    ],
    ids=[
        "undelivered-501",
        "undelivered-50",
        "no-dn",
        "several",
        "duplicate",
        "out-of-order",
        "no-error-code",
    ],
)
async def test_reserved_number_gets_its_dns_in_order(
    dn_provider: Provider, receiver: DNReceiver, last4: str, dns: list[tuple[str, str | None]]
) -> None:
    _, body = await dn_provider.send(special(last4))
    await dn_provider.sim.wait_dns_sent()
    assert receiver.by_ref().get(body["ref"], []) == dns
    if last4 == "3004":
        assert "error-code" not in receiver.received[0][1]


@pytest.mark.parametrize(("last4", "suffix"), [("3005", "-0"), ("3006", ".0602-0")])
async def test_reserved_number_gets_one_delivered_dn_with_a_suffixed_msgid(
    dn_provider: Provider, receiver: DNReceiver, last4: str, suffix: str
) -> None:
    _, body = await dn_provider.send(special(last4))
    await dn_provider.sim.wait_dns_sent()
    [(_, fields)] = receiver.received
    assert fields["msgid"] == body["ref"] + suffix
    assert (fields["status"], fields["error-code"]) == ("DELIVERED", "000")
    [delivery] = dn_provider.sim.dn_deliveries
    assert (delivery["ref"], delivery["msgid"]) == (body["ref"], body["ref"] + suffix)


async def test_several_dns_for_many_messages_keep_per_message_order(
    dn_provider: Provider, receiver: DNReceiver
) -> None:
    _, body = await dn_provider.send(",".join([special("3003")] * 5 + [special("3001")] * 5))
    await dn_provider.sim.wait_dns_sent()
    got = receiver.by_ref()
    for entry in body["messages"]:
        expected = [("DELIVERED", "000"), ("UNDELIVERED", "501")]
        if entry["to"] == special("3001"):
            expected = [("UNDELIVERED", "511"), ("DELIVERED", "000")]
        assert got[entry["ref"]] == expected


async def test_dn_answered_non_200_is_retried_until_200(
    dn_provider: Provider, receiver: DNReceiver
) -> None:
    receiver.statuses = [503, 500]
    await dn_provider.send("60123240066")
    await dn_provider.sim.wait_dns_sent()
    assert len(receiver.received) == 3
    outcomes = [(d["attempt"], d["http_status"]) for d in dn_provider.sim.dn_deliveries]
    assert outcomes == [(1, 503), (2, 500), (3, 200)]


async def test_dn_to_an_unreachable_hook_is_retried_then_abandoned(provider: Provider) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider.sim.config.dn_url = f"http://127.0.0.1:{port}/dn/hook"
    provider.sim.config.dn_attempts = 3
    _, body = await provider.send("60123240066")
    await provider.sim.wait_dns_sent()
    assert [(d["ref"], d["http_status"]) for d in provider.sim.dn_deliveries] == [
        (body["ref"], None)
    ] * 3


async def test_dns_wait_for_dn_delay(dn_provider: Provider, receiver: DNReceiver) -> None:
    dn_provider.sim.config.dn_delay_s = 30
    await dn_provider.send("60123240066")
    with pytest.raises(TimeoutError):
        await dn_provider.sim.wait_dns_sent(timeout=0.05)
    assert receiver.received == []


async def test_stop_cancels_pending_dns_promptly(
    http: aiohttp.ClientSession, receiver: DNReceiver
) -> None:
    sim = Simulator(config(dn_url=receiver.url, dn_delay_s=30))
    provider = Provider(sim, await sim.start(), http)
    await provider.send("60123240066")
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 2
    assert receiver.received == [] and sim.dn_deliveries == []
    await sim.wait_dns_sent(timeout=0.1)  # nothing left pending


async def test_no_dn_url_means_no_dns(provider: Provider) -> None:
    await provider.send("60123240066")
    await provider.sim.wait_dns_sent(timeout=0.1)
    assert provider.sim.dn_deliveries == []


# -- inspection ------------------------------------------------------------------------------


async def test_sent_state_and_reset_endpoints(dn_provider: Provider) -> None:
    sim, url, http = dn_provider.sim, dn_provider.url, dn_provider.http
    await dn_provider.send("60123240066,whatsapp:60126660125", "Hi", **{"from": "AEONSales"})
    await sim.wait_dns_sent()
    async with http.get(f"{url}/_simulator/sent") as resp:
        sent = await resp.json()
    assert sent["count"] == 2
    first = sent["messages"][0]
    assert {k: first[k] for k in ("to", "channel", "from", "text", "segments", "charged")} == {
        "to": "60123240066",
        "channel": "sms",
        "from": "AEONSales",
        "text": "Hi",
        "segments": 1,
        "charged": "0.1100",
    }
    async with http.get(f"{url}/_simulator/state") as resp:
        state = await resp.json()
    assert (state["token_requests"], state["mt_requests"], state["balance"]) == (1, 1, "999.6400")
    assert len(state["dn_deliveries"]) == 2
    async with http.post(f"{url}/_simulator/reset") as resp:
        assert resp.status == 200
    async with http.get(f"{url}/_simulator/state") as resp:
        assert await resp.json() == {
            "token_requests": 0,
            "mt_requests": 0,
            "balance": "1000.0000",
            "dn_deliveries": [],
        }
    async with http.get(f"{url}/_simulator/sent") as resp:
        assert await resp.json() == {"count": 0, "messages": []}


# -- latency -----------------------------------------------------------------------------------


async def test_latency_holds_token_and_send_answers(http: aiohttp.ClientSession) -> None:
    sim = Simulator(config(latency_ms=100))
    provider = Provider(sim, await sim.start(), http)
    try:
        started = time.perf_counter()
        token = await provider.token()
        token_s = time.perf_counter() - started
        started = time.perf_counter()
        status, _ = await provider.send("60123240066", token=token)
        send_s = time.perf_counter() - started
    finally:
        await sim.stop()
    assert status == 200
    assert token_s >= 0.1
    assert send_s >= 0.1


async def test_latency_holds_concurrent_answers_together_not_in_turn(
    http: aiohttp.ClientSession,
) -> None:
    sim = Simulator(config())
    provider = Provider(sim, await sim.start(), http)

    async def timed_send(i: int, token: str) -> float:
        started = time.perf_counter()
        status, _ = await provider.send(f"601232{i:05d}", token=token)
        assert status == 200
        return time.perf_counter() - started

    async def send_64(token: str) -> tuple[float, list[float]]:
        started = time.perf_counter()
        each = await asyncio.gather(*(timed_send(i, token) for i in range(64)))
        return time.perf_counter() - started, each

    try:
        token = await provider.token()
        await send_64(token)  # opens the 64 connections: the measured run reuses them
        sim.config.latency_ms = 100
        held, each = await send_64(token)
    finally:
        await sim.stop()
    # Every answer waited the latency (a lower bound, whatever the machine's load)...
    assert min(each) >= 0.1, min(each)
    # ...and they waited together: held in turn, 64 answers would take 6.4 s.
    assert held < 64 * 0.1 / 4, held


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK360_APP_KEY", "k")
    monkeypatch.setenv("BULK360_APP_SECRET", "s")
    monkeypatch.setenv("SIMULATOR_TOKEN_TTL_S", "5")
    monkeypatch.setenv("SIMULATOR_DN_URL", "http://relay/dn/x")
    monkeypatch.setenv("SIMULATOR_DN_DELAY_S", "0.5")
    monkeypatch.setenv("SIMULATOR_SLOW_S", "2")
    monkeypatch.setenv("SIMULATOR_BALANCE", "12.5")
    monkeypatch.setenv("SIMULATOR_LATENCY_MS", "80")
    cfg = SimulatorConfig.from_env()
    assert (cfg.app_key, cfg.app_secret, cfg.token_ttl_s, cfg.dn_url) == (
        "k",
        "s",
        5.0,
        "http://relay/dn/x",
    )
    assert (cfg.dn_delay_s, cfg.slow_s, cfg.balance) == (0.5, 2.0, Decimal("12.5"))
    assert cfg.latency_ms == 80.0
    monkeypatch.setenv("SIMULATOR_SLOW_S", "soon")
    with pytest.raises(ValueError, match="SIMULATOR_SLOW_S"):
        SimulatorConfig.from_env()


def test_config_from_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BULK360_APP_KEY",
        "BULK360_APP_SECRET",
        "SIMULATOR_DN_URL",
        "SIMULATOR_BALANCE",
        "SIMULATOR_LATENCY_MS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert SimulatorConfig.from_env() == SimulatorConfig()


async def test_run_serves_standalone_and_prints_its_real_address(
    http: aiohttp.ClientSession,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from app.bulk360.simulator import run; run('127.0.0.1', 0)",
        stdout=asyncio.subprocess.PIPE,
        env={"BULK360_APP_KEY": KEY, "BULK360_APP_SECRET": SECRET, "PATH": ""},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match and match.group(1) != "0", line
        assert "no DNs" in line
        provider = Provider(Simulator(config()), match.group(0), http)
        assert (await provider.send("60123240066"))[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_sandbox_built_in_simulator_takes_its_latency_from_the_environment(
    make_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMULATOR_LATENCY_MS", "40")
    async with make_relay(None) as relay:  # no BULK360_BASE_URL: the built-in simulator
        assert relay.state.simulator is not None
        assert relay.state.simulator.config.latency_ms == 40
        started = time.perf_counter()
        sent = await relay.client.post("/v1/messages", json={"to": "60123240066", "text": "hi"})
        assert sent.status_code == 201, sent.text
        # The token and the send each wait the latency.
        assert time.perf_counter() - started >= 0.08
