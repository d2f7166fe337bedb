"""The gRPC inference server (``cop serve``): one protocol for QuPath and scripts.

Modules: ``proto`` (bindings compiled from proto/cop/v1/cop.proto), ``service`` (the servicer and
the session pipeline), ``session`` (one call's queues and cancellation), ``remote_slide`` (a
slide whose pixels come from the client), ``worker`` (the one thread that runs the model),
``cache`` (the encoding LRU), ``security`` (token, slide roots, bind rules), ``app`` (building
and running the server), ``options`` (the ``cop serve`` arguments), ``bench`` (``cop bench-server``).
Import submodules directly; this package imports nothing heavy on purpose.
"""
