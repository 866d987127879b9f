"""Finding 3 of the reliability probe: 33 open Watch/Follow streams locked out the coordinator (a
thread each from one pool of 32), so Status, List, Submit and Cancel timed out. Watchers now have
their own share of the threads; one too many is refused at once, and the other calls still answer."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.reliability.conftest import HELD_JOB
from v2v.grpcserver import MAX_STREAMS
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc

GS = coordinator_pb2


def test_watchers_beyond_their_share_are_refused_and_the_rest_still_answers(held_coordinator):
    ch, held = held_coordinator
    stub = coordinator_pb2_grpc.CoordinatorStub(ch)
    job = HELD_JOB
    gid = stub.Submit(GS.SubmitRequest(job=job), timeout=10).id

    streams = [stub.Follow(GS.GuestRef(id=gid)) if n % 2 else stub.Watch(GS.GuestRef(id=gid))
               for n in range(MAX_STREAMS)]
    assert all(next(call).id == gid for call in streams[1::2])  # each Follow is served: it holds a slot
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.Follow(GS.GuestRef(id=gid), timeout=10))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{MAX_STREAMS} streams are open" in refused.value.details()

    # What the lockout blocked answers, with every watcher's thread taken.
    assert stub.Status(GS.GuestRef(id=gid), timeout=5).state == GS.GUEST_STATE_RUNNING
    assert [g.id for g in stub.List(GS.ListRequest(), timeout=5).guests] == [gid]
    other = stub.Submit(GS.SubmitRequest(job=GS.GuestJob(name="other", input=job.input)), timeout=5).id
    assert stub.Cancel(GS.GuestRef(id=other), timeout=5).id == other

    # A watcher that leaves gives its slot back, once the server sees it gone (within a second).
    streams.pop().cancel()
    deadline = time.monotonic() + 10
    while True:
        follow = stub.Follow(GS.GuestRef(id=gid), timeout=30)
        try:
            assert next(follow).id == gid
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.2)
    held.release.set()
    assert stub.Status(GS.GuestRef(id=gid), timeout=5).id == gid
    for call in [*streams, follow]:
        call.cancel()
