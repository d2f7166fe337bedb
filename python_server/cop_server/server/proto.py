"""Python bindings for ``proto/cop/v1/cop.proto``, compiled from the .proto when first imported.

Why at import time and in memory:

* the .proto is the one contract (the Java client compiles the same file), so Python must never
  drift from it: there is no generated file in the repository to forget to regenerate, and no
  hand-edited generated code;
* it works the same from a fresh clone, an editable install and CI: the only requirement is
  ``grpcio-tools`` (a declared dependency), whose bundled ``protoc`` compiles the file in about
  25 ms into a temporary folder that is deleted at once; nothing is written to the source tree
  or to a cache that could go stale;
* the generated ``cop_pb2`` source is executed under a private module name, so no top-level
  ``cop`` package appears on ``sys.path``. The descriptors go into protobuf's default pool under
  the file name ``cop/v1/cop.proto``, the name every other protoc user sees (server reflection
  serves it from there).

The gRPC service binding is not generated either: :func:`generic_handler` and :class:`CopStub`
build it from the service descriptor of the same file (method paths, streaming flags, message
types), so a method added to the .proto is served as UNIMPLEMENTED until the servicer has it,
and nothing else needs editing.

The proto is looked for in ``$COP_PROTO_DIR`` (a folder holding ``cop/v1/cop.proto``), then in
``proto/`` of the source checkout this package runs from.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any, Callable

import grpc

PROTO_FILE = "cop/v1/cop.proto"
_MODULE_NAME = "cop_server.server._cop_pb2"
#: The minor protocol version this server implements (minor versions only add fields/messages).
PROTOCOL_MINOR = 0

_lock = threading.Lock()


def proto_dir() -> Path:
    """The folder holding ``cop/v1/cop.proto`` (``$COP_PROTO_DIR`` wins)."""
    env = os.environ.get("COP_PROTO_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [parent / "proto" for parent in here.parents]
    for c in candidates:
        if (c / PROTO_FILE).is_file():
            return c
    raise ImportError(
        f"cannot find {PROTO_FILE}: looked in {'$COP_PROTO_DIR, ' if env else ''}the proto/ folder of the "
        f"checkout above {here.parent}; set COP_PROTO_DIR to the folder that holds cop/v1/cop.proto"
    )


def _compile(root: Path) -> types.ModuleType:
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory(prefix="cop-proto-") as out:
        rc = protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", str(root / PROTO_FILE)])
        generated = Path(out) / PROTO_FILE.replace(".proto", "_pb2.py")
        if rc != 0 or not generated.is_file():
            raise ImportError(f"protoc could not compile {root / PROTO_FILE} (exit {rc}); its errors are above")
        source = generated.read_text(encoding="utf-8")
    module = types.ModuleType(_MODULE_NAME, f"generated from {PROTO_FILE}")
    module.__file__ = str(root / PROTO_FILE)
    exec(compile(source, f"<generated from {root / PROTO_FILE}>", "exec"), module.__dict__)  # noqa: S102
    sys.modules[_MODULE_NAME] = module
    return module


def _load() -> types.ModuleType:
    with _lock:
        existing = sys.modules.get(_MODULE_NAME)
        return existing if existing is not None else _compile(proto_dir())


#: The generated messages and enums: ``pb.SegmentRequest``, ``pb.PNG``, ``pb.PROTOCOL_MAJOR``, ...
pb: Any = _load()
SERVICE = pb.DESCRIPTOR.services_by_name["Cop"]
SERVICE_NAME: str = SERVICE.full_name  # "cop.v1.Cop"
PROTOCOL_MAJOR: int = int(pb.PROTOCOL_MAJOR)


def message_class(descriptor) -> type:
    """The generated class of a message descriptor of this file."""
    return getattr(pb, descriptor.name)


def method_path(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


def generic_handler(servicer: object) -> grpc.GenericRpcHandler:
    """Serve every method of the Cop service that ``servicer`` defines (by the proto's names)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        req, resp = message_class(method.input_type), message_class(method.output_type)
        kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(bool(method.client_streaming), bool(method.server_streaming))]
        handlers[method.name] = make(behaviour, request_deserializer=req.FromString,
                                     response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class CopStub:
    """Client callables for every method of the service: ``stub.GetInfo(req)``, ``stub.Segment(it)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        for method in SERVICE.methods:
            req, resp = message_class(method.input_type), message_class(method.output_type)
            factory = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(bool(method.client_streaming), bool(method.server_streaming))]
            setattr(self, method.name, factory(method_path(method.name), request_serializer=req.SerializeToString,
                                               response_deserializer=resp.FromString))


__all__ = ["pb", "SERVICE", "SERVICE_NAME", "PROTOCOL_MAJOR", "PROTOCOL_MINOR", "CopStub", "generic_handler",
           "message_class", "method_path", "proto_dir"]
