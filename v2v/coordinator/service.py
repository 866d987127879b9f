"""The Coordinator gRPC service: takes guests (one, or a plan's many), runs each under the
scheduler's limits on the worker it places it on, keeps every event for Watch/Follow, and every
step in the state database, so a restarted coordinator picks up where the last one stopped."""

from __future__ import annotations

import bisect
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import grpc

from v2v.coordinator.clients import PhaseClients
from v2v.coordinator.metrics import FleetMetrics
from v2v.coordinator.pipeline import RESUMABLE_STEPS, Converted, GuestRun, guest_name
from v2v.coordinator.scheduler import Scheduler, Ticket, TicketGates, Worker
from v2v.coordinator.state import FINAL, GuestRecord, State
from v2v.coordinator.steplogs import LogReader, StepLogs, log_records
from v2v.coordinator.view import guest_status, logged_steps, step_record
from v2v.errors import V2VError, to_status
from v2v.events import step_event
from v2v.grpcserver import StreamSlots, rpc, stream_rpc
from v2v.services.input.locations import source_host
from v2v.steps import Step
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb

GS = coordinator_pb2
_STEP_STATES = {pb.STEP_STATE_SUCCEEDED: "succeeded", pb.STEP_STATE_FAILED: "failed"}
_BYTES_SAVE_INTERVAL = 2.0  # seconds between saves of a copy's byte count: progress comes many times a second


class EventLog:
    """Every guest's events in order, each with a sequence number, for Follow to replay. Progress
    is most of a fleet's events (one a second per disk being copied) and only its latest value
    matters, so every `compact_every` progress events the ones a later progress of the same disk
    supersedes are dropped: the log grows with steps and states, not with copy time. A follower
    keeps its place by sequence number, so dropped events are simply not sent.

    Numbers start after `start`: the coordinator gives its start time in microseconds, so that a
    client's number from before a restart is below every number after it and it gets the new log
    whole (numbers grow by one an event: never near a million a second)."""

    def __init__(self, compact_every: int = 20000, start: int = 0) -> None:
        self.compact_every = compact_every
        self.last = start  # sequence number of the newest event
        self._last_of: dict[str, int] = {}  # guest id -> sequence number of its newest event
        self._events: list[tuple[int, coordinator_pb2.FleetEvent]] = []
        self._latest: dict[tuple[str, int], int] = {}  # (guest id, disk) -> sequence of its newest progress
        self._progress_since_compaction = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(self, fe: coordinator_pb2.FleetEvent) -> None:
        self.last += 1
        fe.seq = self.last
        self._last_of[fe.id] = self.last
        self._events.append((self.last, fe))
        if fe.HasField("event") and fe.event.HasField("progress"):
            self._latest[(fe.id, fe.event.progress.disk)] = self.last
            self._progress_since_compaction += 1
            if self._progress_since_compaction >= self.compact_every:
                self._compact()

    def last_of(self, gid: str) -> int:
        """The sequence number of the newest event of guest `gid` ("" = of any guest)."""
        return self.last if not gid else self._last_of.get(gid, 0)

    def after(self, seq: int) -> tuple[int, list[coordinator_pb2.FleetEvent]]:
        """The events newer than `seq`, and the sequence number of the newest."""
        i = bisect.bisect_right(self._events, seq, key=lambda e: e[0])
        return self.last, [fe for _, fe in self._events[i:]]

    def _compact(self) -> None:
        latest = set(self._latest.values())
        self._events = [(n, fe) for n, fe in self._events
                        if n in latest or not (fe.HasField("event") and fe.event.HasField("progress"))]
        self._progress_since_compaction = 0


