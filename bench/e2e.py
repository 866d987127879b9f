#!/usr/bin/env python3
"""Benchmark: convert the real test guest with our `v2v` and with the installed virt-v2v, same
options, one after the other, and compare wall times and per-step times. Goal: ours <= 0.7x.

    .venv/bin/python bench/e2e.py [--guest PATH] [--runs N] [--keep] [--skip-virt-v2v]

Both run `-i disk GUEST -o local -os DIR -of qcow2 --machine-readable` under the same libguestfs
settings (direct backend, TCG). Ours reports steps as JSON lines ({"step": StepEvent},
{"progress": ...}, a final {"status": ...}); virt-v2v prints "[  23.2] Inspecting the source"
lines, whose gaps are its phase times (as ../shared/guests/v2v-test.sh reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_GUESTS = Path(os.environ.get("V2V_SHARED", REPO.parent / "shared")) / "guests"
DEFAULT_GUEST_DIR = Path("/var/tmp/guests/linux")
DEFAULT_GUEST = DEFAULT_GUEST_DIR / "debian12-vmware.raw"
OURS = REPO / ".venv" / "bin" / "v2v"
GOAL = 0.7
RUN_TIMEOUT = 1800  # s; a TCG conversion takes ~3-4 min, a hang should not block for ever

# Our top-level steps, in pipeline order, and the virt-v2v phases that do the same work (by the
# start of their message), so the two can be compared phase by phase. Not quite the same cut:
# virt-v2v launches its appliance while "Opening the source", ours inside "convert" (its "launch"
# sub-step), hence also the open+convert row of the comparison.
PHASES: dict[str, tuple[str, ...]] = {
    "open": ("Setting up the source", "Opening the source"),
    "convert": ("Inspecting the source", "Checking for sufficient free disk space", "Converting ",
                "Mapping filesystem data", "Closing the overlay", "Assigning disks to buses",
                "Checking if the guest needs BIOS or UEFI"),
    "setup": ("Setting up the destination",),
    "copy": ("Copying disk",),
    "finalize": ("Creating output metadata", "Finishing off"),
}
OTHER = "other"
LAUNCH_AND_CONVERT = ("open", "convert")
_VIRT_V2V_LINE = re.compile(r"^\[ *([0-9.]+)\] (.*)$")


@dataclass(frozen=True)
class Step:
    name: str  # ours: a step name, "copy[0]" for a disk's; virt-v2v: the phase line
    secs: float
    parent: str = ""  # ours: the enclosing step of a sub-step ("convert")


@dataclass
class Result:
    """One conversion by one tool: wall time, its steps in order, and whether it worked."""

    tool: str
    wall: float
    ok: bool
    steps: list[Step] = field(default_factory=list)
    error: str = ""

    def phase_times(self) -> dict[str, float]:
        """Seconds per phase of PHASES (or OTHER). Our sub-steps are left out: their time is
        inside their parent's."""
        totals: dict[str, float] = {}
        for st in self.steps:
            if st.parent:
                continue
            if self.tool == "v2v":
                base = st.name.split("[", 1)[0]  # copy[0] -> copy
                phase = base if base in PHASES else OTHER
            else:
                phase = virt_v2v_phase(st.name)
            totals[phase] = totals.get(phase, 0.0) + st.secs
        return totals


def virt_v2v_phase(message: str) -> str:
    return next((p for p, starts in PHASES.items() if message.startswith(starts)), OTHER)


def seconds(duration: str) -> float:
    """A protobuf Duration as JSON ("12.345s") -> 12.345."""
    return float(duration.removesuffix("s") or 0)


def parse_ours(lines: Iterable[str]) -> tuple[list[Step], dict | None]:
    """Our --machine-readable output -> finished steps in start order and the final status
    (None if the run died before it)."""
    order: list[tuple[str, str]] = []  # (parent, name)
    took: dict[tuple[str, str], float] = {}
    status = None
    for line in lines:
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if "status" in obj:
            status = obj["status"]
        if "step" not in obj:
            continue
        ev = obj["step"]
        name = (ev.get("parent", ""), ev["step"] + (f"[{ev['disk']}]" if "disk" in ev else ""))
        if ev.get("state") == "STEP_STATE_STARTED" and name not in order:
            order.append(name)
        elif ev.get("state") in ("STEP_STATE_SUCCEEDED", "STEP_STATE_FAILED", "STEP_STATE_CANCELLED"):
            if name not in order:  # a step reported only when done
                order.append(name)
            took[name] = seconds(ev.get("duration", "0s"))
    return [Step(n, took[(p, n)], p) for p, n in order if (p, n) in took], status


