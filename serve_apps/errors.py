"""Errors a deployment raises for a bad request; the ingress turns them into 4xx answers."""

from __future__ import annotations


class RequestError(Exception):
    """The request cannot be served as asked: `status` (4xx) and a message naming the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message
