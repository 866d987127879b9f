#!/usr/bin/env python3
"""Benchmark: our copier against bare nbdcopy, qemu-img convert and the machine's own limit, on one
sparse disk served over NBD, plus a 4-disk guest copied in parallel and in turn.

    .venv/bin/python bench/copy_speed.py [--size 8G] [--runs N] [--dir /var/tmp] [--check] [--keep]

The source is a raw file of --size bytes, half of it random data in 64 MiB pieces alternating with
64 MiB holes, served read-only by nbdkit's file plugin; the target a sparse file served by another
nbdkit, emptied (truncated) before every run, so every tool copies into zeroes (--target-is-zero)
and flushes at the end. Speeds are in data bytes (what a copy has to move: holes cost nothing) per
second. The source is read once first so that every run finds it in the page cache alike.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from v2v.nbdserver import Nbdkit, nbd_uri
from v2v.services.copier.service import CopierService
from v2v.units import parse_size
from v2v.v1 import copier_pb2

MiB = 1024**2
CHUNK = 64 * MiB  # data and holes alternate in pieces of this size
PIECE = 4 * MiB  # os.urandom and dd work in pieces of this size
DISKS = 4  # the multi-disk guest


Check = tuple[Path, int, Path, int]  # cmp SOURCE from OFFSET against TARGET, LENGTH bytes


@dataclass
class Measure:
    """One thing timed: `reset` (untimed) empties its targets, `copy` is the timed work."""

    name: str
    copy: Callable[[], object]
    reset: Callable[[], object]
    data: int  # bytes of data it moves
    checks: list[Check] = field(default_factory=list)
    secs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.secs)


def disk_size(text: str) -> int:
    n = parse_size(text)
    if n <= 0 or n % (DISKS * 2 * CHUNK):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive multiple of {DISKS * 2 * CHUNK // MiB} MiB")
    return n


def data_chunks(size: int) -> list[int]:
    """Offsets of the data chunks of a disk: every other CHUNK, from the first."""
    return list(range(0, size, 2 * CHUNK))


def make_source(path: Path, size: int) -> int:
    """The sparse source disk; returns its data bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in data_chunks(size):
            f.seek(offset)
            for _ in range(CHUNK // PIECE):
                f.write(os.urandom(PIECE))
        f.flush()
        os.fsync(f.fileno())
    return len(data_chunks(size)) * CHUNK


def empty(path: Path, size: int) -> None:
    """A target full of zeroes again (all blocks freed), without restarting its server."""
    with open(path, "ab") as f:
        f.truncate(0)
        f.truncate(size)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run(*cmds: list[str]) -> None:
    """Runs commands at once; exits the bench if one fails."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    for cmd, proc in zip(cmds, procs, strict=True):
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd)} failed: {err.strip()}")


class Bench:
    """The disks and their servers, in one temporary directory."""

    def __init__(self, top: Path, size: int, stack: ExitStack) -> None:
        self.top = top
        self.size = size
        self.stack = stack
        self.source = top / "source.raw"
        self.quarter = size // DISKS

    def serve(self, name: str, plugin_args: list[str], filters: tuple[str, ...] = (), readonly: bool = False) -> str:
        """An nbdkit file export; returns its NBD URI."""
        sock = self.top / f"{name}.sock"
        self.stack.enter_context(Nbdkit(sock, self.top / f"{name}.log", name, "file", plugin_args,
                                        filters=filters, readonly=readonly))
        return nbd_uri(sock)

    def target(self, name: str, size: int) -> tuple[Path, str]:
        path = self.top / f"{name}.raw"
        empty(path, size)
        return path, self.serve(name, [f"file={path}"])

    def ours(self, pairs: list[tuple[str, str]], **options: int | bool) -> None:
        """Our CopierService in this process, as the pipeline calls it (flush, target-is-zero)."""
        disks = [copier_pb2.DiskCopy(disk=i, source=src, target=dst) for i, (src, dst) in enumerate(pairs)]
        request = copier_pb2.CopyRequest(workdir=str(self.top), guest="bench", disks=disks,
                                         options=copier_pb2.CopyOptions(flush=True, target_is_zero=True, **options))
        for _ in CopierService().copy(request):
            pass


def nbdcopy(src: str, dst: str) -> list[str]:
    return ["nbdcopy", "--flush", "--target-is-zero", src, dst]


def measures(b: Bench, data: int) -> list[Measure]:
    src = b.serve("in", [f"file={b.source}"], readonly=True)
    dst_path, dst = b.target("out", b.size)
    scratch = b.top / "scratch.raw"
    # The 4-disk guest: quarters of the same source (nbdkit's offset filter), four targets.
    quarters = [b.serve(f"in-q{i}", [f"file={b.source}", f"offset={i * b.quarter}", f"range={b.quarter}"],
                        ("offset",), readonly=True) for i in range(DISKS)]
    targets = [b.target(f"out-q{i}", b.quarter) for i in range(DISKS)]
    pairs = [(q, t) for q, (_, t) in zip(quarters, targets, strict=True)]

    def reset_one() -> None:
        empty(dst_path, b.size)

    def reset_quarters() -> None:
        for path, _ in targets:
            empty(path, b.quarter)

    whole: list[Check] = [(b.source, 0, dst_path, b.size)]
    parts: list[Check] = [(b.source, i * b.quarter, path, b.quarter) for i, (path, _) in enumerate(targets)]
    return [
        # One dd, reading the source in order (its holes from the page cache, as zeroes) and writing
        # what is not zero: the sequential read + write any copy has to do.
        Measure("dd (read + write: the limit)", lambda: run(
            ["dd", f"if={b.source}", f"of={scratch}", f"bs={PIECE}", "conv=sparse,fdatasync", "status=none"]),
            lambda: scratch.unlink(missing_ok=True), data, [(b.source, 0, scratch, b.size)]),
        Measure("nbdcopy", lambda: run(nbdcopy(src, dst)), reset_one, data, whole),
        Measure("qemu-img convert", lambda: run(
            ["qemu-img", "convert", "-n", "-W", "--target-is-zero", "-f", "raw", "-O", "raw", src, dst]),
            reset_one, data, whole),
        Measure("ours", lambda: b.ours([(src, dst)]), reset_one, data, whole),
        Measure("ours --verify", lambda: b.ours([(src, dst)], verify=True), reset_one, data, whole),
        Measure(f"nbdcopy, {DISKS} disks at once", lambda: run(*[nbdcopy(s, t) for s, t in pairs]),
                reset_quarters, data, parts),
        Measure("ours, largest disk alone", lambda: b.ours(pairs[:1]), reset_quarters, data // DISKS, parts[:1]),
        Measure(f"ours, {DISKS} disks, parallel=0", lambda: b.ours(pairs, parallel=0), reset_quarters, data, parts),
        Measure(f"ours, {DISKS} disks, parallel=1", lambda: b.ours(pairs, parallel=1), reset_quarters, data, parts),
    ]


def goal(what: str, value: float, text: str, met: bool) -> None:
    print(f"  {what:38} {value:6.2f}x   (goal {text}: {'met' if met else 'NOT met'})")


def report(ms: dict[str, Measure], data: int, size: int) -> None:
    runs = len(next(iter(ms.values())).secs)
    print(f"\n== times ({data / 2**30:.1f} GiB of data in {size / 2**30:.1f} GiB"
          + (f"; median of {runs} runs, min-max" if runs > 1 else "") + ") ==")
    for m in ms.values():
        spread = f"  ({min(m.secs):.2f}-{max(m.secs):.2f})" if runs > 1 else ""
        print(f"  {m.name:38} {m.median:7.2f} s  {m.data / m.median / MiB:7.0f} MiB/s{spread}")
    ours = ms["ours"].median
    print("\n== ratios (same run) ==")
    speed = {name: ms[name].median / ours for name in ("nbdcopy", "qemu-img convert", "dd (read + write: the limit)")}
    goal("ours vs nbdcopy (speed)", speed["nbdcopy"], ">= 1.0x", speed["nbdcopy"] >= 1.0)
    goal("ours vs qemu-img convert (speed)", speed["qemu-img convert"], ">= 1.3x", speed["qemu-img convert"] >= 1.3)
    dd = speed["dd (read + write: the limit)"]
    goal("ours vs dd, the limit (speed)", dd, ">= 0.9x", dd >= 0.9)
    par, alone = ms[f"ours, {DISKS} disks, parallel=0"].median, ms["ours, largest disk alone"].median
    goal(f"{DISKS} disks at once vs largest alone (time)", par / alone, "<= 1.15x", par / alone <= 1.15)
    print(f"  {'parallel=1 vs parallel=0 (time)':38} {ms[f'ours, {DISKS} disks, parallel=1'].median / par:6.2f}x")
    print(f"  {f'ours vs nbdcopy, {DISKS} disks at once (speed)':38} "
          f"{ms[f'nbdcopy, {DISKS} disks at once'].median / par:6.2f}x")
    print(f"  {'verify (time, on top of the copy)':38} {ms['ours --verify'].median / ours - 1:6.2f}x")


@contextmanager
def workspace(parent: Path, keep: bool) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="v2v-bench-copy.", dir=parent))
    try:
        yield top
    finally:
        if keep:
            print(f"\nkept: {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=disk_size, default=disk_size("8G"),
                   help="source disk size, a multiple of 512M (default 8G; 2G for a quick look)")
    p.add_argument("--runs", type=int, default=1,
                   help="rounds of every measure, each in another order (default 1); medians are reported")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the disks go (default /var/tmp)")
    p.add_argument("--check", action="store_true", help="cmp source and target after every copy (slow)")
    p.add_argument("--keep", action="store_true", help="keep the disks and logs (the directory is printed)")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be at least 1")
    for tool in ("nbdkit", "nbdcopy", "qemu-img", "dd", "cmp"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")

    with workspace(a.dir, a.keep) as top, ExitStack() as stack:
        b = Bench(top, a.size, stack)
        print(f"bench: {a.size / 2**30:.1f} GiB source, half data, in {top}; {os.cpu_count()} CPUs", flush=True)
        data = make_source(b.source, a.size)
        ms = {m.name: m for m in measures(b, data)}
        run(["dd", f"if={b.source}", "of=/dev/null", f"bs={PIECE}", "status=none"])  # into the page cache
        for i in range(a.runs):
            # Round after round, not each measure N times in a row: a slow spell of a shared machine
            # then spreads over all of them. In another order each round (the same for the same --runs):
            # a copy right after another one pays for its writeback and freed blocks.
            for m in random.Random(i).sample(list(ms.values()), len(ms)) if i else ms.values():
                m.reset()
                print(f"  run {i + 1}: {m.name} ...", end=" ", flush=True)
                m.secs.append(timed(m.copy))
                print(f"{m.secs[-1]:.2f} s", flush=True)
                if a.check:
                    run(*[["cmp", "-i", f"{off}:0", "-n", str(n), str(s), str(t)] for s, off, t, n in m.checks])
    report(ms, data, a.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
