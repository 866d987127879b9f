"""Who runs what, when and where: global limits acquired per phase, priority then FIFO order,
and placement of each guest on the worker with the most free capacity.

Limits are held per phase, not per guest: a guest holds a conversion slot (and its appliance's
memory) only while converting and copy streams only while copying, so guest B converts while
guest A copies. The per-source-host limit is held from open to close: the source is read the
whole time."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from v2v.coordinator.clients import ServiceAddresses
from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Fleet-wide limits; 0 = no limit. Worker capacities bound each worker on top of these."""

    per_source_host: int = 0  # guests reading from one source host at once (Forklift's MAX_VM_INFLIGHT)
    appliance_memory: int = 2 * GiB  # what one conversion's appliance costs of a worker's memory budget


@dataclass(frozen=True)
class Worker:
    """Four phase services sharing one work-directory root, and what they may run at once."""

    name: str
    addresses: ServiceAddresses
    workdir_root: Path | None = None
    conversions: int = 2  # appliances at once (each a core and memory)
    copy_streams: int = 4  # disks copied at once
    memory: int = 0  # bytes of appliance memory; 0 = unlimited


class Ticket:
    """One guest's claim on the scheduler: its rank, where it was placed, and a way to stop waiting."""

    def __init__(self, guest: str, priority: int, seq: int, host: str) -> None:
        self.guest = guest
        self.priority = priority
        self.seq = seq
        self.host = host
        self.worker: Worker | None = None
        self.cancelled = threading.Event()

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


@dataclass
class _Request:
    ticket: Ticket
    demand: dict[tuple[str, str], int]  # (resource, worker or host) -> amount
    seq: int = field(default=0)

    @property
    def rank(self) -> tuple[int, int, int]:
        return (*self.ticket.rank, self.seq)


class Scheduler:
    """Grants a request when all it asks for is free and no better-ranked waiting request asks for
    any of the same resources: priority first, then submission order, and a big request (a guest
    with many disks) is never starved by a stream of small ones."""

    def __init__(self, workers: list[Worker], limits: Limits | None = None) -> None:
        if not workers:
            raise ValueError("the scheduler needs at least one worker")
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must differ: {', '.join(names)}")
        self.workers = {w.name: w for w in workers}
        self.limits = limits or Limits()
        self._used: dict[tuple[str, str], int] = {}
        self._placed: dict[str, int] = dict.fromkeys(self.workers, 0)
        self._waiting: list[_Request] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()

    def ticket(self, guest: str, priority: int, host: str, order: int | None = None) -> Ticket:
        """`order`: the guest's place in line (its submission order, kept across restarts)."""
        return Ticket(guest, priority, next(self._seq) if order is None else order, host)

    def _capacity(self, key: tuple[str, str]) -> int:
        kind, name = key
        if kind == "host":
            return self.limits.per_source_host
        worker = self.workers[name]
        return {"convert": worker.conversions, "copy": worker.copy_streams, "memory": worker.memory}[kind]

    def _fits(self, req: _Request) -> bool:
        for key, amount in req.demand.items():
            cap = self._capacity(key)
            if cap and self._used.get(key, 0) + amount > cap:
                return False
        return not any(other.rank < req.rank and other.demand.keys() & req.demand.keys() for other in self._waiting)

    def _clip(self, demand: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """A demand no bigger than its capacity, so it can always be granted once the others are done."""
        return {k: min(v, self._capacity(k)) if self._capacity(k) else v for k, v in demand.items()}

    @contextmanager
    def _hold(self, ticket: Ticket, demand: dict[tuple[str, str], int]) -> Iterator[dict[tuple[str, str], int]]:
        req = _Request(ticket, self._clip(demand), next(self._seq))
        with self._cv:
            self._waiting.append(req)
            try:
                while not self._fits(req):
                    if ticket.cancelled.is_set():
                        raise V2VError("cancelled while queued", pb.ERROR_CODE_CANCELLED, guest=ticket.guest)
                    self._cv.wait(timeout=1.0)
            finally:
                self._waiting.remove(req)
                self._cv.notify_all()  # who waited behind this request may go now
            for key, amount in req.demand.items():
                self._used[key] = self._used.get(key, 0) + amount
        try:
            yield req.demand
        finally:
            with self._cv:
                for key, amount in req.demand.items():
                    self._used[key] -= amount
                self._cv.notify_all()

    @contextmanager
    def admitted(self, ticket: Ticket) -> Iterator[Worker]:
        """The guest's whole run: waits for its source host, then places it on a worker."""
        with self._hold(ticket, {("host", ticket.host): 1}):
            with self._cv:
                worker = ticket.worker or self._least_loaded()
                ticket.worker = worker
                self._placed[worker.name] += 1
            try:
                yield worker
            finally:
                with self._cv:
                    self._placed[worker.name] -= 1
                    self._cv.notify_all()

    def _least_loaded(self) -> Worker:
        """The worker with the most free capacity: fewest placed guests per conversion slot, then
        fewest copy streams in use per stream; ties go to the first configured."""
        def load(w: Worker) -> tuple[float, float]:
            return (self._placed[w.name] / max(w.conversions, 1),
                    self._used.get(("copy", w.name), 0) / max(w.copy_streams, 1))
        return min(self.workers.values(), key=load)

    @contextmanager
    def converting(self, ticket: Ticket) -> Iterator[None]:
        """A conversion slot and the appliance's memory on the guest's worker."""
        assert ticket.worker is not None, "converting before admitted"
        demand = {("convert", ticket.worker.name): 1}
        if ticket.worker.memory:
            demand[("memory", ticket.worker.name)] = self.limits.appliance_memory
        with self._hold(ticket, demand):
            yield

    @contextmanager
    def copying(self, ticket: Ticket, disks: int) -> Iterator[int]:
        """Copy streams for the guest's disks (at most the worker's); yields how many were granted:
        the copier copies that many disks at once."""
        assert ticket.worker is not None, "copying before admitted"
        with self._hold(ticket, {("copy", ticket.worker.name): max(disks, 1)}) as granted:
            yield granted[("copy", ticket.worker.name)]

    def in_use(self) -> dict[tuple[str, str], int]:
        with self._cv:
            return {k: v for k, v in self._used.items() if v}

    def wake(self) -> None:
        """Lets waiters notice a cancellation now rather than at their next poll."""
        with self._cv:
            self._cv.notify_all()


class TicketGates:
    """The pipeline's view of the scheduler for one guest (pipeline.Gates)."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket) -> None:
        self.scheduler = scheduler
        self.ticket = ticket

    def converting(self) -> AbstractContextManager[None]:
        return self.scheduler.converting(self.ticket)

    def copying(self, disks: int) -> AbstractContextManager[int]:
        return self.scheduler.copying(self.ticket, disks)
