"""Who runs what, when and where: global limits acquired per phase, priority then FIFO order,
and placement of each guest on the worker with the most free capacity.

Limits are held per phase, not per guest: a guest holds a conversion slot (and its appliance's
memory) only while converting and copy streams only while copying, so guest B converts while
guest A copies. The per-source-host limit is held from open to close: the source is read the
whole time."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterator
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
    guests: int = 0  # guests between open and close at once; 0 = twice conversions + copy streams

    @property
    def running(self) -> int:
        """How many guests it runs at once (0 = no limit): by default enough to keep every conversion
        slot and copy stream busy while as many guests again open, set up and finalize."""
        if self.guests or not (self.conversions and self.copy_streams):
            return self.guests
        return 2 * (self.conversions + self.copy_streams)


class Ticket:
    """One guest's claim on the scheduler: its rank, where it was placed, and whether it was cancelled."""

    def __init__(self, guest: str, priority: int, seq: int, host: str) -> None:
        self.guest = guest
        self.priority = priority
        self.seq = seq
        self.host = host
        self.worker: Worker | None = None
        self.cancelled = threading.Event()
        # Admission in two steps, so that a full source host does not hold up the guests of
        # another: a slot of its source host, then a place on a worker ("run").
        self.admission: _Request | None = None  # its source host's slot: asked for, or held
        self.run: _Request | None = None  # its place on a worker: asked for once it has the slot, or held

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


Key = tuple[str, str]  # (resource, worker or host)


@dataclass(eq=False)
class _Request:
    """A claim on resources, waiting in the queue of each resource it asks for until it is granted
    (`on_grant` is called) or withdrawn (`on_withdraw`)."""

    ticket: Ticket
    demand: dict[Key, int]
    seq: int
    on_grant: Callable[[], None]
    on_withdraw: Callable[[], None] = lambda: None
    granted: bool = False
    waiting: bool = field(default=True)

    @property
    def rank(self) -> tuple[int, int, int]:
        return (*self.ticket.rank, self.seq)


def _rank(req: _Request) -> tuple[int, int, int]:
    return req.rank


_RUN: Key = ("run", "")  # a place on any worker: one queue, so admissions go in rank order


