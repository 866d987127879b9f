"""Running the services: one per process (`v2v serve NAME`), or all in this process (embedded)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from v2v.coordinator.clients import SERVICES, PhaseClients, ServiceAddresses
from v2v.grpcserver import serve

SHUTDOWN_GRACE = 5.0


def phase_servicer(name: str) -> tuple[Any, Callable[[Any, grpc.Server], None], str]:
    """(servicer, add-to-server function, full service name) of a phase service. Imported here,
    so a process serving only `copier` never loads libguestfs."""
    if name == "input":
        from v2v.services.input.service import InputService
        from v2v.v1 import input_pb2_grpc as m

        return InputService(), m.add_InputServicer_to_server, "v2v.v1.Input"
    if name == "convert":
        from v2v.services.convert.service import ConvertService
        from v2v.v1 import convert_pb2_grpc as m

        return ConvertService(), m.add_ConvertServicer_to_server, "v2v.v1.Convert"
    if name == "output":
        from v2v.services.output.service import OutputService
        from v2v.v1 import output_pb2_grpc as m

        return OutputService(), m.add_OutputServicer_to_server, "v2v.v1.Output"
    if name == "copier":
        from v2v.services.copier.service import CopierService
        from v2v.v1 import copier_pb2_grpc as m

        return CopierService(), m.add_CopierServicer_to_server, "v2v.v1.Copier"
    raise ValueError(f"unknown service {name!r} (services: {', '.join(SERVICES)}, coordinator)")


def coordinator_servicer(addresses: ServiceAddresses,
                         workdir_root: Path | None = None) -> tuple[Any, Callable[[Any, grpc.Server], None], str]:
    from v2v.coordinator.service import CoordinatorService
    from v2v.v1 import coordinator_pb2_grpc as m

    return (CoordinatorService(PhaseClients(addresses), workdir_root), m.add_CoordinatorServicer_to_server,
            "v2v.v1.Coordinator")


class RunningService:
    """A started gRPC server and its servicer; stopping it also stops what the servicer owns."""

    def __init__(self, address: str, spec: tuple[Any, Callable[[Any, grpc.Server], None], str]) -> None:
        self.address = address
        self.servicer = spec[0]
        self.server = serve(address, [spec])

    def stop(self) -> None:
        self.server.stop(SHUTDOWN_GRACE).wait()
        shutdown = getattr(self.servicer, "shutdown", None)
        if shutdown:
            shutdown()


class EmbeddedServices:
    """All five services in this process on private Unix sockets: the CLI with no services
    configured. The same gRPC code path as separate processes, nothing to set up."""

    def __init__(self, workdir_root: Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="v2v-svc.")
        self.workdir_root = workdir_root
        self.services: list[RunningService] = []

    def start(self) -> str:
        """Starts the services; returns the coordinator's address."""
        base = Path(self._dir.name)
        addrs = {name: f"unix:{base / name}.sock" for name in (*SERVICES, "coordinator")}
        for name in SERVICES:
            self.services.append(RunningService(addrs[name], phase_servicer(name)))
        addresses = ServiceAddresses(**{n: addrs[n] for n in SERVICES})
        self.services.append(RunningService(addrs["coordinator"], coordinator_servicer(addresses, self.workdir_root)))
        return addrs["coordinator"]

    def stop(self) -> None:
        # Coordinator first: it cancels its guests, which still need the phase services to clean up.
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()
        self._dir.cleanup()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
