"""A Python client of the coordinator (docs/fleet.md, docs/examples/fleet-client.py):

    with FleetClient("unix:/run/v2v/coordinator.sock") as fleet:
        ids = fleet.submit_plan("plan.yaml")
        for status in fleet.wait(ids):
            print(status.name, state_name(status.state))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from v2v.cli.plan import read_plan
from v2v.coordinator.state import FINAL, state_name
from v2v.grpcserver import channel, wait_ready
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc

__all__ = ["FleetClient", "state_name"]


class FleetClient:
    def __init__(self, address: str) -> None:
        self.channel = channel(address)
        wait_ready(self.channel, "coordinator")
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def submit(self, jobs: Iterable[coordinator_pb2.GuestJob]) -> list[str]:
        """Queues the guests; returns their ids in the same order."""
        return list(self.stub.Submit(coordinator_pb2.SubmitRequest(jobs=list(jobs))).ids)

    def submit_plan(self, path: str | Path) -> list[str]:
        return self.submit(read_plan(Path(path)).jobs)

    def follow(self, gid: str = "", after_seq: int = 0) -> Iterator[coordinator_pb2.FleetEvent]:
        """Every event of one guest, or of all (""), past then live, until they have ended; with
        after_seq (the `seq` of the last event seen), only the ones after it: a stream resumed."""
        yield from self.stub.Follow(coordinator_pb2.GuestRef(id=gid, after_seq=after_seq))

    def list(self, steps: bool = False) -> list[coordinator_pb2.GuestStatus]:
        """Every guest's status; with `steps`, each with its steps (GuestStatus.steps)."""
        return list(self.stub.List(coordinator_pb2.ListRequest(steps=steps)).guests)

    def logs(self, guest: str, step: str = "", follow: bool = False) -> Iterator[coordinator_pb2.LogRecord]:
        """A guest's (by id or name) step logs; `follow`: then the new records until it ends."""
        yield from self.stub.Logs(coordinator_pb2.LogsRequest(guest=guest, step=step, follow=follow))

    def status(self, gid: str) -> coordinator_pb2.GuestStatus:
        status: coordinator_pb2.GuestStatus = self.stub.Status(coordinator_pb2.GuestRef(id=gid))
        return status

    def cancel(self, gid: str) -> coordinator_pb2.GuestStatus:
        status: coordinator_pb2.GuestStatus = self.stub.Cancel(coordinator_pb2.GuestRef(id=gid))
        return status

    def retry(self, gid: str, from_step: str = "") -> coordinator_pb2.GuestStatus:
        status: coordinator_pb2.GuestStatus = self.stub.Retry(coordinator_pb2.RetryRequest(id=gid, from_step=from_step))
        return status

    def wait(self, ids: Iterable[str]) -> Iterator[coordinator_pb2.GuestStatus]:
        """Yields each guest's final status (of its current attempt) as it ends, in the order they end."""
        attempts = {gid: self.status(gid).attempt for gid in ids}
        pending = set(attempts)
        for fe in self.follow():
            if fe.HasField("status") and fe.id in pending and fe.status.state in FINAL and \
                    fe.status.attempt >= attempts[fe.id]:
                pending.discard(fe.id)
                yield fe.status
            if not pending:
                return
        yield from (self.status(gid) for gid in sorted(pending))  # the coordinator stopped first
