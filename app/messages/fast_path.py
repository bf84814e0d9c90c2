"""`POST /v1/messages` without FastAPI's routing and dependency machinery, for well-formed
requests; everything else goes to the FastAPI route unchanged.

The send route's framework layers (exception middleware, exit stack, routing, the dependency
solver, Request/Response objects) cost about a third of the relay's CPU per send. `SendFastPath`
sits inside `RequestMiddleware` (request id, metrics, log line stay as they are) and answers a
send itself when its head and body are what the route would accept without a word: a valid API
key, a JSON content type and Content-Length, an acceptable `Idempotency-Key`, a body that
`SendRequest` validates. Anything else, a 401 or a 422 included, is handed to the app with the
body replayed, so every refusal stays byte-identical to the route's. Once the send has
started there is no going back: its errors are answered here, as the app's handlers would.
"""

from __future__ import annotations

import re

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import State, caller_name
from app.errors import AppError, error_response, http_error_response, unexpected_error_response
from app.messages.schemas import SendRequest
from app.ops.middleware import LOG_FIELDS

PATH = "/v1/messages"
_IDEMPOTENCY_KEY = re.compile(rb"[\x20-\x7e]{1,255}")  # as the route's Header declares


class _SendTemplate:
    # What the request middleware reads from scope["route"] for its metrics and log line.
    path = PATH


class SendFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        head = _head(scope)
        if head is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except HTTPException as exc:  # over the body limit after all (a lying Content-Length)
            await http_error_response(exc)(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        parsed = _parse(scope, head, body)
        if parsed is None:
            await self.app(scope, _replay(body, receive), send)
            return
        state, request, api_key_name = parsed
        scope["route"] = _SendTemplate
        try:
            answer = await state.send_service.send(
                request, api_key_name=api_key_name, idempotency_key=head[2]
            )
        except AppError as exc:
            await error_response(exc.status, exc.code, exc.detail, exc.headers)(
                scope, receive, send
            )
            return
        except Exception as exc:
            await unexpected_error_response(exc)(scope, receive, send)
            return
        scope[LOG_FIELDS] = answer.log_fields
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


_Head = tuple[bytes, bytes, str | None]  # authorization, content-length, Idempotency-Key


def _head(scope: Scope) -> _Head | None:
    """The headers the fast path needs, or None if the route should see this request."""
    # The first of repeated headers, as Starlette's `headers.get` reads them for the route.
    authorization = length = key = content_type = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = authorization or value
        elif name == b"content-type":
            content_type = content_type or value
        elif name == b"content-length":
            length = length or value
        elif name == b"idempotency-key" and key is None:
            if not _IDEMPOTENCY_KEY.fullmatch(value):
                return None
            key = value.decode("ascii")
    if authorization is None or length is None or content_type is None:
        return None
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        return None
    return authorization, length, key


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(scope: Scope, head: _Head, body: bytes) -> tuple[State, SendRequest, str] | None:
    """The state, the request and the caller's key name; None when the route should answer."""
    state: State | None = scope.get("state", {}).get("relay")
    if state is None:
        return None
    try:
        api_key_name = caller_name(state.settings, head[0].decode("latin-1"))
    except AppError:
        return None
    try:
        request = SendRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return state, request, api_key_name


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then whatever comes next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
