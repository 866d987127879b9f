"""What a copy reports to people: how many of the source's data bytes nbdcopy has written for sure,
as throttled Progress events with a rate and an ETA.

nbdcopy --progress=FD prints int(100 * offset / virtual size), where offset is the start of the
work range (WORK_RANGE bytes) it has just handed to one of its worker threads, not of work done: the
other workers may still be on earlier ranges, and every worker may have requests in flight. Holes
cost nearly nothing and data costs everything, so the percentage of the virtual size runs ahead
through sparse stretches and stalls in full ones. What is known for sure when range k is handed out:
every earlier range was handed out, at most `workers - 1` of them are still held by the other
workers, and each worker has at most `in_flight` bytes of requests unanswered. So the data of the
earlier ranges, less the data of the largest `workers - 1` of them and `workers * in_flight`, has
been written: a lower bound, that reaches the total only when nbdcopy has exited (finish())."""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable

from v2v.events import now
from v2v.extents import ExtentMap
from v2v.v1 import copier_pb2
from v2v.v1 import types_pb2 as pb

# Clients redraw on every event; more than a few a second per disk is noise on the stream.
PROGRESS_INTERVAL = 0.25

KiB, MiB = 1024, 1024**2
# nbdcopy's (libnbd 1.14) THREAD_WORK_SIZE, and its defaults for the CopyOptions left at 0.
WORK_RANGE = 128 * MiB
DEFAULT_CONNECTIONS = 4
DEFAULT_REQUESTS = 64
DEFAULT_REQUEST_SIZE = 256 * KiB


def range_index(percent: int, size: int) -> int:
    """The work range nbdcopy handed out when it printed `percent`: the first whose start is at or past
    percent% of `size` (on disks of more than 100 ranges several share a percentage: the first claims
    least). 100 (printed once every worker has finished) is the end of the last range."""
    n = math.ceil(size / WORK_RANGE)
    return min(math.ceil(min(percent, 100) * size / (100 * WORK_RANGE)), n)


def nbdcopy_workers(options: copier_pb2.CopyOptions, multi_conn: bool) -> int:
    """The threads nbdcopy runs (one per connection): --connections, at most one per CPU, and one when
    an end lacks multi-conn. Only the source's multi-conn is known here: erring high claims less."""
    if not multi_conn:
        return 1
    return max(1, min(options.connections or DEFAULT_CONNECTIONS, os.cpu_count() or 1))


def in_flight_bytes(options: copier_pb2.CopyOptions) -> int:
    """Bytes one nbdcopy worker may have asked for and not had answered: --requests of --request-size."""
    return (options.requests or DEFAULT_REQUESTS) * (options.request_size or DEFAULT_REQUEST_SIZE)


class CopiedBytes:
    """Data bytes written for sure at each percentage nbdcopy prints (see the module's docstring)."""

    def __init__(self, extents: ExtentMap, workers: int, in_flight: int) -> None:
        self.size = extents.size
        self.total = extents.data
        held = max(workers - 1, 0)
        largest: list[int] = []  # min-heap: the `held` largest data amounts of the ranges so far
        largest_sum = below = 0
        self._at_range: list[int] = []  # index k: when range k is handed out
        for k in range(math.ceil(self.size / WORK_RANGE) + 1):
            self._at_range.append(max(0, below - largest_sum - workers * in_flight))
            data = extents.data_in(k * WORK_RANGE, (k + 1) * WORK_RANGE)
            below += data
            if len(largest) < held:
                heapq.heappush(largest, data)
                largest_sum += data
            elif held and data > largest[0]:
                largest_sum += data - heapq.heapreplace(largest, data)

    def at(self, percent: int) -> int:
        return self._at_range[range_index(percent, self.size)]


class ProgressThrottle:
    """The Progress events of one disk: at most one per `interval`, and the last (all bytes done)
    exactly once, from finish(), which only the end of the copy calls. Called from one thread at a
    time: nbdcopy's reader, then the disk's worker."""

    def __init__(self, guest: str, disk: int, total: int, virtual_size: int, emit: Callable[[pb.Event], None],
                 interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.guest = guest
        self.disk = disk
        self.total = total
        self.virtual_size = virtual_size
        self.emit = emit
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = -math.inf
        self._finished = False

    def update(self, done: int) -> None:
        t = self.clock()
        if self._finished or t - self._last < self.interval:
            return
        self._last = t
        self._emit(min(done, self.total), t)

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._emit(self.total, self.clock())

    def _emit(self, done: int, t: float) -> None:
        rate = done / (t - self.started) if t > self.started else 0.0
        p = pb.Progress(guest=self.guest, disk=self.disk, bytes_done=done, bytes_total=self.total, rate=rate,
                        virtual_size=self.virtual_size, timestamp=now())
        if self._finished:
            p.eta_seconds = 0.0
        elif rate > 0:
            p.eta_seconds = (self.total - done) / rate
        self.emit(pb.Event(progress=p))
