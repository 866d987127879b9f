#!/usr/bin/env python3
"""Benchmark: N guests through `v2v fleet` (all at once, under its limits) against the same N
through the installed virt-v2v one after another; prints the makespan ratio. Goal: <= 0.5x.

    .venv/bin/python bench/fleet.py [--guest PATH] [--count 8] [--conversions 2] [--keep]
                                    [--skip-virt-v2v]

Every guest is the same disk image under its own name (-on gN), converted with
`-o local -of qcow2` and TCG (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`) by both tools. The default
image is the real Debian 12 "VMware" guest (../shared/guests/make-linux-guest.sh): virt-v2v cannot
convert the phony guests (they run no programs). Heavy: with the real guest, ~N x 3.5 min for
virt-v2v plus the fleet's own time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
OURS = REPO / ".venv" / "bin" / "v2v"
DEFAULT_GUEST = Path("/var/tmp/guests/linux/debian12-vmware.raw")
GOAL = 0.5
ENV = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")


def fleet(guest: Path, count: int, conversions: int, work: Path) -> tuple[float, dict[str, str]]:
    """Seconds for the whole plan, and each guest's final state."""
    out = work / "fleet-out"
    out.mkdir()
    plan = work / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "limits": {"conversions": conversions},
        "defaults": {"output": {"type": "local", "storage": str(out), "format": "qcow2"}, "convert": {"accel": "tcg"}},
        "guests": [{"name": f"g{n}", "input": {"files": [str(guest)]}, "output": {"name": f"g{n}"}}
                   for n in range(count)]}))
    t0 = time.monotonic()
    res = subprocess.run([str(OURS), "fleet", str(plan), "--state", str(work / "state.db"), "--machine-readable"],
                         capture_output=True, text=True, env=dict(ENV, V2V_WORKDIR_ROOT=str(work / "wr")), check=False)
    took = time.monotonic() - t0
    states = {}
    for line in res.stdout.splitlines():
        status = json.loads(line).get("status")
        if status:
            states[status["name"]] = status["state"].removeprefix("GUEST_STATE_").lower()
    if res.returncode != 0:
        print(f"v2v fleet exited {res.returncode}:\n{res.stderr[-3000:]}", file=sys.stderr)
    return took, states


def sequential(guest: Path, count: int, work: Path) -> tuple[float, list[int]]:
    """Seconds for N virt-v2v runs one after another, and their exit codes."""
    out = work / "virt-v2v-out"
    out.mkdir()
    codes = []
    t0 = time.monotonic()
    for n in range(count):
        res = subprocess.run(["virt-v2v", "-i", "disk", str(guest), "-o", "local", "-os", str(out), "-of", "qcow2",
                              "-on", f"g{n}"], capture_output=True, text=True, env=ENV, check=False)
        if res.returncode != 0:
            print(f"virt-v2v g{n} exited {res.returncode}:\n{res.stderr[-2000:]}", file=sys.stderr)
        codes.append(res.returncode)
    return time.monotonic() - t0, codes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, default=DEFAULT_GUEST, help="the disk image every guest is")
    p.add_argument("--count", type=int, default=8, help="guests (8)")
    p.add_argument("--conversions", type=int, default=2, help="the fleet's conversions at once (2: the cores)")
    p.add_argument("--keep", action="store_true", help="keep outputs, state and logs")
    p.add_argument("--skip-virt-v2v", action="store_true", help="the fleet only")
    a = p.parse_args()
    if a.guest == DEFAULT_GUEST:
        subprocess.run([str(REPO.parent / "shared/guests/make-linux-guest.sh"), "-o", str(DEFAULT_GUEST.parent)],
                       check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="v2v-bench-fleet.", dir="/var/tmp"))
    try:
        ours, states = fleet(a.guest, a.count, a.conversions, work)
        ok = sum(s == "succeeded" for s in states.values())
        print(f"v2v fleet:  {a.count} guests in {ours:7.1f} s ({ok} succeeded, {a.conversions} conversions at once)")
        if a.skip_virt_v2v:
            return 0 if ok == a.count else 1
        theirs, codes = sequential(a.guest, a.count, work)
        print(f"virt-v2v:   {a.count} guests in {theirs:7.1f} s one after another "
              f"({codes.count(0)} succeeded)")
        ratio = ours / theirs
        print(f"makespan ratio v2v fleet / sequential virt-v2v: {ratio:.2f}x (goal <= {GOAL}x: "
              f"{'met' if ratio <= GOAL else 'NOT met'})")
        return 0 if ok == a.count and codes.count(0) == a.count else 1
    finally:
        if a.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
