"""Serving and calling the v2v services: one listen/dial syntax, health, reflection, errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from v2v.errors import V2VError, to_status
from v2v.v1 import types_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

# Disk copies and conversions are long; keepalives keep idle streams from being cut by proxies.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def target(address: str) -> str:
    """`unix:PATH`, `unix:///PATH`, `HOST:PORT` or a bare path -> a gRPC target."""
    if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    if address.startswith("/"):
        return f"unix:{address}"
    return address


def serve(address: str, services: list[tuple[Any, Callable[[Any, grpc.Server], None], str]],
          max_workers: int = 32) -> grpc.Server:
    """Starts a server on `address` for (servicer, add_fn, full service name) triples, with
    grpc.health.v1 and server reflection. Unix sockets are made 0600."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=_CHANNEL_OPTIONS)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    for servicer, add_fn, name in services:
        add_fn(servicer, server)
        names.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    tgt = target(address)
    sock_path = tgt.removeprefix("unix://").removeprefix("unix:") if tgt.startswith("unix:") else None
    if sock_path:
        Path(sock_path).unlink(missing_ok=True)
    if server.add_insecure_port(tgt) == 0 and not sock_path:
        raise V2VError(f"cannot listen on {address}", pb.ERROR_CODE_SERVICE_UNAVAILABLE)
    server.start()
    if sock_path:
        os.chmod(sock_path, 0o600)
    return server


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(target(address), options=_CHANNEL_OPTIONS)


def wait_ready(ch: grpc.Channel, what: str, timeout: float = 10.0) -> None:
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise V2VError(f"the {what} service is not reachable", pb.ERROR_CODE_SERVICE_UNAVAILABLE) from None


def rpc(fn: F) -> F:
    """Wraps a unary servicer method: a V2VError becomes a status carrying the Error detail."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except V2VError as err:
            context.abort_with_status(to_status(err))

    return wrapper  # type: ignore[return-value]


def stream_rpc(fn: F) -> F:
    """As `rpc`, for server-streaming methods."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except V2VError as err:
            context.abort_with_status(to_status(err))

    return wrapper  # type: ignore[return-value]
