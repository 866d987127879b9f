"""Finding 5 of the reliability probe, the coordinator's half: a guest stuck in open (its input
waits on a source that never answers) could not be cancelled: Cancel answered RUNNING and nothing
changed. Now the coordinator's Open is a call it cancels, and the input sees its caller leave.
(The input's half, timeouts and cancel of the NBD connects themselves: test_nbd_connect.py.)"""

from __future__ import annotations

import time

from tests.reliability.conftest import HELD_JOB
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc

GS = coordinator_pb2


def test_cancel_stops_a_guest_stuck_in_open(held_coordinator):
    ch, held = held_coordinator
    stub = coordinator_pb2_grpc.CoordinatorStub(ch)
    gid = stub.Submit(GS.SubmitRequest(job=HELD_JOB), timeout=10).id
    assert held.entered.wait(30), "the guest's Open never reached the input"
    assert stub.Status(GS.GuestRef(id=gid), timeout=5).step == "open"

    stub.Cancel(GS.GuestRef(id=gid), timeout=5)
    assert held.caller_left.wait(30), "the input never saw its caller leave"
    deadline = time.monotonic() + 30
    while (status := stub.Status(GS.GuestRef(id=gid), timeout=5)).state == GS.GUEST_STATE_RUNNING:
        assert time.monotonic() < deadline, "Cancel left the guest running"
        time.sleep(0.1)
    assert (status.state, status.error.step) == (GS.GUEST_STATE_CANCELLED, "open"), status
    assert not held.release.is_set()  # nobody let go: the cancel did it
