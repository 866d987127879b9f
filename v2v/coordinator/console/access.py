"""Who may use a plaintext console: whoever holds the token it printed at start. A browser brings
it once in the address (`?token=`) and is given it back as a cookie (the address is then cleaned of
it); a script sends it as a bearer token. A TLS console needs none of this: the TLS layer has
already refused every client without a certificate of the CA (docs/console.md)."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "v2v_console"


def new_token() -> str:
    return secrets.token_urlsafe(24)


class TokenGate:
    """ASGI middleware: a request without the token (query, cookie or bearer) is refused (401)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    def _holds(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self._holds(request.query_params.get("token")):
            kept = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(str(URL(scope=scope).replace(query=kept)), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self._holds(request.cookies.get(COOKIE)) or self._holds(bearer or None):
            await self.app(scope, receive, send)
            return
        await PlainTextResponse("v2v console: open the address with ?token= that the coordinator printed at start, "
                                "or send it as 'Authorization: Bearer TOKEN'\n", status_code=401)(scope, receive, send)
