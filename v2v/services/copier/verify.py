"""Verification of a copied disk: source and target are read back over their NBD endpoints and
compared block by block, each endpoint read and hashed by its own thread so that both disks (and both
CPUs) work at once. Blocks that both servers report as reading zeroes are not read at all."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Sequence

import nbd

from v2v.errors import V2VError
from v2v.extents import ALLOCATION, ExtentMap, read_extents
from v2v.nbdclient import connect
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
BLOCK = 4 * MiB
# Blocks a reader may run ahead of the comparison: enough to ride out one side's hiccups, little memory
# (digests only; the data is dropped once hashed).
_AHEAD = 16
# How often a waiting thread looks at the cancel and stop flags.
_POLL = 0.1
# First pass of first_difference: memcmp-speed slices, then the bytes of the first unequal one.
_SLICE = 64 * 1024

Block = tuple[int, int]  # (start, end)


def blocks_to_check(size: int, block: int, source: ExtentMap, target: ExtentMap) -> list[Block]:
    """The blocks of [0, size) that hold data on either side: a block both read as zeroes is equal."""
    return [(start, min(start + block, size)) for start in range(0, size, block)
            if not (source.is_zero(start, start + block) and target.is_zero(start, start + block))]


def first_difference(a: bytes, b: bytes) -> int | None:
    """The index of the first byte where two equal-length buffers differ; None when they do not."""
    for s in range(0, len(a), _SLICE):
        if a[s:s + _SLICE] != b[s:s + _SLICE]:
            return next(i for i in range(s, min(s + _SLICE, len(a))) if a[i] != b[i])
    return None


class _Reader:
    """Reads and hashes the blocks of one endpoint in order, in a thread, into a bounded queue."""

    def __init__(self, h: nbd.NBD, blocks: Sequence[Block], stop: threading.Event, name: str) -> None:
        self.h = h
        self.blocks = blocks
        self.stop = stop
        self.digests: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for start, end in self.blocks:
                if not self._put(hashlib.sha256(self.h.pread(end - start, start)).digest()):
                    return
        except BaseException as exc:  # handed to the comparing thread, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self.stop.is_set():
            try:
                self.digests.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def next(self, cancel: threading.Event) -> bytes:
        while True:
            if cancel.is_set():
                raise V2VError("verification cancelled", pb.ERROR_CODE_CANCELLED)
            try:
                item = self.digests.get(timeout=_POLL)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            return item


def verify(source: str, target: str, size: int, cancel: threading.Event, source_extents: ExtentMap | None = None,
           block: int = BLOCK) -> int:
    """Compares the first `size` bytes of target with source (NBD URIs or socket paths). Raises
    VERIFY_FAILED naming the first differing offset, CANCELLED once `cancel` is set. Returns the bytes
    compared (the skipped zero blocks left out)."""
    try:
        with connect(source, (ALLOCATION,)) as hs, connect(target, (ALLOCATION,)) as ht:
            if (target_size := ht.get_size()) < size:
                raise V2VError(f"target is smaller than the source ({target_size} < {size} bytes)",
                               pb.ERROR_CODE_VERIFY_FAILED)
            blocks = blocks_to_check(size, block, source_extents or read_extents(hs, size), read_extents(ht, size))
            _compare(hs, ht, blocks, cancel)
    except nbd.Error as exc:
        raise V2VError(f"cannot read back the disks to verify them: {exc}", pb.ERROR_CODE_PROCESS_FAILED) from exc
    return sum(end - start for start, end in blocks)


def _compare(hs: nbd.NBD, ht: nbd.NBD, blocks: Sequence[Block], cancel: threading.Event) -> None:
    stop = threading.Event()
    readers = [_Reader(h, blocks, stop, f"verify-{side}") for h, side in ((hs, "source"), (ht, "target"))]
    try:
        bad = next((blk for blk in blocks if readers[0].next(cancel) != readers[1].next(cancel)), None)
    finally:
        stop.set()
        for r in readers:
            r.thread.join()
    if bad is None:
        return
    # The readers are done with the handles: read the block again to say exactly where it differs.
    start, end = bad
    a, b = hs.pread(end - start, start), ht.pread(end - start, start)
    at = first_difference(a, b)
    if at is None:  # equal when read again: one side changed while being verified
        raise V2VError(f"a disk changed while being verified, at offset {start}", pb.ERROR_CODE_VERIFY_FAILED)
    raise V2VError(f"target differs from source at offset {start + at}", pb.ERROR_CODE_VERIFY_FAILED,
                   detail=f"byte 0x{a[at]:02x} in the source, 0x{b[at]:02x} in the target; "
                          f"first differing block: {start}-{end}")
