"""Exceptions that carry a gRPC outcome through the session threads to the call's status."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A failure the client is told about: a status code and a message that names the problem."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.message!r})"


class Stopped(Exception):
    """The session was stopped (client cancel, call ended, shutdown, or an error recorded elsewhere).

    Raised inside the pipeline thread to unwind it from wherever it waits; the reason is kept on
    the session, not here.
    """


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)
