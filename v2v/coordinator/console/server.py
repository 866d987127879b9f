"""The console's listener: uvicorn in a thread of the coordinator's process, beside its gRPC server,
over the same CoordinatorService. On TCP it is guarded as the gRPC side is: mutual TLS with the
same CA and certificates (`v2v certs`), or, without TLS, the token it prints; plaintext on an
address other than loopback only when asked (`insecure`)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn

from v2v.coordinator.console.access import TokenGate, new_token
from v2v.coordinator.console.app import ReadPlan, console_app
from v2v.coordinator.console.board import FleetBoard
from v2v.errors import V2VError
from v2v.tls import TLSFiles
from v2v.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from v2v.coordinator.service import CoordinatorService


@dataclass(frozen=True)
class ConsoleOptions:
    """`--http HOST:PORT` (port 0: any free one) and how it is guarded."""

    address: str
    tls: TLSFiles | None = None  # mutual TLS: a client certificate of this CA; None: the token
    insecure: bool = False  # plaintext on a non-loopback address (still behind the token)
    read_only: bool = False  # no actions: the pages show none and the server refuses them (403)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise V2VError(f"--http {address}: expected HOST:PORT", pb.ERROR_CODE_BAD_INPUT)
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """The console of `service` while the context lasts: listening once entered (the socket bound
    before the thread starts, so the address is good at once), stopped and joined on exit."""

    def __init__(self, service: CoordinatorService, options: ConsoleOptions, read_plan: ReadPlan | None = None) -> None:
        host, port = _host_port(options.address)
        if options.tls is None and not is_loopback(host) and not options.insecure:
            raise V2VError(f"refusing to serve the console on {options.address} without TLS: give --tls-dir DIR "
                           "(made by `v2v certs DIR`), a loopback address, or, on a network you trust, --insecure",
                           pb.ERROR_CODE_BAD_INPUT)
        self.options = options
        self.token = "" if options.tls else new_token()
        self.board = FleetBoard(service)
        app = console_app(service, self.board, read_plan, options.read_only)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise V2VError(f"cannot listen on {options.address}: {exc.strerror}",
                           pb.ERROR_CODE_SERVICE_UNAVAILABLE) from None
        self.host, self.port = host, self._socket.getsockname()[1]
        tls = options.tls
        config = uvicorn.Config(TokenGate(app, self.token) if self.token else app, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=1,
                                ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
                                ssl_ca_certs=str(tls.ca) if tls else None,
                                ssl_cert_reqs=ssl.CERT_REQUIRED if tls else ssl.CERT_NONE)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open: with the token, for a plaintext console."""
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.options.tls else "http"
        return f"{scheme}://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def __enter__(self) -> ConsoleServer:
        self._socket.listen(128)
        self.board.start()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="console-http", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.board.stop()  # first: its streams end, so that the server's shutdown has none to cut
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._socket.close()
