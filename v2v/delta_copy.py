"""Copying some ranges of a disk from one NBD export to another, for the copier's copies limited to
the extents a meta context marks: a warm migration's rounds (docs/warm.md) and the second pass of
copy while converting (docs/copy.md). nbdcopy copies whole disks; these copy only what changed, so
it is an explicit loop over the changed ranges (as ovirt-imageio does): read from the source and
write to the target, write zeroes where the source reads as zero, flush at the end."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nbd

from v2v.errors import V2VError
from v2v.extents import ALLOCATION, ExtentMap, read_extents
from v2v.nbdclient import connect
from v2v.v1 import types_pb2 as pb

_REQUEST = 4 << 20  # bytes per read/write: what nbdcopy uses by default with qemu-nbd
_ZERO_REQUEST = 1 << 30  # NBD_CMD_WRITE_ZEROES takes 32-bit lengths; stay well below
_PROGRESS_EVERY = 1.0  # seconds between progress callbacks

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total) of the changed ranges


@dataclass
class CopyStats:
    changed: int = 0  # bytes in the changed ranges
    copied: int = 0  # bytes read and written
    zeroed: int = 0  # bytes written as zeroes


def pieces(changed: ExtentMap, data: ExtentMap) -> Iterator[tuple[int, int, bool]]:
    """(start, end, holds data) for the changed ranges, split where the source's data map says
    they read as zero."""
    ends = [e for _, e in data.ranges]
    for start, end in changed.ranges:
        pos = start
        i = bisect.bisect_right(ends, pos)  # the first data range ending after pos
        while i < len(data.ranges) and data.ranges[i][0] < end:
            dstart, dend = data.ranges[i]
            if dstart > pos:
                yield pos, dstart, False
            yield max(pos, dstart), min(dend, end), True
            pos = min(dend, end)
            i += 1
        if pos < end:
            yield pos, end, False


def copy_changes(source: str, target: str, changed: ExtentMap, progress: ProgressCallback | None = None,
                 stop: threading.Event | None = None, allocated: bool = False) -> CopyStats:
    """Copies the `changed` ranges of the export at `source` to `target` and flushes it. Setting
    `stop` ends the copy at the next request with a CANCELLED error. `allocated`: the target is
    preallocated and must stay so: zeroes are written without punching holes (nbdcopy --allocated)."""
    stats = CopyStats(changed=changed.data)
    last = time.monotonic()
    try:
        with connect(source, (ALLOCATION,)) as src, connect(target, (ALLOCATION,)) as dst:
            if dst.get_size() < changed.size:
                raise V2VError(f"the target {target} is smaller than the source ({dst.get_size()} < {changed.size} "
                               "bytes)", pb.ERROR_CODE_BAD_INPUT)
            data = read_extents(src, changed.size)
            zeroes = bytes(_REQUEST)
            zero_flags = nbd.CMD_FLAG_NO_HOLE if allocated else 0
            for start, end, holds_data in pieces(changed, data):
                for off in range(start, end, _REQUEST if holds_data else _ZERO_REQUEST):
                    if stop is not None and stop.is_set():
                        raise V2VError(f"copying from {source} to {target} cancelled", pb.ERROR_CODE_CANCELLED)
                    n = min(end - off, _REQUEST if holds_data else _ZERO_REQUEST)
                    buf = src.pread(n, off) if holds_data else b""
                    if holds_data and buf != zeroes[:n]:
                        dst.pwrite(buf, off)
                        stats.copied += n
                    else:
                        dst.zero(n, off, zero_flags)
                        stats.zeroed += n
                    if progress and time.monotonic() - last >= _PROGRESS_EVERY:
                        progress(stats.copied + stats.zeroed, stats.changed)
                        last = time.monotonic()
            dst.flush()
    except nbd.Error as exc:
        raise V2VError(f"copying from {source} to {target} failed: {exc}", pb.ERROR_CODE_PROCESS_FAILED) from exc
    if progress:
        progress(stats.changed, stats.changed)
    return stats
