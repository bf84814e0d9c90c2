"""Static files with cache headers (the offline API docs' assets, the console's CSS).

Pages link each file with `?v=<version or content hash>`: such a URL never changes content, so
it may be cached for a year without revalidation; a bare URL is cached for an hour and then
revalidated (Starlette's ETag / Last-Modified answer that with a 304).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=3600"


class CachedStaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            versioned = b"v=" in scope.get("query_string", b"")
            response.headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
        return response


def content_version(path: Path) -> str:
    """A short hash of a file's content, for its `?v=` (changes whenever the file does)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
