"""The errors a request can end in, each with its HTTP status and a stable ``code``.

Every error answer has one shape::

    {"error": {"status": 413, "code": "too_large", "message": "...", "stage": "decode"}}

``stage`` says where the request was (``admit``, ``read``, ``decode``, ``queue``, ``infer``)
when it ended; ``code`` is what clients switch on, ``message`` is for people.
"""

from __future__ import annotations

from typing import Any

from danlu.errors import ServeError


class RequestProblem(ServeError):
    """A request that cannot be answered with detections.

    Args:
        status: the HTTP status (4xx: the request; 5xx: the service).
        code: a stable machine-readable name (``too_large``, ``unsupported_format``...).
        message: one line for a person.
        stage: where the request was when it ended.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, code: str, message: str, *, stage: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.stage = stage
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        doc: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.stage:
            doc["stage"] = self.stage
        return {"error": doc}


def bad_option(message: str) -> RequestProblem:
    return RequestProblem(422, "bad_option", message, stage="admit")


def overloaded(retry_after_s: float, *, draining: bool = False) -> RequestProblem:
    """503 with ``Retry-After`` (whole seconds, at least 1)."""
    after = str(max(1, round(retry_after_s)))
    if draining:
        return RequestProblem(503, "draining", "the service is shutting down; retry on another "
                              "instance", stage="admit", headers={"Retry-After": after})
    return RequestProblem(503, "overloaded", "the queue is full; retry later", stage="admit",
                          headers={"Retry-After": after})


def deadline(stage: str, timeout_s: float) -> RequestProblem:
    return RequestProblem(504, "deadline", f"no answer within the {timeout_s:g} s deadline "
                          f"(the request was in its {stage} stage)", stage=stage)


__all__ = ["RequestProblem", "bad_option", "overloaded", "deadline"]
