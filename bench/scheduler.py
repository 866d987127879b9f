#!/usr/bin/env python3
"""Benchmark: the coordinator's scheduler with 2,000 queued guests against 20 (the baseline,
measured in the same run); prints submit-to-first-event latency, the time until every guest is
terminal, the peak thread count and RSS, and the ratios 2000 / 20.

    .venv/bin/python bench/scheduler.py [--guests 20,2000] [--per-host 8] [--timeout 300]

One process: a real coordinator whose worker's input fails every Open at once, so a guest's whole
run is one quick open and what is measured is the coordinator's admission of the queue; every
guest reads from one source host limited to `--per-host` guests at once (0: no limit), and the
worker has the default capacities (2 conversions, 4 copy streams: 12 guests at once), so the rest
wait. The guests are submitted in one Submit, as a fleet plan is. A guest's first event is its "open" step
starting (its run began); the times come from the events' own timestamps, replayed by Follow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.reliability.conftest import coordinator_over  # noqa: E402
from v2v.coordinator.scheduler import Limits  # noqa: E402
from v2v.grpcserver import RunningService, rpc  # noqa: E402
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc, input_pb2, input_pb2_grpc  # noqa: E402

GS = coordinator_pb2
FINAL = (GS.GUEST_STATE_SUCCEEDED, GS.GUEST_STATE_FAILED, GS.GUEST_STATE_CANCELLED)


class FailingOpen(input_pb2_grpc.InputServicer):
    """An input service whose every Open fails at once: the guest ends right after it starts."""

    @rpc
    def Open(self, request: input_pb2.OpenRequest, context: grpc.ServicerContext) -> input_pb2.OpenResponse:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such disk (the benchmark's input fails every open)")

    @rpc
    def Close(self, request: input_pb2.CloseRequest, context: grpc.ServicerContext) -> input_pb2.CloseResponse:
        return input_pb2.CloseResponse()


def job(n: int) -> coordinator_pb2.GuestJob:
    return GS.GuestJob(name=f"g{n}", input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[f"/nonexistent{n}"])))


class Sampler:
    """This process's thread count and resident memory, sampled every few milliseconds: their peaks."""

    def __init__(self) -> None:
        self.threads = 0
        self.rss_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.threads = max(self.threads, threading.active_count() - 1)  # not counting the sampler
            self.rss_mib = max(self.rss_mib, rss_mib())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Figures:
    guests: int
    terminal: int  # how many ended before the timeout
    submit: float  # seconds the Submit call took
    first_p50: float
    first_p95: float
    all_terminal: float  # seconds from the Submit call to the last guest's end
    threads: int
    rss_mib: float

    @property
    def per_guest_ms(self) -> float:
        return self.all_terminal / max(self.terminal, 1) * 1e3


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def measure(guests: int, per_host: int, timeout: float) -> Figures:
    with tempfile.TemporaryDirectory(prefix="v2v-bench-scheduler.") as d:
        inp = RunningService(f"unix:{d}/input.sock", (FailingOpen(), input_pb2_grpc.add_InputServicer_to_server,
                                                      "v2v.v1.Input"))
        try:
            with coordinator_over(Path(d), Limits(per_source_host=per_host), conversions=2, input=inp) as ch, \
                    Sampler() as sampler:
                stub = coordinator_pb2_grpc.CoordinatorStub(ch)
                t0 = time.time()
                ids = stub.Submit(GS.SubmitRequest(jobs=[job(n) for n in range(guests)]), timeout=600).ids
                submit = time.time() - t0
                first: dict[str, float] = {}
                ended: dict[str, float] = {}
                try:
                    for fe in stub.Follow(GS.GuestRef(), timeout=timeout):
                        if fe.HasField("event") and fe.event.HasField("step") and fe.id not in first:
                            first[fe.id] = fe.event.step.timestamp.ToNanoseconds() / 1e9
                        elif fe.HasField("status") and fe.status.state in FINAL:
                            ended[fe.id] = fe.status.ended.ToNanoseconds() / 1e9
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                    for s in stub.List(GS.ListRequest(), timeout=600).guests:  # stop them: the rest is not measured
                        if s.state not in FINAL:
                            stub.Cancel(GS.GuestRef(id=s.id), timeout=600)
                latencies = [first[i] - t0 for i in ids if i in first] or [float("nan")]
                return Figures(guests, len(ended), submit, statistics.median(latencies), p95(latencies),
                               max(ended.values(), default=t0 + timeout) - t0, sampler.threads, sampler.rss_mib)
        finally:
            inp.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guests", default="20,2000", help="BASELINE,LOADED (default 20,2000)")
    p.add_argument("--per-host", type=int, default=8, help="guests read from the source host at once (default 8)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the loaded run to end")
    a = p.parse_args()
    small, big = (int(n) for n in a.guests.split(","))
    runs = [measure(small, a.per_host, a.timeout), measure(big, a.per_host, a.timeout)]
    print(f"guests failing at open, one source host ({a.per_host or 'no limit'} at once), one worker (2 "
          "conversions, 4 copy streams); coordinator, input and client in one process")
    print(f"{'guests':>7} {'ended':>6} {'Submit':>9} {'first p50':>10} {'first p95':>10} {'all ended':>10} "
          f"{'per guest':>10} {'threads':>8} {'RSS':>8}")
    for f in runs:
        print(f"{f.guests:7d} {f.terminal:6d} {f.submit * 1e3:7.0f}ms {f.first_p50:9.2f}s {f.first_p95:9.2f}s "
              f"{f.all_terminal:9.2f}s {f.per_guest_ms:8.2f}ms {f.threads:8d} {f.rss_mib:5.0f}MiB")
    base, load = runs
    print(f"ratio {big}/{small}: first p50 {load.first_p50 / base.first_p50:.1f}x, all ended "
          f"{load.all_terminal / base.all_terminal:.1f}x, per guest {load.per_guest_ms / base.per_guest_ms:.2f}x "
          f"(goal <= 2x), threads {load.threads / base.threads:.2f}x, RSS {load.rss_mib / base.rss_mib:.2f}x")
    return 0 if load.terminal == big else 1


if __name__ == "__main__":
    sys.exit(main())
