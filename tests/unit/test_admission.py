"""The scheduler's admission, event-driven (issue 14 point 10): a queued guest has no thread and is
not polled; the room a guest frees goes, in the same call, to the next admissible guest in line
(priority, then submission order), and a cancelled guest leaves the queue at once. Every call here
returns before the next: the order of the `start` callbacks is the order of admission."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest

from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Limits, Scheduler, Ticket, Worker
from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

ADDRS = ServiceAddresses("unix:i", "unix:c", "unix:o", "unix:p")


class Admissions:
    """A scheduler whose admitted guests are only noted, in the order admitted."""

    def __init__(self, per_source_host: int, workers: list[Worker] | None = None) -> None:
        self.scheduler = Scheduler(workers or [Worker("w", ADDRS)], Limits(per_source_host=per_source_host))
        self.started: list[str] = []
        self.tickets: dict[str, Ticket] = {}

    def submit(self, name: str, priority: int = 0, host: str = "esx1") -> Ticket:
        ticket = self.scheduler.ticket(name, priority, host)
        self.tickets[name] = ticket
        self.scheduler.admit(ticket, lambda worker: self.started.append(name))
        return ticket

    def end(self, name: str) -> None:
        self.scheduler.leave(self.tickets[name])


def test_a_guest_is_admitted_at_once_when_there_is_room():
    a = Admissions(per_source_host=2)
    a.submit("a")
    a.submit("b")
    a.submit("c")
    assert a.started == ["a", "b"]
    assert a.scheduler.queued() == ["c"]
    assert a.scheduler.in_use() == {("host", "esx1"): 2, ("run", ""): 2}


def test_the_room_a_guest_frees_goes_to_the_next_by_priority_then_order():
    a = Admissions(per_source_host=1)
    for name, priority in (("blocker", 0), ("low1", 0), ("high", 5), ("low2", 0), ("mid", 1)):
        a.submit(name, priority)
    assert a.started == ["blocker"]
    assert a.scheduler.queued() == ["high", "mid", "low1", "low2"]
    for name in ("blocker", "high", "mid", "low1"):
        a.end(name)
    assert a.started == ["blocker", "high", "mid", "low1", "low2"]
    a.end("low2")
    assert a.scheduler.in_use() == {} and a.scheduler.queued() == []


def test_a_full_source_host_does_not_hold_up_another():
    a = Admissions(per_source_host=1)
    a.submit("a1", host="esx1")
    a.submit("a2", host="esx1", priority=9)
    a.submit("b1", host="esx2")
    assert a.started == ["a1", "b1"]
    a.end("b1")
    assert a.started == ["a1", "b1"]  # esx2's room is no use to a2
    a.end("a1")
    assert a.started == ["a1", "b1", "a2"]


def test_a_worker_runs_twice_its_conversions_and_copy_streams_and_one_end_admits_one():
    a = Admissions(per_source_host=0)  # no source host limit: the worker's places are the limit
    assert a.scheduler.workers["w"].running == 12  # 2 conversions, 4 copy streams
    for n in range(50):
        a.submit(f"g{n}")
    assert a.started == [f"g{n}" for n in range(12)] and len(a.scheduler.queued()) == 38
    a.end("g3")
    assert a.started[12:] == ["g12"]
    # a guest waiting for a place holds its source host's slot (here there is no host limit)
    assert a.scheduler.in_use() == {("host", "esx1"): 49, ("run", ""): 12}


def test_a_full_source_host_keeps_no_worker_place_from_another_host():
    """esx1's queued guests wait for esx1, not in front of esx2's in the workers' queue."""
    a = Admissions(per_source_host=1, workers=[Worker("w", ADDRS, guests=2)])
    for name in ("a1", "a2", "a3"):
        a.submit(name, host="esx1")
    a.submit("b1", host="esx2")
    assert a.started == ["a1", "b1"]


