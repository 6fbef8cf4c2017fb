"""The app's one error shape, and the error a deployment raises for a bad request."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class RequestError(Exception):
    """The request cannot be served as asked: `status` (4xx) and a message naming the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict | None = None, **extra: Any) -> JSONResponse:
    """The one error body every route and middleware answers with (OpenAI's shape)."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, **extra}},
                        status_code=status, headers=headers)
