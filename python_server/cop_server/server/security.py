"""Who may call, what the server may read, where it may listen.

* **Token**: when the server has one, every call (the Cop service, health checking and reflection
  alike) must carry the metadata ``authorization: Bearer <token>``; anything else is
  UNAUTHENTICATED before the method runs. Tokens are compared in constant time.
* **Slide roots**: a server path is resolved (``..`` folded, every symbolic link followed) before
  it is compared with the resolved ``--slide-root`` folders, so neither ``..`` nor a link inside a
  root can reach a file outside it. A path outside the roots is PERMISSION_DENIED whether or not
  it exists (the server does not tell what exists elsewhere); a missing path inside is NOT_FOUND.
* **Bind**: the server listens on loopback unless told otherwise; any other address needs a token
  or TLS, because anyone who can reach the port could otherwise run the model and read slides.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from cop_server.errors import InputError
from cop_server.server.errors import ServiceError

log = logging.getLogger("cop.server")

AUTH_HEADER = "authorization"
BEARER = "Bearer "


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); names other than localhost are not trusted."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, tls: bool) -> list[str]:
    """Refuse an exposed address without protection; the warnings returned are for the log."""
    if is_loopback(host):
        return []
    if not token and not tls:
        raise InputError(
            f"refusing to listen on {host}: it is not a loopback address, and without --token or TLS "
            "(--tls-cert/--tls-key) anyone who can reach this port could run the model and read the slides under "
            "--slide-root. Give --token (and preferably TLS), or listen on 127.0.0.1 and tunnel (ssh -L)."
        )
    if token and not tls:
        return [f"listening on {host} with a token but without TLS: the token and the pixels cross the network "
                "in clear; add --tls-cert/--tls-key unless the network is trusted"]
    return []


# -- slide roots ---------------------------------------------------------------------------------
class SlideRoots:
    """The folders the server may read slides from (none: it reads no files)."""

    def __init__(self, roots: Sequence[str | Path]) -> None:
        resolved = []
        for r in roots:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise InputError(f"--slide-root {r} is not a folder")
            resolved.append(p.resolve(strict=True))
        self.roots: list[Path] = resolved

    def __bool__(self) -> bool:
        return bool(self.roots)

    def _inside(self, p: Path) -> bool:
        return any(p == r or p.is_relative_to(r) for r in self.roots)

    def resolve(self, requested: str) -> Path:
        """The real file a client's path names, if it is inside a root; else a ServiceError.

        Relative paths are taken relative to each root in turn; absolute paths as they are.
        """
        if not self.roots:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               "this server reads no files (it was started without --slide-root): send the pixels "
                               "(client_pixels) or restart it with --slide-root FOLDER")
        if not requested or "\x00" in requested:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "server_path.path is empty or holds a NUL character")
        path = Path(requested)
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        missing: Path | None = None
        for cand in candidates:
            try:
                real = cand.resolve(strict=False)  # folds "..", follows every existing link
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot resolve {requested}: {exc}") from None
            if not self._inside(real):
                continue
            if real.exists():
                return real
            missing = missing or real
        if missing is not None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"slide not found: {requested} (looked under --slide-root "
                                                          f"{', '.join(map(str, self.roots))})")
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                           f"{requested} is outside the folders this server may read (--slide-root "
                           f"{', '.join(map(str, self.roots))}); '..' and symbolic links are resolved before this check")


# -- interceptors ----------------------------------------------------------------------------------
def _handler_like(handler: grpc.RpcMethodHandler, behaviour: Callable[[Any, grpc.ServicerContext], Any]):
    """A method handler of the same cardinality as ``handler`` whose behaviour is ``behaviour``."""
    kind = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse every call without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = (BEARER + token).encode("utf-8")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == AUTH_HEADER:
                given = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if hmac.compare_digest(given.encode("utf-8"), self._expected):
            return handler
        reason = "no token given" if not given else "wrong token"
        method = handler_call_details.method

        def deny(request_or_iterator, context: grpc.ServicerContext):
            log.info("%s peer=%s outcome=UNAUTHENTICATED (%s)", method, context.peer(), reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"{reason}: this server needs the metadata '{AUTH_HEADER}: Bearer <token>' (the --token it "
                          "was started with) on every call")

        return _handler_like(handler, deny)


class AccessLogInterceptor(grpc.ServerInterceptor):
    """One log line per call of the services that do not log themselves (health, reflection).

    Unary calls are timed with their outcome; streams (health Watch, reflection) are logged when
    they open, and left unwrapped: the health servicer's non-blocking Watch relies on attributes of
    its own method that a wrapper would hide.
    """

    def __init__(self, skip_prefix: str) -> None:
        self._skip = skip_prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._skip):
            return handler
        if handler.request_streaming or handler.response_streaming:
            log.info("%s stream opened", method)
            return handler
        inner = handler.unary_unary

        def behaviour(request, context: grpc.ServicerContext):
            t0 = time.perf_counter()
            outcome = "OK"
            try:
                return inner(request, context)
            except BaseException as exc:
                code = context.code()
                outcome = code.name if code is not None else f"ERROR ({type(exc).__name__})"
                raise
            finally:
                log.info("%s peer=%s outcome=%s total=%.3fs", method, context.peer(), outcome, time.perf_counter() - t0)

        return _handler_like(handler, behaviour)
