#!/usr/bin/env python3
"""Benchmark: a coordinator under a dashboard farm's load against the same coordinator idle.

    .venv/bin/python bench/coordinator_load.py [--streams 500] [--calls 200]

A real coordinator (its gRPC service, scheduler and SQLite state) in this process, whose worker's
input service holds every Open (tests/reliability's HeldOpen), so every guest stays running and its
streams stay open; the other phase services are never reached. First idle, then with --streams
Watch/Follow streams open on a running guest: --calls rounds of Submit, Status, List and Cancel,
each timed. Prints the median and worst latency of each call in both states, their ratio, and the
process's RSS before and after (matrix item 6 of the reliability issue: every call answered, RSS
bounded, Submit never hanging behind the streams).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reliability.conftest import HELD_JOB, HeldOpen, coordinator_over  # noqa: E402
from v2v.grpcserver import RunningService  # noqa: E402
from v2v.v1 import coordinator_pb2 as GS  # noqa: E402
from v2v.v1 import coordinator_pb2_grpc, input_pb2_grpc  # noqa: E402

CALLS = ("Submit", "Status", "List", "Cancel")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed_rounds(stub: coordinator_pb2_grpc.CoordinatorStub, calls: int) -> dict[str, list[float]]:
    """`calls` rounds of Submit, Status, List, Cancel of a new guest; seconds per call."""
    times: dict[str, list[float]] = {c: [] for c in CALLS}

    def timed(name: str, call: Callable[..., Any], request: object) -> Any:
        t0 = time.monotonic()
        out = call(request, timeout=30)
        times[name].append(time.monotonic() - t0)
        return out

    for n in range(calls):
        gid = timed("Submit", stub.Submit, GS.SubmitRequest(job=GS.GuestJob(name=f"load{n}", input=HELD_JOB.input))).id
        timed("Status", stub.Status, GS.GuestRef(id=gid))
        timed("List", stub.List, GS.ListRequest())
        timed("Cancel", stub.Cancel, GS.GuestRef(id=gid))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=500, help="Watch/Follow streams held open (default 500)")
    ap.add_argument("--calls", type=int, default=200, help="rounds of Submit/Status/List/Cancel (default 200)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="v2v-load.", dir="/tmp") as d:
        directory = Path(d)
        held = HeldOpen()
        inp = RunningService(f"unix:{directory}/input.sock",
                             (held, input_pb2_grpc.add_InputServicer_to_server, "v2v.v1.Input"))
        try:
            with coordinator_over(directory, input=inp) as ch:
                stub = coordinator_pb2_grpc.CoordinatorStub(ch)
                watched = stub.Submit(GS.SubmitRequest(job=HELD_JOB), timeout=30).id
                rss0 = rss_mib()
                idle = timed_rounds(stub, a.calls)
                t0 = time.monotonic()
                streams = [stub.Follow(GS.GuestRef(id=watched)) if n % 2 else stub.Watch(GS.GuestRef(id=watched))
                           for n in range(a.streams)]
                for call in streams[1::2]:
                    next(call)  # each Follow answers with the guest's status: its stream is being served
                opened = time.monotonic() - t0
                loaded = timed_rounds(stub, a.calls)
                rss1 = rss_mib()
                for call in streams:
                    call.cancel()
                held.release.set()
        finally:
            held.release.set()
            inp.stop()
    print(f"{a.streams} streams opened in {opened:.2f} s; {a.calls} rounds of each call, idle then loaded")
    print("| call | idle median (ms) | idle worst | loaded median (ms) | loaded worst | loaded / idle (medians) |")
    print("|---|---|---|---|---|---|")
    for c in CALLS:
        i, lo = statistics.median(idle[c]) * 1e3, statistics.median(loaded[c]) * 1e3
        print(f"| {c} | {i:.2f} | {max(idle[c]) * 1e3:.1f} | {lo:.2f} | {max(loaded[c]) * 1e3:.1f} | {lo / i:.2f}x |")
    print(f"RSS: {rss0:.0f} MiB before the streams, {rss1:.0f} MiB with them (this process: the coordinator, its "
          "stand-in input, the client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
