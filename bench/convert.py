#!/usr/bin/env python3
"""Benchmark: our convert step against virt-v2v's conversion, on the same guest in one run.

    .venv/bin/python bench/convert.py [--guest PATH] [--runs N]

Runs both tools as bench/e2e.py does (one after the other, same libguestfs settings) and prints
two ratios, medians over the runs:

- guest changes: our convert sub-steps that change the guest (everything but launch, inspect,
  mount, fstrim, shutdown, measure) against virt-v2v's "Converting ..." phase. Goal <= 0.8x.
- whole: our open + convert steps against virt-v2v's phases from "Opening the source" to the
  start of "Setting up the destination" (both launch, inspect, convert and trim in there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/ is scripts, not a package)

GOAL = 0.8
NOT_CONVERTING = {"launch", "inspect", "mount", "fstrim", "shutdown", "measure"}


def guest_changes(r: e2e.Result) -> float:
    if r.tool == "v2v":
        return sum(s.secs for s in r.steps if s.parent == "convert" and s.name not in NOT_CONVERTING)
    return sum(s.secs for s in r.steps if s.name.startswith("Converting "))


def whole(r: e2e.Result) -> float:
    return sum(r.phase_times().get(p, 0.0) for p in e2e.LAUNCH_AND_CONVERT)


def print_ratios(ours: list[e2e.Result], theirs: list[e2e.Result]) -> None:
    """The two convert ratios, medians over successful runs."""
    print(f"\n  {'':28} {'v2v':>10} {'virt-v2v':>10}   ratio")
    for label, measure, goal in (("guest changes (converting)", guest_changes, GOAL),
                                 ("open + convert", whole, None)):
        mine = statistics.median(measure(r) for r in ours)
        ref = statistics.median(measure(r) for r in theirs)
        verdict = f"  (goal <= {goal}x: {'met' if mine / ref <= goal else 'NOT met'})" if goal else ""
        print(f"  {label:28} {e2e.fmt(mine)} {e2e.fmt(ref)}   {mine / ref:5.2f}x{verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, help=f"disk image to convert (default {e2e.DEFAULT_GUEST})")
    p.add_argument("--runs", type=int, default=1, help="conversions per tool (default 1)")
    a = p.parse_args(argv)
    guest = e2e.prepare_guest(a.guest)
    env = dict(os.environ, LIBGUESTFS_BACKEND=os.environ.get("LIBGUESTFS_BACKEND", "direct"),
               LIBGUESTFS_BACKEND_SETTINGS=os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"))
    top = Path(tempfile.mkdtemp(prefix="v2v-bench-convert.", dir="/var/tmp"))
    ours: list[e2e.Result] = []
    theirs: list[e2e.Result] = []
    try:
        for i in range(a.runs):
            base = top / f"run{i + 1}"
            base.mkdir()
            for run, results in ((e2e.run_ours, ours), (e2e.run_virt_v2v, theirs)):
                results.append(run(guest, base, env))
                print(f"run {i + 1}: {results[-1].tool} {results[-1].wall:.1f} s"
                      + ("" if results[-1].ok else " FAILED"), flush=True)
            for d in base.glob("*-out"):
                shutil.rmtree(d)
        if not all(r.ok for r in ours + theirs):
            e2e.report(ours, theirs)
            return 1
        e2e.print_steps("our v2v: steps", ours)
        print_ratios(ours, theirs)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
