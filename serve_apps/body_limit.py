"""A body-size limit on what arrives, not on what the client declares: a body over the app's
`max_body_bytes` gets 413 whether it comes with a Content-Length or in chunks without one."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_apps.errors import error_response


def too_large(limit: int) -> str:
    return f"body over {limit} bytes; send smaller batches"


class BodyLimit:
    """ASGI middleware reading the limit from `app.state.max_body_bytes` at each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = scope["app"].state.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await error_response(413, too_large(limit))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # FastAPI passes this on from its body reader: a 413
                raise HTTPException(413, too_large(limit))
            return message

        await self.app(scope, counted, send)