def test_a_resumed_guest_waits_for_a_place_on_its_own_worker():
    a = Admissions(per_source_host=0, workers=[Worker("w1", ADDRS, guests=1), Worker("w2", ADDRS, guests=1)])
    a.submit("on-w1")
    assert a.tickets["on-w1"].worker is a.scheduler.workers["w1"]
    resumed = a.scheduler.ticket("resumed", 0, "esx1")
    resumed.worker = a.scheduler.workers["w1"]
    a.scheduler.admit(resumed, lambda worker: a.started.append(f"resumed on {worker.name}"))
    a.submit("other")  # w2 has a place, but nobody passes the head of the line: it is not starved of w1
    assert a.started == ["on-w1"]
    a.end("on-w1")
    assert a.started == ["on-w1", "resumed on w1", "other"]
    assert a.tickets["other"].worker is a.scheduler.workers["w2"]


def test_a_cancelled_queued_guest_leaves_the_queue_at_once_and_never_starts():
    a = Admissions(per_source_host=1)
    a.submit("a")
    b = a.submit("b")
    a.submit("c")
    assert a.scheduler.cancel(b) is True  # it was queued
    assert a.scheduler.queued() == ["c"]
    a.end("a")
    assert a.started == ["a", "c"]
    with pytest.raises(V2VError) as err:  # a cancelled ticket asks for nothing more
        a.scheduler.admit(b, lambda worker: None)
    assert err.value.code == pb.ERROR_CODE_CANCELLED


def test_cancelling_an_admitted_guest_says_it_had_started():
    a = Admissions(per_source_host=1)
    t = a.submit("a")
    assert a.scheduler.cancel(t) is False
    a.end("a")
    assert a.scheduler.in_use() == {}


def test_cancelling_the_head_of_a_queue_lets_the_one_behind_it_in():
    """A big copy waits at the head of its worker's copy queue; the small one behind it may not
    pass it (no starvation) until the big one is cancelled."""
    s = Scheduler([Worker("w", ADDRS, copy_streams=2)])
    holder, big, small = (s.ticket(n, 0, "localhost") for n in ("holder", "big", "small"))
    with ExitStack() as stack:
        for t in (holder, big, small):
            stack.enter_context(s.admitted(t))
        copy_while_others_queue(s, holder, big, small)
    assert s.in_use() == {} and s.queued() == []


def copy_while_others_queue(s: Scheduler, holder: Ticket, big: Ticket, small: Ticket) -> None:
    with s.copying(holder, 1):
        results: dict[str, str] = {}

        def copy(t: Ticket, disks: int) -> None:
            try:
                with s.copying(t, disks) as streams:
                    results[t.guest] = f"granted {streams}"
            except V2VError as err:
                results[t.guest] = pb.ErrorCode.Name(err.code)

        # big (2 streams, 1 free) queues first; small (1 stream) would fit but is behind it
        threads = {t.guest: threading.Thread(target=copy, args=(t, n)) for t, n in ((big, 2), (small, 1))}
        threads["big"].start()
        while s.queued() != ["big"]:  # big is in the queue before small asks
            threading.Event().wait(0.001)
        threads["small"].start()
        while s.queued() != ["big", "small"]:
            threading.Event().wait(0.001)
        s.cancel(big)
        for th in threads.values():
            th.join(timeout=10)
    assert results == {"big": "ERROR_CODE_CANCELLED", "small": "granted 1"}


def test_placement_happens_at_admission_on_the_least_loaded_worker():
    a = Admissions(per_source_host=1, workers=[Worker("big", ADDRS, conversions=2), Worker("small", ADDRS)])
    placed: list[str] = []
    for n in range(3):
        t = a.scheduler.ticket(f"g{n}", 0, f"host{n}")
        a.scheduler.admit(t, lambda worker: placed.append(worker.name))
    assert placed == ["big", "small", "big"]
    queued = a.scheduler.ticket("q", 0, "host0")
    a.scheduler.admit(queued, lambda worker: placed.append(worker.name))
    assert queued.worker is None  # not placed while it waits
