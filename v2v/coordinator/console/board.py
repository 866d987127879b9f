"""What the console shows of a fleet: a row per guest (its status, and its disks' copy progress),
totals per state, and each source host's throughput, kept up to date by one thread that follows the
coordinator's event log. It is a view of that log, numbered by its sequence numbers, not a store of
its own: a page asks for the rows changed after the last number it saw and gets exactly those."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2

from v2v.coordinator.pipeline import RESUMABLE_STEPS
from v2v.coordinator.state import FINAL, state_name
from v2v.services.input.locations import source_host
from v2v.steps import Step
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from v2v.coordinator.service import CoordinatorService

GS = coordinator_pb2
_COPY_STEPS = (Step.COPY, Step.PRECOPY)


def _seconds(ts: timestamp_pb2.Timestamp, present: bool) -> float | None:
    return ts.ToNanoseconds() / 1e9 if present else None


def error_dict(err: pb.Error) -> dict[str, Any]:
    return {"step": err.step, "disk": err.disk if err.HasField("disk") else None,
            "code": pb.ErrorCode.Name(err.code).removeprefix("ERROR_CODE_"), "message": err.message,
            "detail": err.detail, "guest": err.guest}


@dataclass
class DiskCopy:
    done: int = 0
    total: int = 0
    rate: float = 0.0


@dataclass
class GuestRow:
    """One guest as the page shows it; `touched` is the sequence number of its last change."""

    status: coordinator_pb2.GuestStatus
    host: str
    touched: int
    disks: dict[int, DiskCopy] = field(default_factory=dict)

    def apply(self, fe: coordinator_pb2.FleetEvent) -> None:
        self.touched = fe.seq
        if fe.HasField("status"):
            if fe.status.attempt != self.status.attempt:
                self.disks.clear()  # a new attempt copies from the start
            self.status = fe.status
            if fe.status.state in FINAL:
                self._stop_rates()
            return
        ev = fe.event
        if ev.HasField("progress"):
            p = ev.progress
            self.disks[p.disk] = DiskCopy(p.bytes_done, p.bytes_total, 0.0 if p.bytes_done >= p.bytes_total else p.rate)
            return
        s = ev.step
        if not s.parent and s.state == pb.STEP_STATE_STARTED:
            self.status.step = s.step
        elif s.step in _COPY_STEPS and not s.HasField("disk") and s.state in (pb.STEP_STATE_SUCCEEDED,
                                                                            pb.STEP_STATE_FAILED):
            self._stop_rates()

    def _stop_rates(self) -> None:
        for d in self.disks.values():
            d.rate = 0.0

    @property
    def rate(self) -> float:
        return sum(d.rate for d in self.disks.values()) if self.status.state == GS.GUEST_STATE_RUNNING else 0.0

    def to_json(self, retry_from: list[str]) -> dict[str, Any]:
        st = self.status
        done, total, rate = sum(d.done for d in self.disks.values()), sum(d.total for d in self.disks.values()), \
            self.rate
        return {"id": st.id, "name": st.name, "state": state_name(st.state), "step": st.step, "attempt": st.attempt,
                "worker": st.worker, "host": self.host, "priority": st.priority, "done": done, "total": total,
                "rate": rate, "eta": (total - done) / rate if rate > 0 and total > done else None,
                "submitted": _seconds(st.submitted, st.HasField("submitted")),
                "started": _seconds(st.started, st.HasField("started")),
                "ended": _seconds(st.ended, st.HasField("ended")),
                "error": error_dict(st.error) if st.HasField("error") else None,
                "target_interrupted": st.target_interrupted, "files": list(st.files),
                "retry_from": retry_from, "seq": self.touched}


class FleetBoard:
    """The rows of every guest of `service`, following its event log in a thread of its own
    (`start`/`stop`); `listen` registers what to call after each batch of changes."""

    def __init__(self, service: CoordinatorService, wait: float = 0.5) -> None:
        self.service = service
        self.wait = wait  # how long one wait for events lasts: the most a stop waits for the thread
        self._lock = threading.Lock()
        self._rows: dict[str, GuestRow] = {}
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The whole log first, for the copy totals only its progress events carry; then each guest's
        # status now, which is newer than any in the log (and the only one of a guest finished
        # before a coordinator restart, which has no events in this log).
        self.seq, past = service.events(0, timeout=0)
        for gid, guest in list(service.guests.items()):
            self._rows[gid] = GuestRow(guest.status(), source_host(guest.rec.job.input), self.seq)
        for fe in past:
            if fe.HasField("event") and fe.id in self._rows:
                self._rows[fe.id].apply(fe)
                self._rows[fe.id].touched = self.seq

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="console-board", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops following the log; the listeners are told once more, so that their streams end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            listeners = list(self._listeners)
        for changed in listeners:
            changed()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def listen(self, changed: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(changed)

    def _follow(self) -> None:
        while not self._stop.is_set():
            seq, batch = self.service.events(self.seq, timeout=self.wait)
            if seq == self.seq:
                continue
            with self._lock:
                for fe in batch:
                    row = self._rows.get(fe.id)
                    if row is None:  # submitted since: its first event is its queued status
                        guest = self.service.guests[fe.id]
                        row = self._rows[fe.id] = GuestRow(guest.status(), source_host(guest.rec.job.input), fe.seq)
                    row.apply(fe)
                self.seq = seq
                listeners = list(self._listeners)
            for changed in listeners:
                changed()

    def _retry_from(self, row: GuestRow) -> list[str]:
        """The steps the Retry API takes for this guest now: none unless it failed or was
        cancelled; setup only while it keeps its conversion."""
        if row.status.state not in (GS.GUEST_STATE_FAILED, GS.GUEST_STATE_CANCELLED):
            return []
        guest = self.service.guests.get(row.status.id)
        kept = guest is not None and guest.run is not None and guest.run.converted is not None
        return [s for s in RESUMABLE_STEPS if s != Step.SETUP or kept]

    def changed_since(self, after: int, guest: str = "") -> tuple[int, list[dict[str, Any]]]:
        """The rows changed after sequence number `after` (of one guest, or all), and the number
        they are current to. A number not of this log's life (before the coordinator started, or
        past its newest) gets every row."""
        with self._lock:
            if after > self.seq:
                after = 0
            rows = [self._rows[guest]] if guest in self._rows else [] if guest else list(self._rows.values())
            return self.seq, [r.to_json(self._retry_from(r)) for r in rows if r.touched > after]

    def row(self, gid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._rows.get(gid)
            return row.to_json(self._retry_from(row)) if row is not None else None

    def summary(self) -> dict[str, Any]:
        """Totals per state, per source host (guests reading it, queued for it, its copy rate, its
        limit), the fleet's bytes and rate, and when it will be done at the pace so far."""
        with self._lock:
            rows = list(self._rows.values())
        limit = self.service.scheduler.limits.per_source_host
        states = Counter(state_name(r.status.state) for r in rows)
        hosts: dict[str, dict[str, Any]] = {}
        for r in rows:
            h = hosts.setdefault(r.host, {"host": r.host, "running": 0, "queued": 0, "rate": 0.0, "limit": limit})
            if r.status.state == GS.GUEST_STATE_RUNNING:
                h["running"] += 1
                h["rate"] += r.rate
            elif r.status.state == GS.GUEST_STATE_QUEUED:
                h["queued"] += 1
        finished = [r for r in rows if r.status.state in FINAL and r.status.HasField("started")]
        left = len(rows) - sum(1 for r in rows if r.status.state in FINAL)
        first = min((r.status.started.ToNanoseconds() / 1e9 for r in rows if r.status.HasField("started")),
                    default=None)
        eta = None
        if finished and left and first is not None:
            eta = (time.time() - first) / len(finished) * left  # guests finished per second so far
        return {"guests": len(rows), "states": {state_name(s): states.get(state_name(s), 0)
                                               for s in GS.GuestState.values() if s},
                "hosts": sorted(hosts.values(), key=lambda h: h["host"]),
                "done": sum(d.done for r in rows for d in r.disks.values()),
                "total": sum(d.total for r in rows for d in r.disks.values()),
                "rate": sum(r.rate for r in rows), "left": left, "eta": eta}
