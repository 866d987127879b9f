"""Where a disk's data is, from NBD block status ("base:allocation"): what progress counts and what
verification may skip; and the extents another meta context marks, which a copy may be limited to:
what was written through an overlay since it was opened ("qemu:allocation-depth": what copy while
converting copies again) or what a dirty bitmap marks ("qemu:dirty-bitmap:NAME": a warm round)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nbd

from v2v.errors import V2VError
from v2v.nbdclient import connect, location_uri
from v2v.v1 import types_pb2 as pb

ALLOCATION = "base:allocation"
# qemu-nbd --allocation-depth: per block, the layer of the backing chain that holds it (0: none).
# Under qemu-nbd --snapshot the top layer, depth 1, is the throw-away overlay: exactly the blocks
# written, trimmed or zeroed through the export since it started.
ALLOCATION_DEPTH = "qemu:allocation-depth"
_OVERLAY_DEPTH = 1
# qemu-nbd --bitmap=NAME, or qemu's block-export-add bitmaps=[NAME]: the blocks written since the
# bitmap started tracking (one flag, dirty).
DIRTY_BITMAP = "qemu:dirty-bitmap:"
_STATE_DIRTY = 1
# The server may answer less than asked; less than 4 GiB is what every server takes in one request.
_STATUS_CHUNK = 1 << 31


class ExtentMap:
    """The ranges of a disk that may hold data: all but the ones the server promises read as zeroes.
    A hole without that promise (NBD_STATE_HOLE alone) counts as data: nbdcopy reads and copies it."""

    def __init__(self, size: int, data: Iterable[tuple[int, int]]) -> None:
        self.size = size
        self.ranges: list[tuple[int, int]] = []  # (start, end), sorted, disjoint, adjacent ones merged
        for start, end in sorted(data):
            start, end = max(start, 0), min(end, size)
            if start >= end:
                continue
            if self.ranges and start <= self.ranges[-1][1]:
                self.ranges[-1] = (self.ranges[-1][0], max(end, self.ranges[-1][1]))
            else:
                self.ranges.append((start, end))
        self._starts = [s for s, _ in self.ranges]
        self._before = [0, *itertools.accumulate(e - s for s, e in self.ranges)]  # data before range i

    @classmethod
    def full(cls, size: int) -> ExtentMap:
        """A disk whose server cannot tell: every byte may be data."""
        return cls(size, [(0, size)])

    @property
    def data(self) -> int:
        return self._before[-1]

    def data_below(self, offset: int) -> int:
        """Data bytes in [0, offset)."""
        i = bisect.bisect_left(self._starts, offset)  # ranges 0..i-1 start below offset
        if i == 0:
            return 0
        start, end = self.ranges[i - 1]
        return self._before[i - 1] + min(end, offset) - start

    def data_in(self, start: int, end: int) -> int:
        return self.data_below(end) - self.data_below(start)

    def is_zero(self, start: int, end: int) -> bool:
        return self.data_in(start, end) == 0


@dataclass(frozen=True)
class Probe:
    """What the copier learns of a source before copying it."""

    size: int
    extents: ExtentMap
    multi_conn: bool  # nbdcopy opens several connections (and threads) only if both ends allow it


def status_ranges(h: nbd.NBD, size: int, context: str, selected: Callable[[int], bool]) -> ExtentMap:
    """The ranges of the first `size` bytes of a connected export whose block status flags in
    `context` are `selected`. A server that stops answering is an error: guessing is the caller's call."""
    ranges: list[tuple[int, int]] = []
    offset = 0

    def extent(ctx: str, start: int, entries: list[int], err: object) -> int:
        nonlocal offset
        if ctx != context:
            return 0
        pos = start
        for length, flags in zip(entries[::2], entries[1::2], strict=True):
            if selected(flags):
                ranges.append((pos, pos + length))
            pos += length
        offset = max(offset, pos)
        return 0

    while offset < size:
        before = offset
        h.block_status(min(size - offset, _STATUS_CHUNK), offset, extent)
        if offset <= before:
            raise V2VError(f"the server sent no {context} status at offset {before}", pb.ERROR_CODE_PROCESS_FAILED)
    return ExtentMap(size, ranges)


def read_extents(h: nbd.NBD, size: int) -> ExtentMap:
    """The data ranges of the first `size` bytes of a connected export; every byte when the server
    has no block status, or stops answering it."""
    if not h.can_meta_context(ALLOCATION):
        return ExtentMap.full(size)
    try:
        return status_ranges(h, size, ALLOCATION, lambda flags: not flags & nbd.STATE_ZERO)
    except V2VError:
        return ExtentMap.full(size)


def probe(location: str, size: int = 0) -> Probe:
    """The size (unless given), data map and multi-conn of the export at `location`."""
    try:
        with connect(location, (ALLOCATION,)) as h:
            size = size or h.get_size()
            return Probe(size, read_extents(h, size), h.can_multi_conn())
    except nbd.Error as exc:
        raise V2VError(f"cannot read the block status of {location_uri(location)}: {exc}",
                       pb.ERROR_CODE_BAD_INPUT) from exc


def tracks_writes(location: str) -> bool:
    """Whether the export lists what was written through it since it started (ALLOCATION_DEPTH)."""
    try:
        with connect(location, (ALLOCATION_DEPTH,)) as h:
            return bool(h.can_meta_context(ALLOCATION_DEPTH))
    except nbd.Error as exc:
        raise V2VError(f"cannot ask {location_uri(location)} whether it tracks writes: {exc}",
                       pb.ERROR_CODE_BAD_INPUT) from exc


def marking(context: str) -> Callable[[int], bool]:
    """Which block status flags of `context` mark an extent for a copy limited to it."""
    if context == ALLOCATION_DEPTH:
        return lambda depth: depth == _OVERLAY_DEPTH
    if context.startswith(DIRTY_BITMAP) and context != DIRTY_BITMAP:
        return lambda flags: bool(flags & _STATE_DIRTY)
    raise V2VError(f"cannot copy the extents {context!r} marks: only {ALLOCATION_DEPTH} and {DIRTY_BITMAP}NAME "
                   "mark extents to copy", pb.ERROR_CODE_BAD_INPUT)


def marked_ranges(location: str, context: str) -> ExtentMap:
    """The ranges the export's meta context `context` marks (marking()); an export that does not offer
    the context is an error: every block would have to be copied."""
    uri = location_uri(location)
    selected = marking(context)
    try:
        with connect(location, (context,)) as h:
            if not h.can_meta_context(context):
                raise V2VError(f"{uri} does not track writes (no {ALLOCATION_DEPTH} context): its input was not "
                               "opened with track_writes" if context == ALLOCATION_DEPTH else
                               f"{uri} does not export {context}", pb.ERROR_CODE_BAD_INPUT)
            return status_ranges(h, h.get_size(), context, selected)
    except nbd.Error as exc:
        raise V2VError(f"cannot read the extents {context} marks on {uri}: {exc}",
                       pb.ERROR_CODE_PROCESS_FAILED) from exc
