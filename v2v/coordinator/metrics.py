"""The coordinator's Prometheus metrics (`v2v serve coordinator --metrics ADDR:PORT`, docs/fleet.md)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from v2v.coordinator.state import state_name
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

# Steps take from a second (open) to many minutes (convert under TCG, copying a big disk).
_STEP_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))


def cause_name(code: pb.ErrorCode) -> str:
    return pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()


class FleetMetrics:
    """One registry per coordinator, so tests can run several in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.guests = Gauge("v2v_guests", "Guests by state", ["state"], registry=self.registry)
        self.step_seconds = Histogram("v2v_step_duration_seconds", "Duration of each finished top-level step",
                                      ["step", "outcome"], buckets=_STEP_BUCKETS, registry=self.registry)
        self.bytes_copied = Counter("v2v_copied_bytes", "Data bytes copied to targets", registry=self.registry)
        self.copy_rate = Gauge("v2v_copy_rate_bytes_per_second", "Sum of the copy rates of the copies running now",
                               registry=self.registry)
        self.failures = Counter("v2v_failures", "Failed guests by the step that failed and the cause",
                                ["step", "cause"], registry=self.registry)
        for state in coordinator_pb2.GuestState.values():
            if state:
                self.guests.labels(state_name(state)).set(0)

    def serve(self, address: str) -> None:
        """Serves /metrics at HOST:PORT (":PORT" = every interface) in a daemon thread."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def states(self, states: list[int]) -> None:
        tally = Tally(states)
        for state in coordinator_pb2.GuestState.values():
            if state:
                self.guests.labels(state_name(state)).set(tally.get(state, 0))

    def step_ended(self, step: str, seconds: float, failed: bool) -> None:
        self.step_seconds.labels(step, "failed" if failed else "succeeded").observe(seconds)

    def failed(self, error: pb.Error) -> None:
        self.failures.labels(error.step or "unknown", cause_name(error.code)).inc()

    def copied(self, nbytes: int) -> None:
        if nbytes > 0:
            self.bytes_copied.inc(nbytes)

    def rate(self, total: float) -> None:
        self.copy_rate.set(total)
