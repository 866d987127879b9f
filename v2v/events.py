"""Step events: every step reports its start, its end with timing, and its failure as data."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from google.protobuf import duration_pb2, timestamp_pb2

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

EventSink = Callable[[pb.StepEvent], None]


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def step_event(
    guest: str,
    step: str,
    state: pb.StepState,
    *,
    message: str = "",
    severity: pb.Severity = pb.SEVERITY_INFO,
    disk: int | None = None,
    parent: str = "",
    seconds: float | None = None,
    error: V2VError | None = None,
) -> pb.StepEvent:
    ev = pb.StepEvent(
        guest=guest, step=step, state=state, timestamp=now(), message=message, severity=severity, parent=parent
    )
    if disk is not None:
        ev.disk = disk
    if seconds is not None:
        ev.duration.CopyFrom(duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9)))
    if error is not None:
        ev.error.CopyFrom(error.to_proto())
        ev.severity = pb.SEVERITY_ERROR
    return ev


class StepReporter:
    """Emits the events of one guest's steps to a sink; `step()` times a block of work."""

    def __init__(self, guest: str, sink: EventSink, parent: str = "") -> None:
        self.guest = guest
        self.sink = sink
        self.parent = parent

    @contextmanager
    def step(self, name: str, message: str = "", disk: int | None = None) -> Iterator[None]:
        """Reports STARTED, then SUCCEEDED or FAILED with the duration. Errors raised inside get
        the guest, step and disk filled in (unless the raiser named them) and propagate."""
        self.sink(step_event(self.guest, name, pb.STEP_STATE_STARTED, message=message, disk=disk,
                             parent=self.parent))
        t0 = time.monotonic()
        try:
            yield
        except V2VError as err:
            err.fill(step=self.parent or name, guest=self.guest, disk=disk)
            self.sink(step_event(self.guest, name, pb.STEP_STATE_FAILED, message=err.message, disk=disk,
                                 parent=self.parent, seconds=time.monotonic() - t0, error=err))
            raise
        except Exception as exc:
            wrapped = V2VError(f"{type(exc).__name__}: {exc}", step=self.parent or name, guest=self.guest,
                               disk=disk)
            self.sink(step_event(self.guest, name, pb.STEP_STATE_FAILED, message=wrapped.message, disk=disk,
                                 parent=self.parent, seconds=time.monotonic() - t0, error=wrapped))
            raise wrapped from exc
        self.sink(step_event(self.guest, name, pb.STEP_STATE_SUCCEEDED, message=message, disk=disk,
                             parent=self.parent, seconds=time.monotonic() - t0))

    def note(self, message: str, severity: pb.Severity = pb.SEVERITY_INFO, step: str = "",
             registry_edit: pb.RegistryEdit | None = None) -> None:
        """A message inside the running step: a warning, or a detail worth keeping."""
        ev = step_event(self.guest, step or self.parent, pb.STEP_STATE_NOTE, message=message,
                        severity=severity, parent=self.parent)
        if registry_edit is not None:
            ev.registry_edit.CopyFrom(registry_edit)
        self.sink(ev)

    def warn(self, message: str, step: str = "") -> None:
        self.note(message, pb.SEVERITY_WARNING, step)
