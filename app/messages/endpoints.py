"""`POST /v1/messages` (send); `router` also carries the lookup routes (lookup.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from app.deps import ApiKeyDep, StateDep
from app.errors import error_responses
from app.messages.lookup import router as lookup_router
from app.messages.schemas import SendErrorResponse, SendRequest, SendResponse
from app.ops.middleware import LOG_FIELDS

router = APIRouter(tags=["messages"])

_SEND_ERRORS: dict[int | str, dict[str, Any]] = {
    # 400: a body that cannot be read at all (not UTF-8), before validation.
    **error_responses(400, 401, 409, 413, 422, 503),
    402: {
        "model": SendErrorResponse,
        "description": "Insufficient credit (`insufficient_credit`): nothing was sent.",
    },
    502: {
        "model": SendErrorResponse,
        "description": (
            "The provider failed. `upstream_error` (dropped connection, 5xx, unreadable "
            "answer: entries stay `unknown`, the provider may have sent them) or a refusal "
            "that sent nothing: `upstream_account_problem` (403/412/413), "
            "`upstream_credentials_rejected` (BULK360_APP_KEY/SECRET), `upstream_unauthorized`, "
            "`upstream_refused`, `upstream_unavailable`. Never resent automatically."
        ),
    },
    504: {
        "model": SendErrorResponse,
        "description": "`upstream_timeout`: no answer in time; entries stay `unknown`.",
    },
}
_SEND_DESCRIPTION = """\
Send one text to one or more recipients (SMS, or WhatsApp with the `whatsapp:` prefix).

The recipients are recorded (status `unknown`) before the provider is called, then updated from
its answer. `201` when every recipient got an answer (`pending` with a `ref`, or `rejected`
with the provider's `code`/`desc`). On 402/502/504 the body carries `error`/`detail` **and**
the recorded `messages`; entries left `unknown` may have been sent: look them up, don't resend.

`Idempotency-Key` (optional, up to 255 characters, per API key, remembered for
`IDEMPOTENCY_TTL_H`): the same key with the same request answers the stored response again
(header `Idempotent-Replayed: true`) without sending; with a different request 422
`idempotency_key_reused`; while the first is still in progress 409 `idempotency_key_in_flight`.
"""


@router.post(
    "/v1/messages",
    status_code=201,
    response_model=SendResponse,
    responses=_SEND_ERRORS,
    summary="Send SMS/WhatsApp",
    description=_SEND_DESCRIPTION,
)
async def send_messages(
    body: SendRequest,
    request: Request,
    state: StateDep,
    api_key_name: ApiKeyDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            # Printable ASCII only: a NUL cannot be stored in Postgres text (a 500 otherwise).
            pattern=r"^[\x20-\x7e]+$",
            description="Makes a retry safe: the same key and body are sent at most once.",
        ),
    ] = None,
) -> Response:
    # No session dependency: the service's writes check connections out per batch, so none
    # is held while the provider answers.
    answer = await state.send_service.send(
        body, api_key_name=api_key_name, idempotency_key=idempotency_key
    )
    request.scope[LOG_FIELDS] = answer.log_fields
    return Response(
        answer.body,
        status_code=answer.status,
        headers=answer.headers,
        media_type="application/json",
    )


router.include_router(lookup_router)
