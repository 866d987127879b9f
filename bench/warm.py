#!/usr/bin/env python3
"""Benchmark: the downtime of a warm migration (`v2v warm`, docs/warm.md) against a cold conversion
of the same guest, the bytes the cutover copies against the bytes dirtied before it, and the copy
throughput of the rounds against bare nbdcopy on the same disk.

    .venv/bin/python bench/warm.py [--guest QCOW2] [--dirty 64M] [--full-runs N] [--copy-only] [--keep]

The source is a qcow2 overlay on the guest (the guest image itself is never written), tracked with
persistent dirty bitmaps (the qcow2 changed-block source). Between the rounds, qemu-io dirties
--dirty bytes inside the guest's swap partition (harmless to the conversion), as a running guest
would: once before the precopy round, once before cutover. Then:

- warm: start (full copy), precopy, cutover; the downtime is the cutover's (WarmState.downtime);
- cold: `v2v -i disk OVERLAY -o local` of the same overlay: the guest is down for all of it;
- nbdcopy: `nbdcopy --flush --target-is-zero` from the overlay served as the warm source is (qemu-nbd
  --read-only) to a fresh raw file served as the output serves it (nbdkit file), once before the
  warm start and once after it; the faster of the two is the baseline for the rounds. A round's
  throughput is its changed bytes over its duration.
- full copy against nbdcopy: --full-runs pairs (default 5), each a bare nbdcopy then a warm start
  of a fresh overlay, write-back settled before each; the ratio of their median throughputs. The
  full copy's is its data bytes over the whole round (tracking on, serving, copying). Single runs
  swing by up to 2x on these machines, so medians, not the faster of two.

--copy-only stops after the precopy round (no cutover, no cold conversion: no appliance).

Both use `--accel tcg` (no working KVM here); one after the other, never competing for the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import json_format

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from v2v.extents import probe  # noqa: E402  (after the path is set)
from v2v.nbdserver import Nbdkit, QemuNbd  # noqa: E402
from v2v.v1 import warm_pb2  # noqa: E402

OURS = REPO / ".venv" / "bin" / "v2v"
DEFAULT_GUEST = Path("/var/tmp/guests/linux/debian12-vmware.qcow2")
MBR_SWAP = 0x82
RUN_TIMEOUT = 1800


def size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1:].upper() in units else int(text)


def swap_partition(image: Path, scratch: Path) -> tuple[int, int]:
    """(offset, length) in bytes of the first MBR swap partition of a qcow2 image."""
    mbr = scratch / "mbr"
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1", f"if={image}", f"of={mbr}"],
                   check=True)
    table = mbr.read_bytes()[446:510]
    for i in range(4):
        kind = table[i * 16 + 4]
        start, sectors = struct.unpack_from("<II", table, i * 16 + 8)
        if kind == MBR_SWAP:
            return start * 512, sectors * 512
    raise SystemExit(f"{image}: no MBR swap partition to dirty")


def dirty(image: Path, region: tuple[int, int], amount: int, pattern: int) -> None:
    """Writes `amount` bytes in 1 MiB pieces spread over the region, skipping its first MiB (the swap header)."""
    offset, length = region
    pieces = amount >> 20
    stride = max((length - (2 << 20)) // max(pieces, 1), 1 << 20) & ~((1 << 20) - 1)
    commands = [a for i in range(pieces) for a in ("-c", f"write -P {pattern} {offset + (1 << 20) + i * stride} 1M")]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(image)], check=True, capture_output=True)


def v2v(*args: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    p = subprocess.run([str(OURS), *args], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False)
    if p.returncode != 0:
        sys.exit(f"v2v {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return time.monotonic() - t0, p


def last_state(p: subprocess.CompletedProcess[str]) -> warm_pb2.WarmState:
    states = [json_format.Parse(line, warm_pb2.WarmEvent()).state for line in p.stdout.splitlines()
              if line.startswith('{"state"')]
    return states[-1]


def nbdcopy_baseline(image: Path, scratch: Path) -> tuple[float, int]:
    """(seconds, data bytes) of one bare nbdcopy of the image into a fresh sparse raw file."""
    target = scratch / "nbdcopy-target.raw"
    size = int(json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(image)], check=True,
                                         capture_output=True, text=True).stdout)["virtual-size"])
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(target), str(size)], check=True)
    try:
        with QemuNbd(scratch / "bench-src.sock", scratch / "bench-src.log", "source", image, "qcow2",
                     readonly=True) as src, \
                Nbdkit(scratch / "bench-dst.sock", scratch / "bench-dst.log", "target", "file",
                       [f"file={target}"]) as dst:
            data = probe(src.uri).extents.data
            settle()
            t0 = time.monotonic()
            subprocess.run(["nbdcopy", "--flush", "--target-is-zero", src.uri, dst.uri], check=True)
            return time.monotonic() - t0, data
    finally:
        target.unlink(missing_ok=True)


def settle() -> None:
    """Writes back what earlier steps left dirty (the last baseline's 700 MiB target, the overlay),
    so that neither measurement pays for it: the warm start's `qemu-img bitmap --add` syncs the
    overlay (on a freshly written qcow2 that took 0.36 s here; 0.01 s once synced)."""
    os.sync()


def full_copy_pair(guest: Path, base: Path, env: dict[str, str], n: int) -> tuple[float, float]:
    """(bare nbdcopy s, warm start's full round s) on a fresh overlay of the guest: the same data."""
    overlay, out = base / f"pair{n}.qcow2", base / f"pair{n}-out"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest.absolute()), "-F", "qcow2",
                    str(overlay)], check=True)
    bare, _ = nbdcopy_baseline(overlay, base)
    settle()
    _, p = v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), "--name", f"pair{n}",
               str(overlay), env=env)
    full = round_seconds(last_state(p).rounds[0])
    shutil.rmtree(out)
    return bare, full


