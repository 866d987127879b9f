"""The scheduler's pure logic: limits per phase, priority then FIFO, no starvation, placement, and
which host a source is read from. Threads stand for guests; nothing else runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Limits, Scheduler, Ticket, Worker
from v2v.errors import V2VError
from v2v.services.input.locations import source_host
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb

ADDRS = ServiceAddresses("unix:i", "unix:c", "unix:o", "unix:p")


def worker(name: str = "w", **caps: int) -> Worker:
    return Worker(name, ADDRS, **caps)  # type: ignore[arg-type]


def run_all(fns: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=f) for f in fns]
    for t in threads:
        t.start()
        time.sleep(0.02)  # in this order
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()


def admitted(s: Scheduler, t: Ticket) -> None:
    with s.admitted(t):
        pass


def test_conversions_are_limited_per_worker():
    s = Scheduler([worker(conversions=2)])
    now = peak = 0
    lock = threading.Lock()

    def guest(n: int) -> Callable[[], None]:
        def go() -> None:
            nonlocal now, peak
            t = s.ticket(f"g{n}", 0, "localhost")
            with s.admitted(t), s.converting(t):
                with lock:
                    now += 1
                    peak = max(peak, now)
                time.sleep(0.1)
                with lock:
                    now -= 1
        return go

    run_all([guest(n) for n in range(6)])
    assert peak == 2
    assert s.in_use() == {}


def test_pipelining_b_converts_while_a_copies():
    s = Scheduler([worker(conversions=1, copy_streams=1)])
    a, b = s.ticket("a", 0, "localhost"), s.ticket("b", 0, "localhost")
    with s.admitted(a), s.admitted(b):
        with s.converting(a):
            pass
        with s.copying(a, 1):
            # a holds the only copy stream; b's conversion does not wait for it
            with s.converting(b):
                assert s.in_use() == {("host", "localhost"): 2, ("run", ""): 2, ("copy", "w"): 1, ("convert", "w"): 1}


def test_priority_then_fifo():
    s = Scheduler([worker(conversions=1)])
    order: list[str] = []
    blocker = s.ticket("blocker", 0, "localhost")
    with s.admitted(blocker):
        cm = s.converting(blocker)
        cm.__enter__()

        def guest(name: str, prio: int) -> Callable[[], None]:
            def go() -> None:
                t = s.ticket(name, prio, "localhost")
                with s.admitted(t), s.converting(t):
                    order.append(name)
            return go

        threads = [threading.Thread(target=guest(n, p)) for n, p in
                   (("low1", 0), ("high", 5), ("low2", 0), ("mid", 1))]
        for t in threads:
            t.start()
            time.sleep(0.05)
        cm.__exit__(None, None, None)
        for t in threads:
            t.join(timeout=10)
    assert order == ["high", "mid", "low1", "low2"]


def test_a_big_copy_is_not_starved_by_small_ones():
    s = Scheduler([worker(copy_streams=3)])
    order: list[str] = []
    first = s.ticket("first", 0, "localhost")
    with s.admitted(first):
        cm = s.copying(first, 2)
        cm.__enter__()

        def guest(name: str, disks: int) -> Callable[[], None]:
            def go() -> None:
                t = s.ticket(name, 0, "localhost")
                with s.admitted(t), s.copying(t, disks) as granted:
                    order.append(f"{name}:{granted}")
                    time.sleep(0.05)
            return go

        # big needs 3 streams (1 free): small1, queued after it, may not jump ahead
        threads = [threading.Thread(target=guest(n, d)) for n, d in (("big", 3), ("small1", 1))]
        for t in threads:
            t.start()
            time.sleep(0.05)
        assert order == []
        cm.__exit__(None, None, None)
        for t in threads:
            t.join(timeout=10)
    assert order == ["big:3", "small1:1"]


def test_more_disks_than_streams_still_run_with_all_streams():
    s = Scheduler([worker(copy_streams=2)])
    t = s.ticket("g", 0, "localhost")
    with s.admitted(t), s.copying(t, 5) as granted:
        assert granted == 2


def test_memory_budget_limits_conversions():
    s = Scheduler([worker(conversions=4, memory=5 << 30)], Limits(appliance_memory=2 << 30))
    tickets = [s.ticket(f"g{n}", 0, "localhost") for n in range(3)]
    with s.admitted(tickets[0]), s.admitted(tickets[1]), s.admitted(tickets[2]):
        with s.converting(tickets[0]), s.converting(tickets[1]):
            waited = threading.Event()

            def third() -> None:
                with s.converting(tickets[2]):
                    waited.set()
            th = threading.Thread(target=third)
            th.start()
            time.sleep(0.2)
            assert not waited.is_set()  # 2 GiB more would exceed 5 GiB
        th.join(timeout=5)
        assert waited.is_set()


def test_per_source_host_limit():
    s = Scheduler([worker(conversions=8)], Limits(per_source_host=1))
    a, b, c = s.ticket("a", 0, "esx1"), s.ticket("b", 0, "esx1"), s.ticket("c", 0, "esx2")
    with s.admitted(a):
        with s.admitted(c):  # another host: not held up
            pass
        got = threading.Event()
        th = threading.Thread(target=lambda: (admitted(s, b), got.set()))
        th.start()
        time.sleep(0.2)
        assert not got.is_set()
    th.join(timeout=5)
    assert got.is_set()


def test_cancel_while_queued():
    s = Scheduler([worker(conversions=1)])
    a, b = s.ticket("a", 0, "localhost"), s.ticket("b", 0, "localhost")
    errors: list[V2VError] = []

    def wait_b() -> None:
        try:
            with s.admitted(b), s.converting(b):
                pass
        except V2VError as err:
            errors.append(err)

    with s.admitted(a), s.converting(a):
        th = threading.Thread(target=wait_b)
        th.start()
        time.sleep(0.1)
        s.cancel(b)
        th.join(timeout=5)
    assert errors and errors[0].code == pb.ERROR_CODE_CANCELLED
    assert s.in_use() == {}


def test_placement_prefers_the_worker_with_most_free_capacity():
    s = Scheduler([worker("big", conversions=2), worker("small", conversions=1)])
    placed = []
    tickets = [s.ticket(f"g{n}", 0, "localhost") for n in range(3)]
    with s.admitted(tickets[0]) as w0, s.admitted(tickets[1]) as w1, s.admitted(tickets[2]) as w2:
        placed = [w0.name, w1.name, w2.name]
    # guests per conversion slot: 0 vs 0 (a tie: the first configured), 0.5 vs 0, then 0.5 vs 1
    assert placed == ["big", "small", "big"]
    t = s.ticket("later", 0, "localhost")
    with s.admitted(t) as w:
        assert w.name == "big"  # all free again


def test_a_placed_ticket_keeps_its_worker():
    s = Scheduler([worker("a"), worker("b")])
    t = s.ticket("g", 0, "localhost")
    t.worker = s.workers["b"]
    with s.admitted(t) as w:
        assert w.name == "b"


def test_worker_names_must_differ():
    with pytest.raises(ValueError, match="differ"):
        Scheduler([worker("a"), worker("a")])


@pytest.mark.parametrize("spec, host", [
    (input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=["/x.img"])), "localhost"),
    (input_pb2.InputSpec(vmx=input_pb2.VmxInput(location="ssh://root@esx1.lab/vmfs/g.vmx")), "esx1.lab"),
    (input_pb2.InputSpec(vmware_https=input_pb2.VmwareHttpsInput(url="https://vc.lab/folder/g.vmx")), "vc.lab"),
    (input_pb2.InputSpec(libvirt=input_pb2.LibvirtInput(uri="qemu+ssh://kvm2/system", domain="g")), "kvm2"),
    (input_pb2.InputSpec(libvirt=input_pb2.LibvirtInput(domain="g")), "localhost"),
    (input_pb2.InputSpec(vcenter=input_pb2.VCenterInput(uri="vpx://u@vc2.lab/DC/esx3.lab?no_verify=1")), "vc2.lab"),
])
def test_source_host(spec, host):
    assert source_host(spec) == host
