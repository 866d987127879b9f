"""The Coordinator gRPC service: accepts guests, runs each in its own thread, keeps their events."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from v2v.coordinator.clients import PhaseClients
from v2v.coordinator.pipeline import GuestRun
from v2v.errors import V2VError
from v2v.events import now
from v2v.grpcserver import rpc
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc
from v2v.v1 import types_pb2 as pb

_FINAL = (coordinator_pb2.GUEST_STATE_SUCCEEDED, coordinator_pb2.GUEST_STATE_FAILED,
          coordinator_pb2.GUEST_STATE_CANCELLED)


class Guest:
    """A submitted guest: its run, its status, and every event it produced (for Watch)."""

    def __init__(self, gid: str, job: coordinator_pb2.GuestJob, clients: PhaseClients,
                 workdir_root: Path | None) -> None:
        self.events: list[pb.Event] = []
        self.changed = threading.Condition()
        self.run = GuestRun(job, clients, self._record, workdir_root)
        self.status = coordinator_pb2.GuestStatus(id=gid, name=self.run.name,
                                                  state=coordinator_pb2.GUEST_STATE_QUEUED, submitted=now())

    def _record(self, event: pb.Event) -> None:
        with self.changed:
            if event.HasField("step") and not event.step.parent:
                self.status.step = event.step.step
            self.events.append(event)
            self.changed.notify_all()

    def execute(self) -> None:
        self._set_state(coordinator_pb2.GUEST_STATE_RUNNING)
        try:
            self.run.run()
        except V2VError as err:
            self.status.error.CopyFrom(err.to_proto())
            cancelled = err.code == pb.ERROR_CODE_CANCELLED
            self._set_state(coordinator_pb2.GUEST_STATE_CANCELLED if cancelled else coordinator_pb2.GUEST_STATE_FAILED)
            return
        except Exception as exc:  # a bug must still end the guest, not hang its watchers
            self.status.error.CopyFrom(V2VError(f"internal error: {exc!r}", guest=self.run.name).to_proto())
            self._set_state(coordinator_pb2.GUEST_STATE_FAILED)
            raise
        if self.run.source is not None:
            self.status.source.CopyFrom(self.run.source)
        self.status.files.extend(self.run.files)
        self._set_state(coordinator_pb2.GUEST_STATE_SUCCEEDED)

    def _set_state(self, state: int) -> None:
        with self.changed:
            if self.run.source is not None:
                self.status.source.CopyFrom(self.run.source)
            self.status.state = state
            self.changed.notify_all()

    def finished(self) -> bool:
        return self.status.state in _FINAL

    def watch(self, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        sent = 0
        while True:
            with self.changed:
                while sent == len(self.events) and not self.finished() and context.is_active():
                    self.changed.wait(timeout=1.0)
                batch = self.events[sent:]
                done = self.finished()
            yield from batch
            sent += len(batch)
            if (done and sent == len(self.events)) or not context.is_active():
                return


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, clients: PhaseClients, workdir_root: Path | None = None) -> None:
        self.clients = clients
        self.workdir_root = workdir_root
        self.guests: dict[str, Guest] = {}
        self._lock = threading.Lock()

    def _get(self, gid: str) -> Guest:
        with self._lock:
            guest = self.guests.get(gid)
        if guest is None:
            raise V2VError(f"no guest with id {gid!r}", pb.ERROR_CODE_BAD_INPUT)
        return guest

    @rpc
    def Submit(self, request: coordinator_pb2.SubmitRequest,
               context: grpc.ServicerContext) -> coordinator_pb2.SubmitResponse:
        gid = secrets.token_hex(6)
        guest = Guest(gid, request.job, self.clients, self.workdir_root)
        with self._lock:
            self.guests[gid] = guest
        threading.Thread(target=guest.execute, name=f"guest-{guest.run.name}", daemon=True).start()
        return coordinator_pb2.SubmitResponse(id=gid)

    def Watch(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        try:
            guest = self._get(request.id)
        except V2VError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, err.message)
        yield from guest.watch(context)

    @rpc
    def Status(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        return self._get(request.id).status

    @rpc
    def List(self, request: coordinator_pb2.ListRequest, context: grpc.ServicerContext) -> coordinator_pb2.ListResponse:
        with self._lock:
            guests = list(self.guests.values())
        return coordinator_pb2.ListResponse(guests=[g.status for g in guests])

    @rpc
    def Cancel(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        guest = self._get(request.id)
        if not guest.finished():
            guest.run.cancel()
        return guest.status

    def shutdown(self) -> None:
        """Cancels every running guest and waits for their cleanup (processes stopped, targets removed)."""
        with self._lock:
            running = [g for g in self.guests.values() if not g.finished()]
        for g in running:
            g.run.cancel()
        for g in running:
            with g.changed:
                g.changed.wait_for(g.finished, timeout=60)
