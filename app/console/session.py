"""Console sign-in state: a signed cookie session and CSRF tokens.

- The session is a cookie signed with `Settings.console_signing_key` (itsdangerous: HMAC-SHA1
  over a timestamped payload), HttpOnly, SameSite=Lax, Path=/console, at most 12 hours old
  (checked on the signature's timestamp, not only by the browser's Max-Age). It holds a random
  nonce, and once signed in the API key's name and a fingerprint of its digest: a key removed
  from API_KEYS, or given a new secret under the same name, ends its sessions at once.
- Nothing is kept on the server: a sign-out clears the cookie in that browser. A copied cookie
  stays valid until its 12 hours are up or CONSOLE_SECRET changes.
- A visitor gets an anonymous session (a nonce, no name) on the sign-in page, so the sign-in
  form carries a CSRF token too; signing in issues a new nonce (no session fixation).
- CSRF token = HMAC(signing key, nonce): a form posted from another site has neither the
  cookie (SameSite) nor the token; a failed check is a 403 and changes nothing.
- Failed sign-ins are slowed per client address, in the database (`throttle.py`).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from app.config import Settings, hash_api_key

COOKIE = "relay_console"
COOKIE_PATH = "/console"
SESSION_MAX_AGE_S = 12 * 3600


@dataclass(frozen=True)
class ConsoleSession:
    nonce: str
    key_name: str | None = None  # None: not signed in
    fingerprint: str | None = None


class Sessions:
    """Reads and writes console session cookies for one app (one signing key)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._key = settings.console_signing_key
        self._serializer = URLSafeTimedSerializer(self._key, salt="console-session")
        self._secure_only = settings.public_base_url.startswith("https://")

    def read(self, request: Request) -> ConsoleSession | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:  # also SignatureExpired, a subclass
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        session = ConsoleSession(data["n"], data.get("k"), data.get("f"))
        if session.key_name is not None and not self._key_still_valid(session):
            return ConsoleSession(session.nonce)  # signed out by a change of API_KEYS
        return session

    def anonymous(self) -> ConsoleSession:
        return ConsoleSession(secrets.token_urlsafe(16))

    def sign_in(self, api_key: str) -> ConsoleSession | None:
        """A new session for this API key, or None when it matches no API_KEYS entry."""
        # Looked up by its sha256 digest, as app/deps.py checks a bearer key.
        digest = hash_api_key(api_key)
        name = self._settings.api_key_hashes.get(digest)
        if name is None:
            return None
        return ConsoleSession(secrets.token_urlsafe(16), name, self._fingerprint(digest))

    def csrf_token(self, session: ConsoleSession) -> str:
        return hmac.digest(self._key, b"csrf\x00" + session.nonce.encode(), "sha256").hex()

    def csrf_ok(self, session: ConsoleSession | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session).encode(), token.encode())

    def store(self, response: Response, request: Request, session: ConsoleSession) -> None:
        data: dict[str, str] = {"n": session.nonce}
        if session.key_name is not None and session.fingerprint is not None:
            data |= {"k": session.key_name, "f": session.fingerprint}
        response.set_cookie(
            COOKIE,
            self._serializer.dumps(data),
            max_age=SESSION_MAX_AGE_S,
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",
            # Behind a TLS proxy the request itself may be plain HTTP: PUBLIC_BASE_URL says.
            secure=self._secure_only or request.url.scheme == "https",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")

    def _fingerprint(self, digest: str) -> str:
        return hmac.digest(self._key, b"key\x00" + digest.encode(), "sha256").hex()[:32]

    def _key_still_valid(self, session: ConsoleSession) -> bool:
        return any(
            name == session.key_name
            and hmac.compare_digest(self._fingerprint(digest), session.fingerprint or "")
            for digest, name in self._settings.api_key_hashes.items()
        )
