"""`POST /v1/messages` end to end: the relay (over ASGI) with the simulator as its upstream,
Each outcome is checked in the answer and in the rows it leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bulk360.client import Destination
from app.bulk360.simulator import Simulator, SimulatorConfig
from app.messages import repository
from app.messages.outcome import Entry
from app.messages.repository import Answer
from app.models import Message
from tests.conftest import OTHER_API_KEY, Relay, relay_settings, run_relay
from tests.servers import free_port

SEND = "/v1/messages"


async def rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(Message).order_by(Message.id))
        return [dict(r._mapping) for r in result.all()]


def entry_fields(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(m["to"], m["status"], m["code"]) for m in body["messages"]]


class LogCapture(logging.Handler):
    """Rendered log lines, as the process writes them (with the root handler's formatter)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []
        root = logging.getLogger()
        self.setFormatter(root.handlers[0].formatter if root.handlers else None)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, self.format(record)))


# -- the happy paths ----------------------------------------------------------------------


async def test_one_sms_is_pending_with_its_ref_rate_and_segments(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    r = await relay.client.post(
        SEND,
        json={"to": "012-324 0066", "text": "Hello", "from": "AEONSales", "client_ref": "o-1"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    [m] = body["messages"]
    assert m["to"] == "60123240066" and m["channel"] == "sms"
    assert m["status"] == "pending" and m["code"] == 200 and m["desc"] == "OK"
    assert m["ref"] == simulator.sent[0]["ref"]
    assert (m["encoding"], m["segments"]) == ("gsm7", 1)
    assert body["balance"] == "1000.0000" and body["currency"] == "MYR"
    assert body["sandbox"] is True
    [row] = await rows(engine)
    assert row["id"] == m["id"] and row["ref"] == m["ref"] and row["status"] == "pending"
    assert row["api_key_name"] == "tester" and row["client_ref"] == "o-1"
    assert row["sender"] == "AEONSales" and row["submit_code"] == 200
    assert row["submitted_at"] is not None
    assert simulator.sent[0]["from"] == "AEONSales"


async def test_several_recipients_come_back_in_request_order_with_decimal_rates(
    relay: Relay, simulator: Simulator
) -> None:
    to = ["60123240066", "whatsapp:60166600267", "+60 19-999 0405", "60126660125"]
    r = await relay.client.post(SEND, json={"to": to, "text": "Hi"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert entry_fields(body) == [
        ("60123240066", "pending", 200),
        ("whatsapp:60166600267", "pending", 200),
        ("60199990405", "rejected", 405),
        ("60126660125", "pending", 200),
    ]
    sms, wa, rejected, odd = body["messages"]
    assert sms["rate"] == "0.11" and odd["rate"] == "0.2500"  # number and string upstream
    assert wa["channel"] == "whatsapp" and wa["encoding"] is None and wa["segments"] is None
    assert rejected["ref"] is None and rejected["desc"] == "Invalid Message Type"
    assert simulator.mt_requests == 1


async def test_segments_count_the_rm0_prefix_for_malaysian_sms_only(relay: Relay) -> None:
    text = "x" * 157  # 161 with "RM0 ": two segments in Malaysia, one elsewhere
    r = await relay.client.post(SEND, json={"to": "60123240066,+447911123456", "text": text})
    my, uk = r.json()["messages"]
    assert (my["encoding"], my["segments"]) == ("gsm7", 2)
    assert (uk["encoding"], uk["segments"]) == ("gsm7", 1)
    r = await relay.client.post(SEND, json={"to": "60123240066", "text": "您好"})
    assert r.json()["messages"][0]["encoding"] == "ucs2"


async def test_detail_false_leaves_out_rates_and_balance(relay: Relay, engine: AsyncEngine) -> None:
    r = await relay.client.post(
        SEND, json={"to": "60123240066,60126660125", "text": "x", "detail": False}
    )
    body = r.json()
    assert body["balance"] is None and body["currency"] is None
    assert [(m["rate"], m["currency"]) for m in body["messages"]] == [(None, None)] * 2
    stored = await rows(engine)  # recorded either way
    assert [(x["rate"], x["currency"]) for x in stored] == [("0.11", "MYR"), ("0.2500", "MYR")]


async def test_300_recipients_are_packed_into_25_requests_within_150_chars(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    forms: list[str] = []
    client = relay.state.bulk360
    real_post = client._post

    async def recording_post(
        path: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        if "to" in form:
            forms.append(form["to"])
        return await real_post(path, form, headers)

    client._post = recording_post  # type: ignore[method-assign]
    numbers = [f"6012{n:07d}" for n in range(300)]
    r = await relay.client.post(SEND, json={"to": numbers, "text": "bulk"})
    assert r.status_code == 201, r.text
    assert simulator.mt_requests == 25 and len(forms) == 25
    assert all(len(to) <= 150 for to in forms)
    body = r.json()
    assert [m["to"] for m in body["messages"]] == numbers
    assert all(m["status"] == "pending" for m in body["messages"])
    refs_by_to = {s["to"]: s["ref"] for s in simulator.sent}
    assert all(m["ref"] == refs_by_to[m["to"]] for m in body["messages"])
    stored = await rows(engine)
    assert [(s["msisdn"], s["ref"]) for s in stored] == [
        (m["to"], m["ref"]) for m in body["messages"]
    ]


async def test_duplicates_are_removed_after_normalisation_keeping_order(
    relay: Relay, simulator: Simulator
) -> None:
    to = [
        "012-324 0066",
        "+60 16-660 0267",
        "60123240066",
        "0060123240066",
        "whatsapp:60123240066",
        "WhatsApp:+60123240066",
    ]
    r = await relay.client.post(SEND, json={"to": to, "text": "x"})
    assert [m["to"] for m in r.json()["messages"]] == [
        "60123240066",
        "60166600267",
        "whatsapp:60123240066",
    ]
    assert len(simulator.sent) == 3


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ({"to": "12345", "text": "x"}, "to:", "'12345'"),
        ({"to": "03-2345 6789", "text": "x"}, "to: a fixed-line number", "'03-2345 6789'"),
        ({"to": "60123240066,,60166600267", "text": "x"}, "to: entry 2 is empty", "''"),
        ({"to": ["60123240066", "abc"], "text": "x"}, "to:", "'abc'"),
        ({"to": [], "text": "x"}, "to:", ""),
        ({"to": "", "text": "x"}, "to:", ""),
        ({"to": "whatsapp:", "text": "x"}, "to:", "'whatsapp:'"),
        ({"to": "60123240066", "text": ""}, "text:", "''"),
        ({"to": "60123240066", "text": "   "}, "text:", "'   '"),
        ({"to": "60123240066"}, "text:", ""),
        ({"text": "x"}, "to:", ""),
        ({"to": "60123240066", "text": "x", "from": "AEON Sales!"}, "from:", "'AEON Sales!'"),
        ({"to": "60123240066", "text": "x", "from": "ABCDEFGHIJKL"}, "from:", "'ABCDEFGHIJKL'"),
        ({"to": "60123240066", "text": "x", "from": "Ünïcode"}, "from:", "'Ünïcode'"),
        ({"to": "60123240066", "text": "x", "client_ref": "r" * 65}, "client_ref:", "'rrr"),
        ({"to": "60123240066", "text": "x", "detail": "maybe"}, "detail:", "'maybe'"),
        ({"to": "60123240066", "text": "x", "form": "typo"}, "form:", "'typo'"),
        ({"to": 60123240066, "text": "x"}, "to", "60123240066"),
    ],
)
async def test_each_invalid_field_is_a_422_naming_it_and_nothing_is_stored_or_sent(
    relay: Relay,
    simulator: Simulator,
    engine: AsyncEngine,
    body: dict[str, Any],
    field: str,
    value: str,
) -> None:
    r = await relay.client.post(SEND, json=body)
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["error"] == "validation_error"
    assert field in error["detail"] and value in error["detail"]
    assert await rows(engine) == []
    assert simulator.mt_requests == 0 and simulator.token_requests == 0


async def test_an_idempotency_key_over_255_characters_is_refused(
    relay: Relay, engine: AsyncEngine
) -> None:
    r = await relay.client.post(
        SEND, json={"to": "60123240066", "text": "x"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert r.status_code == 422
    assert "Idempotency-Key" in r.json()["detail"]
    assert await rows(engine) == []


@pytest.mark.parametrize("key", [b"abc\x00def", b"abc\x01", "clé".encode("latin-1")])
async def test_an_idempotency_key_with_control_or_non_ascii_characters_is_refused(
    relay: Relay, engine: AsyncEngine, key: bytes
) -> None:
    r = await relay.client.post(
        SEND, json={"to": "60123240066", "text": "x"}, headers={"Idempotency-Key": key}
    )
    assert r.status_code == 422
    assert "Idempotency-Key" in r.json()["detail"]
    assert await rows(engine) == []


async def test_more_than_max_recipients_is_a_422(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, max_recipients=2) as relay:
        ok = await relay.client.post(
            SEND, json={"to": "60123240066,60166600267,+60123240066", "text": "x"}
        )
        assert ok.status_code == 201  # 2 once the duplicate is gone
        r = await relay.client.post(
            SEND, json={"to": "60123240066,60166600267,60126660125", "text": "x"}
        )
    assert r.status_code == 422
    assert "at most 2 recipients" in r.json()["detail"]
    assert len(await rows(engine)) == 2


async def test_without_a_valid_api_key_nothing_is_sent(relay: Relay, simulator: Simulator) -> None:
    body = {"to": "60123240066", "text": "x"}
    r = await relay.client.post(SEND, json=body, headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await relay.client.post(SEND, json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert simulator.mt_requests == 0


async def test_the_api_key_name_is_recorded_on_every_message(
    relay: Relay, engine: AsyncEngine
) -> None:
    await relay.client.post(
        SEND,
        json={"to": "60123240066,60166600267", "text": "x"},
        headers={"Authorization": f"Bearer {OTHER_API_KEY}"},
    )
    assert {r["api_key_name"] for r in await rows(engine)} == {"other"}


# -- upstream outcomes and the rows they leave ---------------------------------------------


async def test_rows_are_committed_unknown_before_the_upstream_is_written(
    relay: Relay, engine: AsyncEngine
) -> None:
    seen: list[list[tuple[str, str | None]]] = []
    client = relay.state.bulk360
    real_post = client._post

    async def observing_post(
        path: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        if "to" in form:  # the send, not the token: what another connection sees right now
            seen.append([(r["status"], r["ref"]) for r in await rows(engine)])
        return await real_post(path, form, headers)

    client._post = observing_post  # type: ignore[method-assign]
    r = await relay.client.post(SEND, json={"to": "60123240066,60166600267", "text": "x"})
    assert r.status_code == 201
    assert seen == [[("unknown", None), ("unknown", None)]]
    assert [row["status"] for row in await rows(engine)] == ["pending", "pending"]


async def test_a_rejected_recipient_is_recorded_with_the_providers_code(
    relay: Relay, engine: AsyncEngine
) -> None:
    r = await relay.client.post(SEND, json={"to": "60199990406", "text": "x"})
    assert r.status_code == 201
    [row] = await rows(engine)
    assert (row["status"], row["submit_code"], row["ref"]) == ("rejected", 406, None)
    assert row["submit_desc"] == "Message content is not approved"


async def test_insufficient_credit_is_a_402_with_the_rows_rejected(
    relay: Relay, simulator: Simulator, engine: AsyncEngine
) -> None:
    r = await relay.client.post(SEND, json={"to": "60123240066,60199990402", "text": "x"})
    assert r.status_code == 402
    body = r.json()
    assert body["error"] == "insufficient_credit"
    assert entry_fields(body) == [
        ("60123240066", "rejected", 402),
        ("60199990402", "rejected", 402),
    ]
    assert [(x["status"], x["submit_code"]) for x in await rows(engine)] == [("rejected", 402)] * 2
    assert simulator.sent == []


@pytest.mark.parametrize("last4", ["0403", "0412", "0413"])
async def test_account_problems_are_a_502_naming_the_problem(
    relay: Relay, engine: AsyncEngine, last4: str
) -> None:
    r = await relay.client.post(SEND, json={"to": f"6019999{last4}", "text": "x"})
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "upstream_account_problem"
    assert "account problem" in body["detail"] and last4[1:] in body["detail"]
    [row] = await rows(engine)
    assert (row["status"], row["submit_code"]) == ("rejected", int(last4[1:]))


@pytest.mark.parametrize(
    ("last4", "error"),
    [("0500", "upstream_error"), ("0901", "upstream_error"), ("0902", "upstream_error")],
)
async def test_a_5xx_reset_or_garbage_answer_leaves_the_rows_unknown_and_is_not_resent(
    relay: Relay, simulator: Simulator, engine: AsyncEngine, last4: str, error: str
) -> None:
    r = await relay.client.post(SEND, json={"to": f"60123240066,6019999{last4}", "text": "x"})
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"] == error and "may have sent" in body["detail"]
    assert [m["status"] for m in body["messages"]] == ["unknown", "unknown"]
    assert all(m["ref"] is None for m in body["messages"])
    stored = await rows(engine)
    assert [(x["status"], x["ref"]) for x in stored] == [("unknown", None)] * 2
    assert simulator.mt_requests == 1  # never resent


async def test_a_timeout_is_a_504_with_the_rows_unknown(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, bulk360_timeout_s=0.3) as relay:
        r = await relay.client.post(SEND, json={"to": "60199990900", "text": "x"})
    assert r.status_code == 504
    body = r.json()
    assert body["error"] == "upstream_timeout"
    assert body["messages"][0]["status"] == "unknown" and body["messages"][0]["id"] > 0
    [row] = await rows(engine)
    assert row["status"] == "unknown" and row["ref"] is None
    assert len(simulator.sent) == 1 and simulator.mt_requests == 1


async def test_rows_are_visible_as_unknown_while_the_provider_is_slow(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, bulk360_timeout_s=5) as relay:
        client = relay.state.bulk360
        real_post = client._post
        reached = asyncio.Event()

        async def signalling_post(
            path: str, form: Mapping[str, str], headers: Mapping[str, str]
        ) -> tuple[int, bytes]:
            if "to" in form:
                reached.set()
            return await real_post(path, form, headers)

        client._post = signalling_post  # type: ignore[method-assign]
        simulator.config.slow_s = 0.5
        task = asyncio.create_task(relay.client.post(SEND, json={"to": "60199990900", "text": "x"}))
        await reached.wait()
        in_flight = await rows(engine)
        r = await task
    assert [(x["status"], x["ref"]) for x in in_flight] == [("unknown", None)]
    assert r.status_code == 201  # answered (late, but in time)


async def test_mixed_requests_answer_the_worst_and_keep_the_accepted_refs(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    numbers = [f"6012{n:07d}" for n in range(12)] + ["60199990900"]  # 2 upstream requests
    async with make_relay(simulator.base_url, bulk360_timeout_s=0.3) as relay:
        r = await relay.client.post(SEND, json={"to": numbers, "text": "x"})
    assert r.status_code == 504
    body = r.json()
    statuses = [m["status"] for m in body["messages"]]
    assert statuses == ["pending"] * 12 + ["unknown"]
    assert all(m["ref"] for m in body["messages"][:12])
    assert [x["status"] for x in await rows(engine)] == statuses


async def test_an_expired_token_is_refreshed_and_the_send_succeeds(
    relay: Relay, simulator: Simulator
) -> None:
    assert (
        await relay.client.post(SEND, json={"to": "60123240066", "text": "a"})
    ).status_code == 201
    async with httpx.AsyncClient() as http:
        await http.post(f"{simulator.base_url}/_simulator/expire-tokens")
    r = await relay.client.post(SEND, json={"to": "60123240066", "text": "b"})
    assert r.status_code == 201
    assert simulator.token_requests == 2 and len(simulator.sent) == 2


async def test_a_token_refused_twice_is_a_502_and_nothing_is_sent(
    make_relay: Any, engine: AsyncEngine
) -> None:
    sim = Simulator(SimulatorConfig(token_ttl_s=0.000_001, dn_delay_s=0))
    try:
        async with make_relay(await sim.start()) as relay:
            r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    finally:
        await sim.stop()
    assert r.status_code == 502 and r.json()["error"] == "upstream_unauthorized"
    assert sim.mt_requests == 2 and sim.sent == []
    [row] = await rows(engine)
    assert (row["status"], row["submit_code"]) == ("rejected", 401)


async def test_wrong_credentials_are_a_clear_502_not_a_500(
    make_relay: Any, simulator: Simulator, engine: AsyncEngine
) -> None:
    async with make_relay(simulator.base_url, bulk360_app_key="wrong-key") as relay:
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
        assert relay.state.bulk360.token_state == "failing"
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "upstream_credentials_rejected"
    assert "BULK360_APP_KEY" in body["detail"]
    assert simulator.mt_requests == 0
    [row] = await rows(engine)
    assert row["status"] == "rejected"


async def test_an_unreachable_provider_is_a_502_and_nothing_was_sent(
    make_relay: Any, engine: AsyncEngine
) -> None:
    async with make_relay(f"http://127.0.0.1:{free_port()}") as relay:
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable"
    assert (await rows(engine))[0]["status"] == "rejected"


async def test_database_unreachable_is_a_503_before_any_upstream_call(
    simulator: Simulator,
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    async with run_relay(relay_settings(url, simulator.base_url)) as relay:
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    assert r.status_code == 503
    assert r.json()["error"] == "database_unavailable"
    assert simulator.mt_requests == 0 and simulator.token_requests == 0


def _record_failing(times: int | None, exc: Exception) -> tuple[Any, list[int]]:
    """`repository.record_answers` failing `times` times (None: always), then the real one.
    The one fault a real database will not produce on cue: the connection lost while the
    answers are recorded."""
    real_record = repository.record_answers
    calls = [0]

    async def record(*args: Any) -> None:
        calls[0] += 1
        if times is None or calls[0] <= times:
            raise exc
        await real_record(*args)

    return record, calls


_CUT = OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))


async def test_an_answer_the_database_missed_is_recorded_once_it_is_back(
    relay: Relay, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down for longer than the send waits: the caller gets the provider's answer at once,
    the refs are logged, and the rows get them in the background when the database is back."""
    record, calls = _record_failing(5, _CUT)  # 3 tries in the send, 2 in the background
    monkeypatch.setattr(repository, "record_answers", record)
    late = relay.state.send_service.recorder
    late.retry_delays_s = (0.0, 0.0)
    late.late_delays_s, late.late_every_s = (0.0, 0.0), 0.0
    lines = LogCapture()
    logging.getLogger().addHandler(lines)
    try:
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
        assert r.status_code == 201  # the provider accepted: the caller must not resend
        ref = r.json()["messages"][0]["ref"]
        assert late.pending == 1
        assert "relay_send_answers_unrecorded 1.0" in (await relay.client.get("/metrics")).text
        await late.wait()
        assert "relay_send_answers_unrecorded 0.0" in (await relay.client.get("/metrics")).text
    finally:
        logging.getLogger().removeHandler(lines)

    [row] = await rows(engine)
    assert (row["status"], row["ref"]) == ("pending", ref)
    assert calls[0] == 6
    warnings = [line for level, line in lines.records if level == logging.WARNING]
    assert any(ref in line and "not recorded yet" in line for line in warnings)
    assert any("late send answer recorded" in line for _, line in lines.records)


async def test_a_failure_other_than_an_outage_is_logged_for_reconciliation_not_retried(
    relay: Relay, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, calls = _record_failing(None, ValueError("a bug"))
    monkeypatch.setattr(repository, "record_answers", record)
    lines = LogCapture()
    logging.getLogger().addHandler(lines)
    try:
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    finally:
        logging.getLogger().removeHandler(lines)
    assert r.status_code == 201
    ref = r.json()["messages"][0]["ref"]
    [row] = await rows(engine)
    assert (row["status"], row["ref"]) == ("unknown", None)
    assert calls[0] == 1 and relay.state.send_service.recorder.pending == 0
    warnings = [line for level, line in lines.records if level == logging.WARNING]
    assert any(ref in line and "reconcile" in line for line in warnings)


async def test_an_answer_still_unrecorded_at_shutdown_is_logged_with_its_refs(
    db_url: str, simulator: Simulator, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, calls = _record_failing(None, _CUT)
    monkeypatch.setattr(repository, "record_answers", record)
    lines = LogCapture()
    async with run_relay(relay_settings(db_url, simulator.base_url)) as relay:
        recorder = relay.state.send_service.recorder
        recorder.retry_delays_s = ()  # one try in the send
        recorder.late_delays_s = (60.0,)  # no try before the shutdown's
        logging.getLogger().addHandler(lines)
        r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
        assert r.status_code == 201
        assert recorder.pending == 1
    logging.getLogger().removeHandler(lines)

    ref = r.json()["messages"][0]["ref"]
    [row] = await rows(engine)
    assert (row["status"], row["ref"]) == ("unknown", None)
    assert calls[0] == 2  # the send's one try, and a last one at shutdown
    errors = [line for level, line in lines.records if level == logging.ERROR]
    assert any(ref in line and "at shutdown" in line for line in errors)


async def test_a_brief_database_outage_while_recording_the_answer_is_retried(
    relay: Relay, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_record = repository.record_answers
    calls = 0

    async def record_failing_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the connection dies mid fill-in, once
            raise OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))
        await real_record(*args)

    monkeypatch.setattr(repository, "record_answers", record_failing_once)
    r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    assert r.status_code == 201
    [row] = await rows(engine)
    assert (row["status"], row["ref"]) == ("pending", r.json()["messages"][0]["ref"])
    assert calls == 2


async def test_recording_the_answer_again_never_undoes_a_later_dn(
    relay: Relay, engine: AsyncEngine, simulator: Simulator
) -> None:
    """The retry is safe after a COMMIT that did land: it only touches rows still `unknown`."""
    r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    ref = r.json()["messages"][0]["ref"]
    dn = await relay.client.post(relay.dn_path(), data={"msgid": ref, "status": "DELIVERED"})
    assert dn.status_code == 200
    [row] = await rows(engine)
    entry = Entry(  # the same answer, recorded a second time
        Destination(channel="sms", msisdn="60123240066"), "gsm7", 1, id=row["id"]
    )
    entry.status, entry.ref, entry.code, entry.answered = "pending", ref, 200, True
    await relay.state.send_service.writer.record(Answer("again", [entry], "tester"))
    [row] = await rows(engine)
    assert (row["status"], row["ref"]) == ("delivered", ref)


# -- DNs and logs -------------------------------------------------------------------------


async def test_a_dn_that_beats_the_answer_still_ends_up_on_the_message(
    relay: Relay, engine: AsyncEngine
) -> None:
    client = relay.state.bulk360
    real_send = client.send

    async def send_then_dn(*args: Any, **kwargs: Any) -> Any:
        batches = await real_send(*args, **kwargs)
        ref = batches[0].submissions[0].ref
        # The provider's DN arrives and is stored before the relay records the ref.
        dn = await relay.client.get(
            relay.dn_path(),
            params={
                "status": "DELIVERED",
                "error-code": "000",
                "msisdn": "60123240066",
                "msgid": ref,
            },
        )
        assert dn.status_code == 200
        return batches

    client.send = send_then_dn  # type: ignore[method-assign]
    r = await relay.client.post(SEND, json={"to": "60123240066", "text": "x"})
    assert r.status_code == 201
    [row] = await rows(engine)
    assert row["ref"] == r.json()["messages"][0]["ref"]
    assert (row["status"], row["delivery_status"], row["dn_count"]) == ("delivered", "DELIVERED", 1)


async def test_log_lines_of_a_full_send_hold_no_text_key_secret_or_token(
    make_relay: Any, simulator: Simulator
) -> None:
    text = "Secret OTP 918273 for you"
    async with make_relay(simulator.base_url, log_level="DEBUG", bulk360_timeout_s=0.3) as relay:
        lines = LogCapture()
        logging.getLogger().addHandler(lines)
        try:
            r = await relay.client.post(
                SEND,
                json={"to": "60123240066,60199990405", "text": text},
                headers={"Idempotency-Key": "log-test"},
            )
            await relay.client.post(SEND, json={"to": "60199990900", "text": text})
        finally:
            logging.getLogger().removeHandler(lines)
        token = relay.state.bulk360._token
        assert token is not None
        bearer = token.value
    assert r.status_code == 201
    logged = "\n".join(line for _, line in lines.records)
    assert "bulk360 request" in logged and '"send"' in logged  # the capture did capture
    for secret in (
        text,
        "918273",
        "test-key-1",
        simulator.config.app_secret,
        simulator.config.app_key,
        bearer,
        bearer[-40:],
    ):
        assert secret not in logged
