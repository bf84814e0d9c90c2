"""Request and response bodies of `POST /v1/messages` (CONTRACT §4.1)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.vocabulary import storable

_SENDER = re.compile(r"[A-Za-z0-9]{1,11}")


class SendRequest(BaseModel):
    """A message to one or more recipients.

    `to`: a comma-separated string or a list. Each entry is an international number (`+`,
    spaces and dashes are ignored; `60123240066`, `+60 12-324 0066`), or a national number
    starting with `0` read in `DEFAULT_REGION` (`012-324 0066`). Prefix an entry with
    `whatsapp:` to send it over WhatsApp. Numbers are validated against the numbering plan;
    fixed lines, toll-free and premium-rate numbers are refused for SMS (WhatsApp accepts fixed
    lines). Duplicates after normalisation are sent once; at most `MAX_RECIPIENTS` recipients.

    `detail` (default true) includes `rate`, `currency` and `balance` in the answer; the relay
    records them either way.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "to": "012-324 0066,whatsapp:60166600267",
                    "text": "Your OTP is 123456",
                    "from": "AEONSales",
                    "client_ref": "order-8812",
                }
            ]
        },
    )

    to: str | list[str] = Field(description="Recipients: a comma-separated string or a list.")
    text: str = Field(
        description="The message text (non-empty).", json_schema_extra={"minLength": 1}
    )
    sender: str | None = Field(
        default=None, alias="from", description="Sender name: 1-11 ASCII letters/digits."
    )
    client_ref: str | None = Field(
        default=None, description="Your own reference, up to 64 characters; searchable."
    )
    detail: bool = Field(
        default=True, strict=True, description="Include rate/currency/balance in the answer."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        # Declared for clients and fuzzers; callbacks/service.py checks it (and the host).
        json_schema_extra={
            "format": "uri",
            "pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S*)?$",
        },
        description="Where to POST each status change of these messages (signed status "
        "callbacks); default: the API key's entry in CALLBACK_URLS.",
    )

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return storable(v)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str | None) -> str | None:
        if v is not None and not _SENDER.fullmatch(v):
            raise ValueError("must be 1-11 ASCII letters or digits")
        return v

    @field_validator("client_ref")
    @classmethod
    def _client_ref(cls, v: str | None) -> str | None:
        if v is not None and not 1 <= len(v) <= 64:
            raise ValueError("must be 1-64 characters")
        return v if v is None else storable(v)


class MessageEntry(BaseModel):
    """One recipient's message.

    `to` is the E.164 number without `+`, prefixed `whatsapp:` for WhatsApp. `status`:
    `pending` (accepted, `ref` set), `rejected` (the provider refused it: `code`/`desc` say
    why; nothing was charged), or `unknown` (no usable answer: the provider may have sent it;
    the relay never resends on its own). `encoding`/`segments` are what an SMS is billed as,
    counting the provider's `RM0 ` prefix for Malaysian (60…) numbers; null for WhatsApp.
    `rate` is the provider's charge as decimal text, null when it reported none (its answer
    for a single recipient carries no rate).
    """

    id: int
    to: str
    channel: Literal["sms", "whatsapp"]
    ref: str | None
    status: Literal["pending", "rejected", "unknown"]
    code: int | None
    desc: str | None
    rate: str | None
    currency: str | None
    encoding: Literal["gsm7", "ucs2"] | None
    segments: int | None


_ENTRY_EXAMPLE: dict[str, Any] = {
    "id": 41,
    "to": "60123240066",
    "channel": "sms",
    "ref": "E2104yMYer2weOB-X46dBlYa79",
    "status": "pending",
    "code": 200,
    "desc": "OK",
    "rate": "0.11",
    "currency": "MYR",
    "encoding": "gsm7",
    "segments": 1,
}


class SendResponse(BaseModel):
    """Every recipient got an answer from the provider (accepted or rejected)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages": [_ENTRY_EXAMPLE],
                    "balance": "187.9236",
                    "currency": "MYR",
                    "sandbox": False,
                }
            ]
        }
    )

    messages: list[MessageEntry]
    balance: str | None = Field(description="Account balance before this send, decimal text.")
    currency: str | None
    sandbox: bool


class SendErrorResponse(BaseModel):
    """A send that did not (entirely) go through. The recipients were recorded: `messages`
    lists every entry with its status, as in a 201 (`unknown` where the provider may have
    sent, `rejected` where it certainly did not, `pending` for any part it accepted)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "upstream_timeout",
                    "detail": "no answer from Bulk360 within 30s; it may have sent",
                    "messages": [
                        {
                            **_ENTRY_EXAMPLE,
                            "ref": None,
                            "status": "unknown",
                            "code": None,
                            "desc": None,
                            "rate": None,
                            "currency": None,
                        }
                    ],
                    "balance": None,
                    "currency": None,
                    "sandbox": False,
                }
            ]
        }
    )

    error: str
    detail: str
    messages: list[MessageEntry]
    balance: str | None
    currency: str | None
    sandbox: bool