class Guest:
    """A guest the coordinator knows: its record (as stored), its current run, its copy progress."""

    def __init__(self, rec: GuestRecord, ticket: Ticket) -> None:
        self.rec = rec
        self.ticket = ticket
        self.run: GuestRun | None = None
        self.logs: StepLogs | None = None
        self.disk_bytes: dict[int, int] = {}
        self.disk_rates: dict[int, float] = {}
        self.bytes_saved_at = 0.0
        self.thread: threading.Thread | None = None

    def status(self) -> coordinator_pb2.GuestStatus:
        copying = self.rec.state == GS.GUEST_STATE_RUNNING and self.rec.step == Step.COPY
        return guest_status(self.rec, sum(self.disk_rates.values()) if copying else 0.0)


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, scheduler: Scheduler, state: State, metrics: FleetMetrics | None = None,
                 keep_converted: bool = False, after_shutdown: Callable[[], None] | None = None) -> None:
        self.scheduler = scheduler
        self.keep_converted = keep_converted
        self.after_shutdown = after_shutdown
        self.state = state
        self.metrics = metrics
        self.logs_root = state.path.parent / "logs"
        self.clients = {name: PhaseClients(w.addresses) for name, w in scheduler.workers.items()}
        self.guests: dict[str, Guest] = {}
        self._log = EventLog(start=time.time_ns() // 1000)  # Follow replays it, then follows it live
        # Followers of one guest wait on that guest's condition, so an event wakes only its own
        # followers and those of every guest (""): with one condition for all, each event woke 500
        # dashboards and Submit slowed 10-25 times (bench/streams.py). All share one lock.
        self._log_lock = threading.Lock()
        self._changed: dict[str, threading.Condition] = {"": threading.Condition(self._log_lock)}
        self._streams = StreamSlots()  # Watch and Follow: the server keeps threads for the other calls
        self._stopping = False
        self._launching = threading.Lock()  # a run started by an admission, or the shutdown that stops them
        self._closed = False  # no run starts any more: the shutdown waits for those that did
        self._recover()

    # -- the event log ------------------------------------------------------------------------

    def _publish(self, fe: coordinator_pb2.FleetEvent) -> None:
        with self._log_lock:
            self._log.add(fe)
            self._changed[""].notify_all()
            if mine := self._changed.get(fe.id):
                mine.notify_all()

    def _condition(self, gid: str) -> threading.Condition:
        """What the followers of `gid` ("" = every guest) wait on; the caller holds the log lock."""
        return self._changed.setdefault(gid, threading.Condition(self._log_lock))

    def _set(self, guest: Guest, **values: object) -> None:
        """Changes a guest's record, stores it, and tells the followers when its state changed."""
        for key, value in values.items():
            setattr(guest.rec, key, value)
        self.state.update(guest.rec.id, **values)
        if "state" in values:
            self._publish(GS.FleetEvent(id=guest.rec.id, status=guest.status()))
            if self.metrics:
                self.metrics.states([g.rec.state for g in list(self.guests.values())])
                if values["state"] == GS.GUEST_STATE_FAILED and guest.rec.error is not None:
                    self.metrics.failed(guest.rec.error)

    def _sink(self, guest: Guest, ev: pb.Event) -> None:
        """Every event of a guest's run: kept for Watch, stored in its steps and logs, counted."""
        if ev.HasField("step"):
            self._on_step(guest, ev.step)
        else:
            self._on_progress(guest, ev.progress)
        self._publish(GS.FleetEvent(id=guest.rec.id, event=ev))

    def _on_step(self, guest: Guest, s: pb.StepEvent) -> None:
        rec, at = guest.rec, s.timestamp.ToNanoseconds() / 1e9
        disk = s.disk if s.HasField("disk") else None
        if guest.logs is not None:
            if guest.logs.reader is None and guest.run is not None and guest.run.workdir is not None:
                guest.logs.reader = self._log_reader(guest, guest.run.workdir.name)
                self._set(guest, workdir=guest.run.workdir.name)
            guest.logs.event(s)
        if s.state == pb.STEP_STATE_STARTED:
            self.state.step_started(rec.id, rec.attempt, s.step, s.parent, disk, at)
            if not s.parent:
                self._set(guest, step=s.step, **({"target_open": True} if s.step == Step.SETUP else {}))
        elif s.state in _STEP_STATES:
            seconds = s.duration.ToTimedelta().total_seconds()
            self.state.step_ended(rec.id, rec.attempt, s.step, s.parent, disk, _STEP_STATES[s.state], at, seconds,
                                  s.error.message if s.HasField("error") else "")
            if not s.parent and disk is None:
                if self.metrics:
                    self.metrics.step_ended(s.step, seconds, s.state == pb.STEP_STATE_FAILED)
                if s.step == Step.FINALIZE and s.state == pb.STEP_STATE_SUCCEEDED:
                    self._set(guest, target_open=False)
                if s.step == Step.OPEN and guest.run is not None and guest.run.source is not None:
                    self._set(guest, source=guest.run.source)

    def _log_reader(self, guest: Guest, workdir: str) -> LogReader:
        """The process logs of the guest's work directory, from its worker's input service: the
        worker may be another host, whose files this coordinator cannot see."""
        clients = self.clients[guest.rec.worker]

        def read(offsets: Mapping[str, int]) -> input_pb2.ReadLogsResponse:
            try:
                gained: input_pb2.ReadLogsResponse = clients.input.ReadLogs(
                    input_pb2.ReadLogsRequest(workdir=workdir, offsets=offsets), timeout=clients.quick)
            except grpc.RpcError:  # the worker is gone, and its logs with it; the step log says what it had
                return input_pb2.ReadLogsResponse()
            return gained

        return read

    def _on_progress(self, guest: Guest, p: pb.Progress) -> None:
        gained = p.bytes_done - guest.disk_bytes.get(p.disk, 0)
        guest.disk_bytes[p.disk] = p.bytes_done
        guest.disk_rates[p.disk] = 0.0 if p.bytes_done >= p.bytes_total else p.rate
        guest.rec.bytes_copied = sum(guest.disk_bytes.values())
        if self.metrics:
            self.metrics.copied(gained)
            self.metrics.rate(sum(sum(g.disk_rates.values()) for g in list(self.guests.values())
                                  if g.rec.step == Step.COPY and g.rec.state == GS.GUEST_STATE_RUNNING))
        now = time.monotonic()
        if now - guest.bytes_saved_at >= _BYTES_SAVE_INTERVAL or p.bytes_done >= p.bytes_total:
            guest.bytes_saved_at = now
            self.state.update(guest.rec.id, bytes_copied=guest.rec.bytes_copied)

    # -- running guests -----------------------------------------------------------------------

    def _add(self, rec: GuestRecord) -> Guest:
        ticket = self.scheduler.ticket(rec.name, rec.job.priority, source_host(rec.job.input), order=rec.seq)
        if rec.worker in self.scheduler.workers:
            ticket.worker = self.scheduler.workers[rec.worker]
        guest = Guest(rec, ticket)
        self.guests[rec.id] = guest
        return guest

    def _start(self, guest: Guest, resume: Converted | None = None) -> None:
        """Queues the guest; its run starts (in a thread of its own) when the scheduler admits it."""
        self.scheduler.admit(guest.ticket, lambda worker: self._launch(guest, worker, resume))

    def _launch(self, guest: Guest, worker: Worker, resume: Converted | None) -> None:
        with self._launching:
            if self._closed:
                return  # admitted as the coordinator stops: it stays queued for the next coordinator
            guest.thread = threading.Thread(target=self._execute, args=(guest, worker, resume),
                                            name=f"guest-{guest.rec.name}", daemon=True)
            guest.thread.start()

    def _execute(self, guest: Guest, worker: Worker, resume: Converted | None) -> None:
        rec = guest.rec
        try:
            try:
                guest.logs = StepLogs(self.logs_root, rec.id, rec.attempt)
                guest.disk_bytes.clear()
                guest.disk_rates.clear()
                run = GuestRun(rec.job, self.clients[worker.name], lambda ev: self._sink(guest, ev),
                               worker.workdir_root, TicketGates(self.scheduler, guest.ticket),
                               keep_converted=self.keep_converted)
                guest.run = run
                if guest.ticket.cancelled.is_set():  # cancelled between its admission and now
                    run.cancel()
                self._set(guest, state=GS.GUEST_STATE_RUNNING, worker=worker.name, started=time.time(),
                          error=None)
                if resume is not None:
                    guest.logs.reader = self._log_reader(guest, resume.workdir)
                try:
                    run.run(resume)
                finally:
                    self._set(guest, target_open=False,  # finalized, or aborted by the run's cleanup
                              workdir=run.workdir.name if run.kept and run.workdir else "")
            finally:
                self.scheduler.leave(guest.ticket)  # the next guest of its source host may start
            self._set(guest, state=GS.GUEST_STATE_SUCCEEDED, files=run.files, ended=time.time())
        except V2VError as err:
            cancelled = err.code == pb.ERROR_CODE_CANCELLED
            self._end(guest, err, GS.GUEST_STATE_CANCELLED if cancelled else GS.GUEST_STATE_FAILED)
        except Exception as exc:  # a bug must still end the guest, not hang its watchers
            self._end(guest, V2VError(f"internal error: {exc!r}", guest=rec.name), GS.GUEST_STATE_FAILED)
            raise

    def _end(self, guest: Guest, err: V2VError, state: coordinator_pb2.GuestState) -> None:
        if self._stopping and state == GS.GUEST_STATE_CANCELLED:
            # Stopped by the coordinator's own shutdown, not by a user: the next coordinator runs it again.
            self._set(guest, state=GS.GUEST_STATE_QUEUED, step="")
            return
        err.fill(guest=guest.rec.name)
        guest.rec.error = err.to_proto()
        self._set(guest, error=guest.rec.error, state=state, ended=time.time())

    # -- restart ------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Takes up the guests of the state database: finished ones stay as they are; the others go
        back in the queue, each from its last completed step where that step's work survived."""
        for rec in self.state.guests():
            guest = self._add(rec)
            if rec.finished:
                continue
            resume = self._salvage(guest) if rec.state == GS.GUEST_STATE_RUNNING else None
            if guest.rec.state in FINAL:
                continue
            self._set(guest, attempt=rec.attempt + 1, state=GS.GUEST_STATE_QUEUED)
            self._start(guest, resume)

    def _salvage(self, guest: Guest) -> Converted | None:
        """What is left of a run the last coordinator did not finish, as the worker's input service
        describes it: a conversion whose overlays it still serves (resume from setup), or None to
        run again from open. A target that was being written is aborted first, and marked."""
        rec = guest.rec
        done = self.state.completed_steps(rec.id, rec.attempt)
        if Step.FINALIZE in done:
            self._set(guest, state=GS.GUEST_STATE_SUCCEEDED, ended=time.time(), target_open=False)
            return None
        clients = self.clients.get(rec.worker) or next(iter(self.clients.values()))
        found = None
        if rec.workdir:
            try:
                found = clients.input.Describe(input_pb2.DescribeRequest(workdir=rec.workdir), timeout=clients.quick)
            except grpc.RpcError:
                pass  # that input service is gone, and its overlays with it
        if rec.target_open:
            self._abort_target(guest, clients, found.target if found and found.HasField("target") else None)
        if found and found.open and Step.CONVERT in found.done and found.HasField("converted"):
            self._note(guest, f"resuming from setup: the conversion in {found.path} survived")
            return Converted(found.workdir, found.source, found.converted, list(found.sockets))
        if found and found.exists:
            try:
                clients.input.Close(input_pb2.CloseRequest(workdir=found.workdir, remove=True), timeout=clients.quick)
            except grpc.RpcError as exc:
                self._note(guest, f"removing {found.path}: {clients.rpc_error(exc, step=Step.CLOSE).message}",
                           pb.SEVERITY_WARNING)
        guest.ticket.worker = None  # nothing binds it to its old worker now
        return None

    def _abort_target(self, guest: Guest, clients: PhaseClients, target: pb.TargetMeta | None) -> None:
        """The output's Abort removes the half-written target if its service still knows it; if it
        restarted too, the next attempt replaces the files (the state proves they are this guest's)."""
        rec = guest.rec
        try:
            removed = clients.output.Abort(output_pb2.AbortRequest(workdir=rec.workdir), timeout=clients.quick).removed
        except grpc.RpcError as exc:
            self._note(guest, f"abort of the interrupted target: {clients.rpc_error(exc, step=Step.ABORT).message}",
                       pb.SEVERITY_WARNING)
            removed = False
        what = "it was removed"
        if not removed:
            left = [d.path for d in target.disks if d.path] if target is not None else []
            what = f"replacing {', '.join(left)}" if left else "it is replaced"
            guest.rec.job.output.overwrite = True
            self.state.update(rec.id, job=guest.rec.job)
        self._note(guest, "the coordinator stopped while this guest's target was being written: " + what,
                   pb.SEVERITY_WARNING)
        self._set(guest, target_open=False, target_interrupted=True)

    def _note(self, guest: Guest, message: str, severity: pb.Severity = pb.SEVERITY_INFO) -> None:
        self._publish(GS.FleetEvent(id=guest.rec.id, event=pb.Event(step=step_event(
            guest.rec.name, "resume", pb.STEP_STATE_NOTE, message=message, severity=severity))))

    # -- RPCs ---------------------------------------------------------------------------------

    def _get(self, gid: str) -> Guest:
        guest = self.guests.get(gid)
        if guest is None:
            raise V2VError(f"no guest with id {gid!r}", pb.ERROR_CODE_NOT_FOUND)
        return guest

    def submit(self, jobs: list[coordinator_pb2.GuestJob]) -> list[str]:
        """Queues the jobs in order; the scheduler runs them as limits allow."""
        if self._stopping:
            raise V2VError("the coordinator is stopping", pb.ERROR_CODE_CANCELLED)
        ids = []
        for job in jobs:
            rec = GuestRecord(id=secrets.token_hex(6), seq=self.state.next_seq(), name=guest_name(job), job=job,
                              state=GS.GUEST_STATE_QUEUED, submitted=time.time(), attempt=1)
            self.state.add(rec)
            guest = self._add(rec)
            self._publish(GS.FleetEvent(id=rec.id, status=guest.status()))
            ids.append(rec.id)
        if self.metrics:
            self.metrics.states([g.rec.state for g in list(self.guests.values())])
        for gid in ids:
            self._start(self.guests[gid])
        return ids

    @rpc
    def Submit(self, request: coordinator_pb2.SubmitRequest,
               context: grpc.ServicerContext) -> coordinator_pb2.SubmitResponse:
        jobs = ([request.job] if request.HasField("job") else []) + list(request.jobs)
        if not jobs:
            raise V2VError("nothing to submit: give a job or jobs", pb.ERROR_CODE_BAD_INPUT)
        ids = self.submit(jobs)
        return GS.SubmitResponse(id=ids[0], ids=ids)

    def follow(self, gid: str, context: grpc.ServicerContext, after: int = 0) -> Iterator[coordinator_pb2.FleetEvent]:
        """The log of one guest (or all: gid "") after sequence number `after`, past then live, until
        it (every guest) has ended. A number above the log's newest is not from this coordinator's
        life (a client of a clock set back): the whole log, rather than nothing until it catches up."""
        if gid:
            self._get(gid)
        with self._log_lock:
            sent = after if after <= self._log.last else 0  # sequence number of the last event sent
        while True:
            with self._log_lock:
                changed = self._condition(gid)
                while self._log.last_of(gid) <= sent and not self._ended(gid) and context.is_active():
                    changed.wait(timeout=1.0)
                sent, batch = self._log.after(sent)
                done = self._ended(gid)
            yield from (fe for fe in batch if not gid or fe.id == gid)
            if (done and sent == self._log.last) or not context.is_active():
                return

    def events(self, after: int, timeout: float) -> tuple[int, list[coordinator_pb2.FleetEvent]]:
        """Every guest's events after sequence number `after` (the whole log for a number not of
        this coordinator's life, as in follow), and the newest number; waits up to `timeout` seconds
        for one. Unlike follow it never ends: for a watcher that outlives the guests (the console)."""
        with self._log_lock:
            if after > self._log.last:
                after = 0
            if self._log.last <= after:
                self._condition("").wait(timeout)
            return self._log.after(after)

    def _ended(self, gid: str) -> bool:
        guests = [self.guests[gid]] if gid else list(self.guests.values())
        return all(g.rec.finished and (g.thread is None or not g.thread.is_alive()) for g in guests)

    def Follow(self, request: coordinator_pb2.GuestRef,
               context: grpc.ServicerContext) -> Iterator[coordinator_pb2.FleetEvent]:
        try:
            with self._streams.slot(context, "Follow"):
                yield from self.follow(request.id, context, request.after_seq)
        except V2VError as err:
            context.abort_with_status(to_status(err))

    def Watch(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        try:
            with self._streams.slot(context, "Watch"):
                yield from (fe.event for fe in self.follow(request.id, context) if fe.HasField("event"))
        except V2VError as err:
            context.abort_with_status(to_status(err))

    @rpc
    def Status(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        return self._get(request.id).status()

    @rpc
    def List(self, request: coordinator_pb2.ListRequest, context: grpc.ServicerContext) -> coordinator_pb2.ListResponse:
        guests = [g.status() for g in list(self.guests.values())]
        if request.steps:
            for st in guests:
                st.steps.extend(step_record(s) for s in self.state.steps(st.id))
        return GS.ListResponse(guests=guests)

    def _find(self, ref: str) -> Guest:
        """By id, else by name: the latest guest of that name."""
        named = [g for g in list(self.guests.values()) if g.rec.name == ref]
        guest = self.guests.get(ref) or max(named, key=lambda g: g.rec.seq, default=None)
        if guest is None:
            raise V2VError(f"no guest with id or name {ref!r}", pb.ERROR_CODE_NOT_FOUND)
        return guest

    def logs(self, ref: str, only: str, follow: bool,
             context: grpc.ServicerContext) -> Iterator[coordinator_pb2.LogRecord]:
        """The guest's step logs, then (`follow`) what they gain, until the guest has ended: each
        pass reads what the files gained, then waits for the guest's next event, which is written
        to its step log before it is published."""
        rec = self._find(ref).rec
        offsets: dict[tuple[int, str], int] = {}
        while True:
            with self._log_lock:
                seen, ended = self._log.last_of(rec.id), self._ended(rec.id)
            yield from log_records(self.logs_root, rec.id, rec.name, logged_steps(self.state.steps(rec.id), only),
                                   offsets)
            if not follow or ended or not context.is_active():
                return
            with self._log_lock:
                changed = self._condition(rec.id)
                while self._log.last_of(rec.id) <= seen and not self._ended(rec.id) and context.is_active():
                    changed.wait(timeout=1.0)

    @stream_rpc
    def Logs(self, request: coordinator_pb2.LogsRequest,
             context: grpc.ServicerContext) -> Iterator[coordinator_pb2.LogRecord]:
        with self._streams.slot(context, "Logs"):
            yield from self.logs(request.guest, request.step, request.follow, context)

    def cancel(self, gid: str) -> coordinator_pb2.GuestStatus:
        guest = self._get(gid)
        if not guest.rec.finished:
            if self.scheduler.cancel(guest.ticket):  # it was queued: it leaves the queue, never started
                self._end(guest, V2VError("cancelled while queued", pb.ERROR_CODE_CANCELLED), GS.GUEST_STATE_CANCELLED)
            elif guest.run is not None:
                guest.run.cancel()
        elif guest.run is not None and guest.run.kept:
            guest.run.release()
            self._set(guest, workdir="")
        return guest.status()

    @rpc
    def Cancel(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        return self.cancel(request.id)

    def retry(self, gid: str, from_step: str = "") -> coordinator_pb2.GuestStatus:
        guest = self._get(gid)
        rec = guest.rec
        if rec.state not in (GS.GUEST_STATE_FAILED, GS.GUEST_STATE_CANCELLED) or \
                (guest.thread is not None and guest.thread.is_alive()):
            raise V2VError(f"guest {rec.name} is {GS.GuestState.Name(rec.state)}: only a failed or cancelled "
                           "guest can be retried", pb.ERROR_CODE_BAD_INPUT, guest=rec.name)
        from_step = from_step or Step.OPEN
        if from_step not in RESUMABLE_STEPS:
            raise V2VError(f"retry from {from_step!r}: a guest can be retried from {' or '.join(RESUMABLE_STEPS)}",
                           pb.ERROR_CODE_BAD_INPUT, guest=rec.name)
        resume = None
        if from_step == Step.SETUP:
            run = guest.run
            if run is None or run.converted is None:
                raise V2VError(f"guest {rec.name} has no kept conversion to retry from setup: retry from open",
                               pb.ERROR_CODE_BAD_INPUT, guest=rec.name)
            resume = run.converted
        elif guest.run is not None:
            guest.run.release()
        guest.ticket = self.scheduler.ticket(rec.name, rec.job.priority, source_host(rec.job.input), order=rec.seq)
        if resume is not None:
            guest.ticket.worker = self.scheduler.workers.get(rec.worker)
        self._set(guest, attempt=rec.attempt + 1, state=GS.GUEST_STATE_QUEUED, ended=None, error=None)
        self._start(guest, resume)
        return guest.status()

    @rpc
    def Retry(self, request: coordinator_pb2.RetryRequest,
              context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        return self.retry(request.id, request.from_step)

    def shutdown(self) -> None:
        """Cancels every running guest and waits for their cleanup (processes stopped, targets
        removed); closes the conversions failed guests kept."""
        self._stopping = True
        guests = list(self.guests.values())
        for g in guests:
            if not g.rec.finished and not self.scheduler.cancel(g.ticket) and g.run is not None:
                g.run.cancel()  # a queued guest just leaves the queue, and stays queued in the state
        with self._launching:
            self._closed = True
        for g in guests:
            if g.thread is not None:
                g.thread.join(timeout=60)
            if g.run is not None:
                g.run.release()
        for clients in self.clients.values():
            clients.close()
        self.state.close()
        if self.after_shutdown:
            self.after_shutdown()
