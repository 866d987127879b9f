#!/usr/bin/env python3
"""Benchmark: the coordinator's unary calls with 500 Watch/Follow streams open, against the same
calls on an idle coordinator (the baseline, measured in the same run); prints the latency ratios
and the process's RSS. The reliability probe found the 33rd stream locked every other call out.

    .venv/bin/python bench/streams.py [--streams 500] [--calls 200]

One process: a real coordinator whose worker's input holds every Open (tests/reliability's
HeldOpen), so the guests stay RUNNING and their streams stay open; Status, List and Submit are
timed from the same process over a Unix socket. Goal: every call answered, p95 loaded <= 2x idle.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.reliability.conftest import HELD_JOB, HeldOpen, coordinator_over  # noqa: E402
from v2v.grpcserver import RunningService  # noqa: E402
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc, input_pb2_grpc  # noqa: E402

GS = coordinator_pb2
JOB = HELD_JOB


def timed(calls: int, fn: Callable[[], object]) -> list[float]:
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def measure(stub: coordinator_pb2_grpc.CoordinatorStub, gid: str, calls: int) -> dict[str, list[float]]:
    return {
        "Status": timed(calls, lambda: stub.Status(GS.GuestRef(id=gid), timeout=10)),
        "List": timed(calls, lambda: stub.List(GS.ListRequest(), timeout=10)),
        "Submit": timed(max(calls // 10, 1), lambda: stub.Submit(GS.SubmitRequest(job=JOB), timeout=10)),
    }


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(stub: coordinator_pb2_grpc.CoordinatorStub, streams_wanted: int, calls: int) -> None:
    gid = stub.Submit(GS.SubmitRequest(job=JOB), timeout=10).id
    idle_rss = rss_mib()
    idle = measure(stub, gid, calls)
    streams = [stub.Follow(GS.GuestRef(id=gid)) for _ in range(streams_wanted)]
    opened = sum(1 for s in streams if next(s).id == gid)
    loaded = measure(stub, gid, calls)
    print(f"{opened} of {streams_wanted} Follow streams open; max RSS {idle_rss:.0f} MiB idle, "
          f"{rss_mib():.0f} MiB loaded (coordinator, input and clients in one process)")
    print(f"{'call':8} {'idle p50':>10} {'idle p95':>10} {'loaded p50':>11} {'loaded p95':>11} "
          f"{'p95 ratio':>10}")
    worst = 0.0
    for name in idle:
        ratio = p95(loaded[name]) / p95(idle[name])
        worst = max(worst, ratio)
        print(f"{name:8} {statistics.median(idle[name]) * 1e3:8.2f}ms {p95(idle[name]) * 1e3:8.2f}ms "
              f"{statistics.median(loaded[name]) * 1e3:9.2f}ms {p95(loaded[name]) * 1e3:9.2f}ms "
              f"{ratio:9.2f}x")
    print(f"worst p95 ratio, loaded / idle: {worst:.2f}x (goal <= 2x)")
    for s in streams:
        s.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="v2v-bench-streams.") as d:
        held = HeldOpen()
        inp = RunningService(f"unix:{d}/input.sock", (held, input_pb2_grpc.add_InputServicer_to_server,
                                                      "v2v.v1.Input"))
        try:
            with coordinator_over(Path(d), input=inp) as ch:
                try:
                    report(coordinator_pb2_grpc.CoordinatorStub(ch), a.streams, a.calls)
                finally:
                    held.release.set()  # before the coordinator stops: its guests' Opens end
        finally:
            inp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
