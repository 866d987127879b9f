"""What a copy reports to people: throttled Progress events and human-readable sizes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from v2v.events import now
from v2v.v1 import types_pb2 as pb

# Clients redraw on every event; more than a few a second per disk is noise on the stream.
PROGRESS_INTERVAL = 0.25



class ProgressThrottle:
    """The Progress events of one disk: at most one per `interval`, and the last (all bytes done)
    exactly once. Called from one thread at a time: nbdcopy's reader, then the disk's worker."""

    def __init__(self, guest: str, disk: int, total: int, emit: Callable[[pb.Event], None],
                 interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.guest = guest
        self.disk = disk
        self.total = total
        self.emit = emit
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = -math.inf
        self._finished = False

    def update(self, done: int) -> None:
        t = self.clock()
        final = done >= self.total
        if self._finished or (not final and t - self._last < self.interval):
            return
        self._last = t
        self._finished = final
        rate = done / (t - self.started) if t > self.started else 0.0
        self.emit(pb.Event(progress=pb.Progress(guest=self.guest, disk=self.disk, bytes_done=min(done, self.total),
                                                bytes_total=self.total, rate=rate, timestamp=now())))

    def finish(self) -> None:
        self.update(self.total)