def parse_virt_v2v(stdout: str, wall: float) -> list[Step]:
    """virt-v2v's "[  t] phase" lines -> (phase, seconds until the next one, or until the end).
    Arguments after a colon ("Setting up the destination: -o local -os DIR") are dropped: they
    differ from run to run, the phase does not."""
    marks = [(float(m[1]), m[2].split(": ", 1)[0]) for m in map(_VIRT_V2V_LINE.match, stdout.splitlines()) if m]
    ends = [t for t, _ in marks[1:]] + [wall]
    return [Step(msg, end - t) for (t, msg), end in zip(marks, ends, strict=True)]


def run(cmd: list[str], log_prefix: Path, env: dict[str, str]) -> tuple[float, int, str, str]:
    """Runs a conversion; keeps its stdout/stderr next to the outputs. (wall s, rc, stdout, stderr)"""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -1
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = f"timed out after {RUN_TIMEOUT} s"
    wall = time.monotonic() - t0
    log_prefix.with_suffix(".stdout").write_text(out)
    log_prefix.with_suffix(".stderr").write_text(err)
    return wall, rc, out, err


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def run_ours(guest: Path, base: Path, env: dict[str, str]) -> Result:
    out_dir = base / "v2v-out"
    out_dir.mkdir()
    # A private work-directory root: nothing shared with other v2v runs on the machine.
    env = dict(env, V2V_WORKDIR_ROOT=str(base / "v2v-work"))
    cmd = [str(OURS), "-i", "disk", str(guest), "-o", "local", "-os", str(out_dir), "-of", "qcow2",
           "--machine-readable"]
    wall, rc, out, err = run(cmd, base / "v2v", env)
    try:
        steps, status = parse_ours(out.splitlines())
    except (json.JSONDecodeError, KeyError) as exc:
        return Result("v2v", wall, False, error=f"unreadable --machine-readable output ({exc}); stderr:\n{tail(err)}")
    state = (status or {}).get("state", "")
    if rc == 0 and state == "GUEST_STATE_SUCCEEDED":
        return Result("v2v", wall, True, steps)
    if status is None:  # it died before reporting: its stderr (a traceback) says why
        return Result("v2v", wall, False, steps, f"rc={rc}, no final status; stderr:\n{tail(err)}")
    e = status.get("error", {})
    return Result("v2v", wall, False, steps, f"rc={rc}, {state}: {e.get('code', '?')} in step "
                                             f"{e.get('step', '?')}: {e.get('message', '')}")


def run_virt_v2v(guest: Path, base: Path, env: dict[str, str]) -> Result:
    out_dir = base / "virt-v2v-out"
    out_dir.mkdir()
    cmd = ["virt-v2v", "-i", "disk", str(guest), "-o", "local", "-os", str(out_dir), "-of", "qcow2",
           "--machine-readable"]
    wall, rc, out, err = run(cmd, base / "virt-v2v", env)
    steps = parse_virt_v2v(out, wall)
    if rc == 0:
        return Result("virt-v2v", wall, True, steps)
    return Result("virt-v2v", wall, False, steps, f"rc={rc}; stderr:\n{tail(err)}")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(secs: float | None) -> str:
    return f"{secs:8.1f} s" if secs is not None else f"{'-':>8}  "


def print_steps(title: str, results: list[Result]) -> None:
    """Each step of one tool, median over its successful runs, in the order of the first run."""
    ok = [r for r in results if r.ok] or results  # a failed run's steps still show where it stopped
    print(f"\n== {title}" + (f" (median of {len(ok)} runs)" if len(ok) > 1 else "") + " ==")
    for parent, name in dict.fromkeys((st.parent, st.name) for r in ok for st in r.steps):
        secs = median([st.secs for r in ok for st in r.steps if (st.parent, st.name) == (parent, name)])
        print(f"{'    ' if parent else '  '}{fmt(secs)}  {name}")
    print(f"  {fmt(median([r.wall for r in ok]))}  wall time")


