"""Guests as the Coordinator API tells of them, from what the state database holds: statuses,
steps, step logs; and a read-only Coordinator over a database, which `v2v status` and `v2v logs`
ask when no running coordinator is named (the same calls, answered from the file)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import timestamp_pb2

from v2v.coordinator.state import GuestRecord, State, StepRecord
from v2v.coordinator.steplogs import log_records
from v2v.errors import V2VError
from v2v.grpcserver import rpc, stream_rpc
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc
from v2v.v1 import types_pb2 as pb

GS = coordinator_pb2


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def guest_status(r: GuestRecord, copy_rate: float = 0.0) -> coordinator_pb2.GuestStatus:
    st = GS.GuestStatus(id=r.id, name=r.name, state=r.state, step=r.step, files=r.files, worker=r.worker,
                        bytes_copied=r.bytes_copied, priority=r.job.priority, attempt=r.attempt,
                        target_interrupted=r.target_interrupted, submitted=timestamp(r.submitted),
                        started=timestamp(r.started), ended=timestamp(r.ended), copy_rate=copy_rate)
    if r.error is not None:
        st.error.CopyFrom(r.error)
    if r.source is not None:
        st.source.CopyFrom(r.source)
    return st


def step_record(s: StepRecord) -> coordinator_pb2.StepRecord:
    return GS.StepRecord(attempt=s.attempt, step=s.step, parent=s.parent, disk=s.disk, state=s.state,
                         started=timestamp(s.started), ended=timestamp(s.ended), duration=s.duration or 0.0,
                         error=s.error)


def logged_steps(steps: list[StepRecord], only: str = "") -> list[tuple[int, str]]:
    """The (attempt, step) of each step log of a guest's steps (phases: sub-steps log into theirs),
    oldest first; `only` keeps one step's."""
    return list(dict.fromkeys((s.attempt, s.step) for s in steps if not s.parent and (not only or s.step == only)))


class StateView(coordinator_pb2_grpc.CoordinatorServicer):
    """List, Status and Logs of the guests of a state database, as the coordinator that writes it
    answers them; it runs nothing, and the other calls are not served. The database may be one a
    coordinator is writing now (each read sees its last commit) or one left by a stopped one."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.logs_root = state.path.parent / "logs"

    def _guest(self, ref: str) -> GuestRecord:
        rec = self.state.guest(ref)
        if rec is None:
            raise V2VError(f"no guest {ref!r} in {self.state.path}", pb.ERROR_CODE_NOT_FOUND)
        return rec

    @rpc
    def List(self, request: coordinator_pb2.ListRequest, context: grpc.ServicerContext) -> coordinator_pb2.ListResponse:
        guests = [guest_status(rec) for rec in self.state.guests()]
        if request.steps:
            for st in guests:
                st.steps.extend(step_record(s) for s in self.state.steps(st.id))
        return GS.ListResponse(guests=guests)

    @rpc
    def Status(self, request: coordinator_pb2.GuestRef, context: grpc.ServicerContext) -> coordinator_pb2.GuestStatus:
        return guest_status(self._guest(request.id))

    @stream_rpc
    def Logs(self, request: coordinator_pb2.LogsRequest,
             context: grpc.ServicerContext) -> Iterator[coordinator_pb2.LogRecord]:
        """What the logs hold now, `follow` or not: a guest running under a coordinator is followed
        by asking that one."""
        rec = self._guest(request.guest)
        yield from log_records(self.logs_root, rec.id, rec.name, logged_steps(self.state.steps(rec.id), request.step),
                               {})

    def shutdown(self) -> None:
        self.state.close()
