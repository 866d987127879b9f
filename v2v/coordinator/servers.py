"""Running the services: one per process (`v2v serve NAME`), or all in this process (embedded),
and the coordinator's configuration: its workers, limits, state and metrics."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from v2v.coordinator.clients import OPTIONAL_SERVICES, SERVICES, ServiceAddresses
from v2v.coordinator.scheduler import Limits, Worker
from v2v.grpcserver import RunningService
from v2v.services.servicers import phase_servicer
from v2v.units import parse_size
from v2v.workdir import default_root


def parse_worker(text: str, defaults: Worker) -> Worker:
    """A worker from `NAME=input@ADDR,convert@ADDR,output@ADDR,copier@ADDR[,verify@ADDR][,conversions=N]
    [,copy-streams=N][,memory=SIZE][,guests=N][,workdir-root=PATH]` (docs/fleet.md); unset
    capacities from `defaults`."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--worker {text}: expected NAME=input@ADDR,convert@ADDR,output@ADDR,copier@ADDR")
    addrs: dict[str, str] = {}
    caps: dict[str, str] = {}
    for item in rest.split(","):
        if "@" in item and item.partition("@")[0] in (*SERVICES, *OPTIONAL_SERVICES):
            service, _, addr = item.partition("@")
            addrs[service] = addr
            continue
        key, eq, value = item.partition("=")
        if not eq or key not in ("conversions", "copy-streams", "memory", "guests", "workdir-root"):
            raise ValueError(f"--worker {name}: unknown item {item!r} (SERVICE@ADDR, conversions=N, copy-streams=N, "
                             "memory=SIZE, guests=N, workdir-root=PATH)")
        caps[key] = value
    missing = [s for s in SERVICES if s not in addrs]
    if missing:
        raise ValueError(f"--worker {name}: no address for {', '.join(missing)}")
    return replace(defaults, name=name, addresses=ServiceAddresses(**addrs),
                   conversions=int(caps.get("conversions", defaults.conversions)),
                   copy_streams=int(caps.get("copy-streams", defaults.copy_streams)),
                   memory=parse_size(caps["memory"]) if "memory" in caps else defaults.memory,
                   guests=int(caps.get("guests", defaults.guests)),
                   workdir_root=Path(caps["workdir-root"]) if "workdir-root" in caps else defaults.workdir_root)


@dataclass
class CoordinatorConfig:
    """Everything a coordinator runs with (`v2v serve coordinator` options, docs/fleet.md)."""

    workers: list[Worker]
    limits: Limits = field(default_factory=Limits)
    state: Path | None = None  # None: <first worker's work-directory root>/coordinator.db
    metrics: str = ""  # HOST:PORT of the Prometheus endpoint; "" = none
    embedded: PhaseWorkers | None = None  # phase services in this process, stopped with the coordinator
    # A guest failing after its conversion keeps it for Retry(from "setup"): for a long-lived
    # coordinator, not for one command's run.
    keep_converted: bool = False


def coordinator_servicer(config: CoordinatorConfig) -> tuple[Any, Callable[[Any, grpc.Server], None], str]:
    from v2v.coordinator.metrics import FleetMetrics
    from v2v.coordinator.scheduler import Scheduler
    from v2v.coordinator.service import CoordinatorService
    from v2v.coordinator.state import State
    from v2v.v1 import coordinator_pb2_grpc as m

    state = State(config.state or (config.workers[0].workdir_root or default_root()) / "coordinator.db")
    metrics = None
    if config.metrics:
        metrics = FleetMetrics()
        metrics.serve(config.metrics)
    return (CoordinatorService(Scheduler(config.workers, config.limits), state, metrics,
                               keep_converted=config.keep_converted,
                               after_shutdown=config.embedded.stop if config.embedded else None),
            m.add_CoordinatorServicer_to_server, "v2v.v1.Coordinator")


class PhaseWorkers:
    """`count` sets of the four phase services in this process on private Unix sockets, each set a
    worker (capacities from `template`), all under one work-directory root."""

    def __init__(self, count: int = 1, template: Worker | None = None, workdir_root: Path | None = None) -> None:
        self.count = count
        self.template = template
        self.workdir_root = workdir_root
        self.services: list[RunningService] = []
        self._dir = tempfile.TemporaryDirectory(prefix="v2v-svc.")
        self.dir = Path(self._dir.name)

    def start(self) -> list[Worker]:
        workers = []
        for n in range(self.count):
            name = f"local{n}" if self.count > 1 else "local"
            started = (*SERVICES, *OPTIONAL_SERVICES)
            addresses = ServiceAddresses(**{s: f"unix:{self.dir / name}-{s}.sock" for s in started})
            template = self.template or Worker(name, addresses)
            root = template.workdir_root or self.workdir_root
            for s in started:
                self.services.append(RunningService(getattr(addresses, s), phase_servicer(s, root)))
            workers.append(replace(template, name=name, addresses=addresses, workdir_root=root))
        return workers

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()
        self._dir.cleanup()


class EmbeddedServices:
    """All the services in this process on private Unix sockets: the CLI with no services
    configured. The same gRPC code path as separate processes, nothing to set up. One worker
    unless told (tests place guests on two); the coordinator's state is private to this run unless
    `state` names a database."""

    def __init__(self, workdir_root: Path | None = None, workers: int = 1, worker: Worker | None = None,
                 limits: Limits | None = None, state: Path | None = None, metrics: str = "") -> None:
        self.phases = PhaseWorkers(workers, worker, workdir_root)
        self.limits = limits or Limits()
        self.state = state
        self.metrics = metrics
        self.running: RunningService | None = None

    def start(self) -> str:
        """Starts the services; returns the coordinator's address."""
        config = CoordinatorConfig(self.phases.start(), self.limits, self.state or self.phases.dir / "coordinator.db",
                                   self.metrics, embedded=self.phases)
        address = f"unix:{self.phases.dir / 'coordinator.sock'}"
        self.running = RunningService(address, coordinator_servicer(config))
        return address

    @property
    def coordinator(self) -> Any:
        """The CoordinatorService (for tests and in-process callers)."""
        assert self.running is not None
        return self.running.servicer

    def stop(self) -> None:
        # The coordinator first: it cancels its guests, which still need the phase services to clean
        # up; it stops them last.
        if self.running is not None:
            self.running.stop()
            self.running = None
        else:
            self.phases.stop()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def state_view(path: Path) -> Iterator[str]:
    """A read-only Coordinator (StateView: List, Status, Logs) over the state database at `path`, on
    a private Unix socket; yields its address. What `v2v status` and `v2v logs` ask with no
    coordinator named: the same calls as to a running one, and nothing resumed by asking."""
    from v2v.coordinator.state import State
    from v2v.coordinator.view import StateView
    from v2v.v1 import coordinator_pb2_grpc as m

    with tempfile.TemporaryDirectory(prefix="v2v-view.") as d:
        address = f"unix:{d}/coordinator.sock"
        running = RunningService(address, (StateView(State(path)), m.add_CoordinatorServicer_to_server,
                                           "v2v.v1.Coordinator"))
        try:
            yield address
        finally:
            running.stop()