def report(ours: list[Result], theirs: list[Result]) -> bool:
    """Prints the comparison; True when every run worked."""
    print("\n== runs ==")
    for results in (ours, theirs):
        for i, r in enumerate(results, 1):
            print(f"  {r.tool:9} run {i}: {r.wall:7.1f} s  {'ok' if r.ok else 'FAILED'}")
            if not r.ok:
                print(textwrap.indent(r.error, "    "))

    if ours:
        print_steps("our v2v: steps", ours)
    if theirs:
        print_steps("virt-v2v: phases (gap to the next phase line)", theirs)

    good_ours = [r for r in ours if r.ok]
    good_theirs = [r for r in theirs if r.ok]
    if good_ours and good_theirs:
        print("\n== by phase (median s) ==")
        print(f"  {'phase':12} {'v2v':>10} {'virt-v2v':>10}   ratio")
        our_ph = [r.phase_times() for r in good_ours]
        their_ph = [r.phase_times() for r in good_theirs]
        for phase in [*PHASES, OTHER]:
            a = median([p[phase] for p in our_ph if phase in p])
            b = median([p[phase] for p in their_ph if phase in p])
            if a is None and b is None:
                continue
            ratio = f"{a / b:6.2f}x" if a is not None and b else "     -"
            print(f"  {phase:12} {fmt(a)} {fmt(b)}   {ratio}")
        a = median([sum(p.get(ph, 0.0) for ph in LAUNCH_AND_CONVERT) for p in our_ph])
        b = median([sum(p.get(ph, 0.0) for ph in LAUNCH_AND_CONVERT) for p in their_ph])
        print(f"  {'+'.join(LAUNCH_AND_CONVERT):12} {fmt(a)} {fmt(b)}   " + (f"{a / b:6.2f}x" if a and b else "     -"))
        a_wall = statistics.median(r.wall for r in good_ours)
        b_wall = statistics.median(r.wall for r in good_theirs)
        ratio = a_wall / b_wall
        verdict = "met" if ratio <= GOAL else "NOT met"
        print(f"  {'wall':12} {fmt(a_wall)} {fmt(b_wall)}   {ratio:5.2f}x  (goal <= {GOAL}x: {verdict})")
    elif ours and not good_ours:
        print("\nour v2v failed: no ratio (see the error above; --keep keeps its logs and work directory)")
    return all(r.ok for r in [*ours, *theirs])


def prepare_guest(path: Path | None) -> Path:
    """The given guest as is; else the shared real guest, (re)built by its script (cached: <1 s)."""
    if path is not None:
        if not path.is_file():
            sys.exit(f"bench: no such guest: {path}")
        return path.resolve()
    subprocess.run([str(SHARED_GUESTS / "make-linux-guest.sh"), "-o", str(DEFAULT_GUEST_DIR)], check=True,
                   stdout=subprocess.DEVNULL)
    return DEFAULT_GUEST


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, help=f"disk image to convert (default: {DEFAULT_GUEST}, built if needed)")
    p.add_argument("--runs", type=int, default=1, help="conversions per tool (default 1); medians are reported")
    p.add_argument("--keep", action="store_true", help="keep the outputs and logs (the directory is printed)")
    p.add_argument("--skip-virt-v2v", action="store_true", help="run only our v2v")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if not OURS.exists():
        sys.exit(f"bench: {OURS} is missing: run `make setup` first")
    if not a.skip_virt_v2v and shutil.which("virt-v2v") is None:
        sys.exit("bench: virt-v2v is not installed (apt-get install virt-v2v), or use --skip-virt-v2v")

    guest = prepare_guest(a.guest)
    # The same libguestfs settings for both tools: KVM does not work for guests on our machines.
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    # /var/tmp, not /tmp: each output is a disk of up to the guest's size, and /tmp is often small.
    top = Path(tempfile.mkdtemp(prefix="v2v-bench.", dir="/var/tmp"))
    print(f"bench: {guest} ({guest.stat().st_size / 2**30:.1f} GiB), {a.runs} run(s); outputs in {top}", flush=True)
    ours: list[Result] = []
    theirs: list[Result] = []
    try:
        for i in range(a.runs):
            # One tool at a time: run side by side they would compete for the same CPUs.
            base = top / f"run{i + 1}"
            base.mkdir()
            print(f"run {i + 1}: v2v ...", end=" ", flush=True)
            ours.append(run_ours(guest, base, env))
            print(f"{ours[-1].wall:.1f} s{'' if ours[-1].ok else ' FAILED'}", flush=True)
            if not a.skip_virt_v2v:
                print(f"run {i + 1}: virt-v2v ...", end=" ", flush=True)
                theirs.append(run_virt_v2v(guest, base, env))
                print(f"{theirs[-1].wall:.1f} s{'' if theirs[-1].ok else ' FAILED'}", flush=True)
            if not a.keep:  # each run's outputs take gigabytes: gone before the next run
                for d in base.glob("*-out"):
                    shutil.rmtree(d)
        ok = report(ours, theirs)
    finally:
        if a.keep:
            print(f"\nkept: {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