class Scheduler:
    """Grants a request when all it asks for is free and no better-ranked waiting request asks for
    any of the same resources: priority first, then submission order, and a big request (a guest
    with many disks) is never starved by a stream of small ones.

    Event-driven: each resource has a queue of its waiting requests in rank order, and a request can
    only be granted when it heads the queue of every resource it asks for. So a new request, or
    capacity freed, is checked against the heads of the queues it touches and nothing else; whoever
    is granted is told (its callback runs, outside the lock); nobody polls, nobody waits on a
    condition it shares with the others. An admission's callback starts the guest's run: a queued
    guest has no thread."""

    def __init__(self, workers: list[Worker], limits: Limits | None = None) -> None:
        if not workers:
            raise ValueError("the scheduler needs at least one worker")
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must differ: {', '.join(names)}")
        self.workers = {w.name: w for w in workers}
        self.limits = limits or Limits()
        self._used: dict[Key, int] = {}
        self._placed: dict[str, int] = dict.fromkeys(self.workers, 0)
        self._queues: dict[Key, list[_Request]] = {}  # waiting requests per resource, best rank first
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def ticket(self, guest: str, priority: int, host: str, order: int | None = None) -> Ticket:
        """`order`: the guest's place in line (its submission order, kept across restarts)."""
        return Ticket(guest, priority, next(self._seq) if order is None else order, host)

    def _capacity(self, key: Key) -> int:
        kind, name = key
        if kind == "host":
            return self.limits.per_source_host
        if kind == "run":
            places = [w.running for w in self.workers.values()]
            return 0 if 0 in places else sum(places)
        worker = self.workers[name]
        return {"convert": worker.conversions, "copy": worker.copy_streams, "memory": worker.memory}[kind]

    def _clip(self, demand: dict[Key, int]) -> dict[Key, int]:
        """A demand no bigger than its capacity, so it can always be granted once the others are done."""
        return {k: min(v, self._capacity(k)) if self._capacity(k) else v for k, v in demand.items()}

    # -- the queues (the caller holds the lock) -------------------------------------------------

    def _room(self, req: _Request) -> bool:
        for key, amount in req.demand.items():
            cap = self._capacity(key)
            if cap and self._used.get(key, 0) + amount > cap:
                return False
        return req is not req.ticket.run or bool(self._free_workers(req.ticket))

    def _free_workers(self, ticket: Ticket) -> list[Worker]:
        """Where the ticket may be placed now: its own worker (a resumed run), or any with a free place."""
        return [w for w in ([ticket.worker] if ticket.worker else self.workers.values())
                if not w.running or self._placed[w.name] < w.running]

    def _dequeue(self, req: _Request) -> list[_Request]:
        """Takes `req` out of its queues; returns the requests that head a queue in its place."""
        req.waiting = False
        heads = []
        for key in req.demand:
            queue = self._queues[key]
            i = bisect.bisect_left(queue, req.rank, key=_rank)
            del queue[i]
            if queue and i == 0:
                heads.append(queue[0])
            elif not queue:
                del self._queues[key]
        return heads

    def _grant(self, candidates: list[_Request]) -> list[_Request]:
        """Grants every candidate that heads all its queues and fits, and in turn the requests that
        then head the queues it left; returns the granted, in the order granted."""
        granted = []
        while candidates:
            req = candidates.pop()
            if not req.waiting or any(self._queues[k][0] is not req for k in req.demand) or not self._room(req):
                continue
            candidates.extend(self._dequeue(req))
            for key, amount in req.demand.items():
                self._used[key] = self._used.get(key, 0) + amount
            req.granted = True
            ticket = req.ticket
            if req is ticket.admission:  # the source host's slot: now a place on a worker
                ticket.run = _Request(ticket, {_RUN: 1}, next(self._seq), req.on_grant, req.on_withdraw)
                self._enqueue(ticket.run)
                candidates.append(ticket.run)
                continue
            if req is ticket.run:
                ticket.worker = self._least_loaded(self._free_workers(ticket))
                self._placed[ticket.worker.name] += 1
            granted.append(req)
        return granted

    def _least_loaded(self, workers: list[Worker]) -> Worker:
        """The worker with the most free capacity: fewest placed guests per conversion slot, then
        fewest copy streams in use per stream; ties go to the first configured."""
        def load(w: Worker) -> tuple[float, float]:
            return (self._placed[w.name] / max(w.conversions, 1),
                    self._used.get(("copy", w.name), 0) / max(w.copy_streams, 1))
        return min(workers, key=load)

    def _enqueue(self, req: _Request) -> None:
        for key in req.demand:
            bisect.insort(self._queues.setdefault(key, []), req, key=_rank)

    def _give_back(self, req: _Request) -> list[_Request]:
        """Returns what a granted request holds; returns the requests that head its queues."""
        for key, amount in req.demand.items():
            self._used[key] -= amount
        if _RUN in req.demand:  # a place on the ticket's worker
            assert req.ticket.worker is not None
            self._placed[req.ticket.worker.name] -= 1
        return [q[0] for key in req.demand if (q := self._queues.get(key))]

    # -- requests -------------------------------------------------------------------------------

    def _request(self, req: _Request) -> None:
        """Queues `req`; it is granted at once if it can be. Refused if its ticket was cancelled."""
        with self._lock:
            if req.ticket.cancelled.is_set():
                raise V2VError("cancelled while queued", pb.ERROR_CODE_CANCELLED, guest=req.ticket.guest)
            self._enqueue(req)
            granted = self._grant([req])
        self._tell(granted)

    def _release(self, *reqs: _Request) -> None:
        with self._lock:
            granted = self._grant([head for req in reqs for head in self._give_back(req)])
        self._tell(granted)

    @staticmethod
    def _tell(granted: list[_Request]) -> None:
        for req in granted:
            req.on_grant()

    @contextmanager
    def _hold(self, ticket: Ticket, demand: dict[Key, int]) -> Iterator[dict[Key, int]]:
        """Waits (this thread, woken only by its own grant or withdrawal) for `demand`; holds it."""
        settled = threading.Event()
        req = _Request(ticket, self._clip(demand), next(self._seq), settled.set, settled.set)
        self._request(req)
        settled.wait()
        if not req.granted:
            raise V2VError("cancelled while queued", pb.ERROR_CODE_CANCELLED, guest=ticket.guest)
        try:
            yield req.demand
        finally:
            self._release(req)

    def admit(self, ticket: Ticket, start: Callable[[Worker], None],
              withdrawn: Callable[[], None] = lambda: None) -> None:
        """Queues the guest for its source host, then for a place on a worker; once admitted and
        placed, `start(worker)` is called, by this thread or by the one that freed the room: it
        should only start the guest's run, which calls `leave()` when it ends. `withdrawn`: called
        if it is cancelled while queued. A ticket is admitted once at a time."""
        assert ticket.admission is None, f"{ticket.guest} is admitted or queued already"

        def granted() -> None:
            assert ticket.worker is not None, "admitted unplaced"
            start(ticket.worker)

        ticket.admission = _Request(ticket, {("host", ticket.host): 1}, next(self._seq), granted, withdrawn)
        try:
            self._request(ticket.admission)
        except V2VError:
            ticket.admission = None
            raise

    def leave(self, ticket: Ticket) -> None:
        """The end of an admitted guest's run: its source host's slot and its place on the worker
        go to the next in line."""
        host, run = ticket.admission, ticket.run
        assert host is not None and run is not None and run.granted, f"{ticket.guest} is not admitted"
        ticket.admission = ticket.run = None
        self._release(host, run)

    @contextmanager
    def admitted(self, ticket: Ticket) -> Iterator[Worker]:
        """The guest's whole run, in this thread: waits for its source host, then places it on a worker."""
        settled = threading.Event()
        self.admit(ticket, lambda worker: settled.set(), settled.set)
        settled.wait()
        if ticket.run is None or not ticket.run.granted:
            raise V2VError("cancelled while queued", pb.ERROR_CODE_CANCELLED, guest=ticket.guest)
        assert ticket.worker is not None
        try:
            yield ticket.worker
        finally:
            self.leave(ticket)

    def cancel(self, ticket: Ticket) -> bool:
        """Cancels the ticket: what it waits for is withdrawn at once (its waiters raise CANCELLED),
        and it can ask for nothing more. True if the guest was waiting to be admitted: it never
        started (a source host's slot it held for it is given back)."""
        with self._lock:
            ticket.cancelled.set()
            withdrawn = list(dict.fromkeys(r for q in self._queues.values() for r in q if r.ticket is ticket))
            heads: list[_Request] = []
            for req in withdrawn:
                heads.extend(self._dequeue(req))
            queued = ticket.admission is not None and (ticket.run is None or not ticket.run.granted)
            if queued:
                assert ticket.admission is not None
                if ticket.admission.granted:
                    heads.extend(self._give_back(ticket.admission))
                ticket.admission = ticket.run = None
            granted = self._grant(heads)
        for req in withdrawn:
            req.on_withdraw()
        self._tell(granted)
        return queued

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

    def in_use(self) -> dict[Key, int]:
        with self._lock:
            return {k: v for k, v in self._used.items() if v}

    def queued(self) -> list[str]:
        """The guests waiting for anything, best-ranked first (each once)."""
        with self._lock:
            waiting = sorted({r for q in self._queues.values() for r in q}, key=_rank)
        return list(dict.fromkeys(r.ticket.guest for r in waiting))


class TicketGates:
    """The pipeline's view of the scheduler for one guest (pipeline.Gates)."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket) -> None:
        self.scheduler = scheduler
        self.ticket = ticket

    def converting(self) -> AbstractContextManager[None]:
        return self.scheduler.converting(self.ticket)

    def copying(self, disks: int) -> AbstractContextManager[int]:
        return self.scheduler.copying(self.ticket, disks)
