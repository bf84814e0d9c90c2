"""Sending: record first, then ask the provider, then record its answer.

The order is the money-safety guarantee (CONTRACT §4.1):

1. The rows, one per recipient (status `unknown`, no ref), together with the Idempotency-Key
   claim, are COMMITTED before any byte goes upstream (`SendWriter.claim_and_insert`,
   group-committed with other sends). A crash after the provider accepted leaves visible
   `unknown` rows, never a silent gap. If the database is unreachable here the answer is 503
   and nothing is sent.
2. The upstream requests (as few as the 150-character `to` allows, concurrently, bounded by
   `BULK360_MAX_CONCURRENCY`), holding no database connection.
3. The answer: `outcome` turns the provider's answers into entries, an HTTP status and a body;
   `AnswerRecorder` records it (refs, statuses, the stored Idempotency-Key response) and owns
   every retry if the database is away; then the caller gets it.

The relay never resends on its own: when the provider may have acted (timeout, dropped
connection, 5xx, unreadable answer) the rows stay `unknown` and the caller gets 502/504.
"""

from __future__ import annotations

import uuid

import structlog

from app.bulk360.client import Bulk360Client
from app.callbacks.service import callback_url_for
from app.config import Settings
from app.errors import AppError, is_database_unavailable
from app.messages import outcome
from app.messages.idempotency import Claimed, claim_answer, request_hash
from app.messages.outcome import Entry, SendAnswer
from app.messages.recipients import RecipientError, normalise_recipients
from app.messages.recorder import AnswerRecorder
from app.messages.repository import Answer, NewSend
from app.messages.schemas import SendRequest
from app.messages.writer import SendWriter
from app.ops.metrics import SENDS

log = structlog.get_logger("app.messages")


class SendService:
    """Built once per process in the lifespan, with its collaborators."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Bulk360Client,
        writer: SendWriter,
        recorder: AnswerRecorder,
    ) -> None:
        self.client = client
        self.writer = writer
        self.recorder = recorder
        self._region = settings.default_region
        self._max_recipients = settings.max_recipients
        self._sandbox = settings.sandbox
        self._settings = settings
        self._outcomes = {label: SENDS.labels(label) for label in _OUTCOMES}

    async def send(
        self, request: SendRequest, *, api_key_name: str, idempotency_key: str | None
    ) -> SendAnswer:
        try:
            destinations = normalise_recipients(
                request.to, region=self._region, limit=self._max_recipients
            )
        except RecipientError as exc:
            raise AppError(422, "validation_error", str(exc)) from None
        callback_url = callback_url_for(self._settings, api_key_name, request.callback_url)
        new = NewSend(
            send_id=str(uuid.uuid4()),
            api_key_name=api_key_name,
            client_ref=request.client_ref,
            sender=request.sender,
            entries=outcome.prepare(request.text, destinations),
            key=idempotency_key,
            body_hash=request_hash(request, destinations) if idempotency_key else None,
            callback_url=callback_url,
        )
        # 1. The claim and the rows, committed before anything goes upstream.
        try:
            claim = await self.writer.claim_and_insert(new)
        except Exception as exc:
            if is_database_unavailable(exc):
                log.warning("send refused: database unavailable", error=type(exc).__name__)
                raise AppError(
                    503, "database_unavailable", "the database is unreachable; nothing was sent"
                ) from None
            raise
        if not isinstance(claim, Claimed):
            return claim_answer(claim)

        # 2. The provider.
        batches = await self.client.send(destinations, text=request.text, sender=request.sender)
        entries = new.entries
        failure = outcome.apply(entries, batches)
        balance, currency = outcome.balance(batches)
        status, body = outcome.answer(
            entries,
            failure=failure,
            balance=balance,
            currency=currency,
            detail=request.detail,
            sandbox=self._sandbox,
        )

        # 3. Record the answer (the recorder owns any retry), then respond.
        answer = Answer(new.send_id, entries, api_key_name, idempotency_key)
        if idempotency_key is not None:
            answer.status, answer.body = status, body
        await self.recorder.record(answer)
        fields = self._count(new.send_id, entries, upstream_requests=len(batches))
        return SendAnswer(status, body, log_fields=fields)

    def _count(
        self, send_id: str, entries: list[Entry], *, upstream_requests: int
    ) -> dict[str, object]:
        """The send's metrics; and its fields for the request's log line (CONTRACT §4.4: one
        line per request, one per upstream call)."""
        for e in entries:
            self._outcomes[e.outcome].inc()
        return {
            "send_id": send_id,
            "recipients": len(entries),
            "upstream_requests": upstream_requests,
            "pending": sum(e.status == "pending" for e in entries),
            "rejected": sum(e.status == "rejected" for e in entries),
            "unknown": sum(e.status == "unknown" for e in entries),
        }


_OUTCOMES = ("pending", "rejected", "insufficient_credit", "unknown")
