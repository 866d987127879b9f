"""Serving and calling the v2v services: one listen/dial syntax, health, reflection, errors."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from v2v.errors import V2VError, internal_status, to_status
from v2v.requests import check_request
from v2v.tls import TLSFiles
from v2v.v1 import types_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])
_LOG = logging.getLogger("v2v.grpc")

# Disk copies and conversions are long; keepalives keep idle streams from being cut by proxies.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Servers accept those keepalives on a quiet stream (an appliance launch can send nothing for
# minutes): by default a server allows one ping in 5 min without data and, after two more, ends the
# connection with "too_many_pings".
_SERVER_OPTIONS = [
    *_CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def target(address: str) -> str:
    """`unix:PATH`, `unix:///PATH`, `HOST:PORT` or a bare path -> a gRPC target."""
    if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    if address.startswith("/"):
        return f"unix:{address}"
    return address


def unix_socket_path(address: str) -> str | None:
    """The socket's path of a `unix:` address, None for TCP."""
    tgt = target(address)
    return tgt.removeprefix("unix://").removeprefix("unix:") if tgt.startswith("unix:") else None


def _listen_unix(server: grpc.Server, path: str) -> None:
    """Binds a socket only its owner can open: 0600, in a 0700 directory when serve() makes it (an
    existing directory, such as a shared volume's, keeps its mode). The umask closes the window
    between bind and chmod."""
    directory = Path(path).parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    Path(path).unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(old_umask)


# A sync gRPC server gives each call a thread for its whole life. Watchers (Watch, Follow) may stay
# for days, so they get at most MAX_STREAMS threads between them and the rest always has
# UNARY_THREADS: with one pool for all, 32 dashboards once locked out Status, Submit and Cancel.
MAX_STREAMS = 512
UNARY_THREADS = 32


class StreamSlots:
    """The watchers' share of a server's threads: a watcher beyond it is refused at once
    (RESOURCE_EXHAUSTED) rather than queued behind the others."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{what}: {self.limit} streams are open already; close one, or use List/Status")
        try:
            yield
        finally:
            self._free.release()


def serve(address: str | Sequence[str], services: list[tuple[Any, Callable[[Any, grpc.Server], None], str]],
          max_workers: int = UNARY_THREADS + MAX_STREAMS, tls: TLSFiles | None = None,
          insecure: bool = False) -> grpc.Server:
    """Starts a server on one or more addresses for (servicer, add_fn, full service name) triples,
    with grpc.health.v1 and server reflection. Unix sockets are made 0600; TCP listeners take mutual
    TLS from `tls` (else $V2V_TLS_DIR). Plaintext TCP only when asked for (`insecure`): anyone who
    reaches such a port can submit guests or delete their work, so it is never a silent default."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=_SERVER_OPTIONS)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    for servicer, add_fn, name in services:
        add_fn(servicer, server)
        names.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    addresses = [address] if isinstance(address, str) else list(address)
    sockets = []
    for addr in addresses:
        if sock_path := unix_socket_path(addr):
            _listen_unix(server, sock_path)
            sockets.append(sock_path)
            continue
        creds = tls or TLSFiles.from_env("server")
        if not creds and not insecure:
            raise V2VError(f"refusing to serve {addr} without TLS: give --tls-dir DIR (made by `v2v certs DIR`) "
                           "or, on a network you trust, --insecure", pb.ERROR_CODE_BAD_INPUT)
        port = (server.add_secure_port(addr, creds.server_credentials()) if creds
                else server.add_insecure_port(target(addr)))
        if port == 0:
            raise V2VError(f"cannot listen on {addr}", pb.ERROR_CODE_SERVICE_UNAVAILABLE)
    server.start()
    for sock_path in sockets:
        os.chmod(sock_path, 0o600)
    return server


def channel(address: str, tls: TLSFiles | None = None) -> grpc.Channel:
    """A channel to a service; TCP addresses use mutual TLS from `tls` (else $V2V_TLS_DIR) when given."""
    tgt = target(address)
    creds = None if unix_socket_path(address) else tls or TLSFiles.from_env("client")
    if creds:
        return grpc.secure_channel(tgt, creds.channel_credentials(), options=_CHANNEL_OPTIONS)
    return grpc.insecure_channel(tgt, options=_CHANNEL_OPTIONS)


def wait_ready(ch: grpc.Channel, what: str, timeout: float = 10.0) -> None:
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise V2VError(f"the {what} service is not reachable", pb.ERROR_CODE_SERVICE_UNAVAILABLE) from None


def _abort_on_bug(context: grpc.ServicerContext, exc: Exception) -> None:
    """An exception no code expected ends the call INTERNAL with its traceback, and is logged. One
    raised by the handler's own context.abort() (its status is set already) goes on as it is."""
    if context.code() is not None:  # type: ignore[attr-defined]
        raise exc
    _LOG.error("internal error: %r", exc, exc_info=exc)
    context.abort_with_status(internal_status(exc))


def rpc(fn: F) -> F:
    """Wraps a unary servicer method: a V2VError becomes a status carrying the Error detail."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            check_request(request)
            return fn(self, request, context)
        except V2VError as err:
            context.abort_with_status(to_status(err))
        except Exception as exc:
            _abort_on_bug(context, exc)

    return wrapper  # type: ignore[return-value]


def stream_rpc(fn: F) -> F:
    """As `rpc`, for server-streaming methods."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            check_request(request)
            yield from fn(self, request, context)
        except V2VError as err:
            context.abort_with_status(to_status(err))
        except Exception as exc:
            _abort_on_bug(context, exc)

    return wrapper  # type: ignore[return-value]


SHUTDOWN_GRACE = 5.0


class RunningService:
    """A started gRPC server and its servicer; stopping it also stops what the servicer owns."""

    def __init__(self, address: str | Sequence[str], spec: tuple[Any, Callable[[Any, grpc.Server], None], str],
                 tls: TLSFiles | None = None, insecure: bool = False) -> None:
        self.address = address
        self.servicer = spec[0]
        self.server = serve(address, [spec], tls=tls, insecure=insecure)

    def stop(self) -> None:
        self.server.stop(SHUTDOWN_GRACE).wait()
        shutdown = getattr(self.servicer, "shutdown", None)
        if shutdown:
            shutdown()