def round_seconds(r: warm_pb2.Round) -> float:
    return r.duration.seconds + r.duration.nanos / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest", type=Path, default=DEFAULT_GUEST, help="a qcow2 guest (only read)")
    ap.add_argument("--dirty", default="64M", help="bytes dirtied before each round (MiB multiple; default 64M)")
    ap.add_argument("--full-runs", type=int, default=5, metavar="N", help="full copy / nbdcopy pairs (default 5)")
    ap.add_argument("--copy-only", action="store_true", help="stop after the precopy: no cutover, no cold run")
    ap.add_argument("--keep", action="store_true", help="keep the outputs (the directory is printed)")
    a = ap.parse_args()
    amount = size_bytes(a.dirty)
    base = Path(tempfile.mkdtemp(prefix="v2v-bench-warm.", dir="/var/tmp"))
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(base / "wd"), LIBGUESTFS_BACKEND="direct",
               LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    try:
        overlay = base / "source.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(a.guest.absolute()), "-F", "qcow2",
                        str(overlay)], check=True)
        swap = swap_partition(overlay, base)
        warm_out, cold_out = base / "warm", base / "cold"
        warm_out.mkdir()
        cold_out.mkdir()
        common = ["-o", "local", "-os", str(warm_out), "--name", "guest", "--accel", "tcg"]
        baselines = [nbdcopy_baseline(overlay, base)]
        settle()
        t_start, p = v2v("warm", "--machine-readable", "start", *common, str(overlay), env=env)
        workdir = last_state(p).workdir
        baselines.append(nbdcopy_baseline(overlay, base))
        pairs = [full_copy_pair(a.guest, base, env, n) for n in range(a.full_runs)]
        dirty(overlay, swap, amount, 1)
        t_precopy, p = v2v("warm", "--machine-readable", "precopy", workdir, env=env)
        state = last_state(p)
        if not a.copy_only:
            dirty(overlay, swap, amount, 2)
            t_cutover, p = v2v("warm", "--machine-readable", "cutover", workdir, env=env)
            state = last_state(p)
            t_cold, _ = v2v("-i", "disk", str(overlay), "-o", "local", "-os", str(cold_out), "-on", "guest",
                            "--accel", "tcg", "--machine-readable", env=env)
    finally:
        if a.keep:
            print(f"outputs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    mib = 1 << 20
    print(f"guest {a.guest}, {amount / mib:.0f} MiB dirtied before each round")
    print("| round | changed (MiB) | copied (MiB) | zeroed (MiB) | took (s) | MiB/s |")
    print("|---|---|---|---|---|---|")
    for r in state.rounds:
        d = r.disks[0]
        moved = d.bytes_copied if r.kind == "full" else d.bytes_changed
        print(f"| {r.number} {r.kind} | {d.bytes_changed / mib:.1f} | {d.bytes_copied / mib:.1f} | "
              f"{d.bytes_zeroed / mib:.1f} | {round_seconds(r):.2f} | {moved / mib / round_seconds(r):.0f} |")
    seconds, data = min(baselines)
    rate = data / seconds
    print(f"\nbare nbdcopy: {data / mib:.1f} MiB of data in {' and '.join(f'{s:.2f}' for s, _ in baselines)} s: "
          f"{rate / mib:.0f} MiB/s (the faster)")
    precopy = state.rounds[1]
    precopy_rate = precopy.disks[0].bytes_changed / round_seconds(precopy)
    if pairs:
        bare_s, full_s = statistics.median(b for b, _ in pairs), statistics.median(f for _, f in pairs)
        print(f"full copy against nbdcopy, {len(pairs)} pairs: nbdcopy {', '.join(f'{b:.2f}' for b, _ in pairs)} s, "
              f"full round {', '.join(f'{f:.2f}' for _, f in pairs)} s")
        print(f"full copy / nbdcopy throughput (medians): {bare_s / full_s:.2f}x (goal >= 0.90x)")
    print(f"precopy round / nbdcopy throughput: {precopy_rate / rate:.2f}x")
    if a.copy_only:
        return 0
    downtime = state.downtime.seconds + state.downtime.nanos / 1e9
    cut = state.rounds[-1].disks[0]
    print(f"\nwarm: start {t_start:.1f} s, precopy {t_precopy:.1f} s, cutover {t_cutover:.1f} s wall "
          f"(downtime {downtime:.1f} s)")
    print(f"cold: {t_cold:.1f} s, all of it downtime")
    print(f"downtime warm / cold: {downtime / t_cold:.2f}x")
    print(f"cutover copied {cut.bytes_copied / mib:.1f} MiB for {amount / mib:.1f} MiB dirtied "
          f"({cut.bytes_copied / amount:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
