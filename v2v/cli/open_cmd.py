"""`v2v open`: the input service alone, as virt-v2v-open. The guest's disks are opened read-only
behind overlays and served on NBD sockets; then either a program runs on them

    v2v open -i disk guest.img --run 'virt-inspector --format=raw @@'

(@@ becomes `-a nbd://?socket=SOCKET` per disk, the way libguestfs tools take NBD disks; the exit
status is the program's), or their NBD URIs are printed and served until Ctrl-C / SIGTERM. Writes land in the
overlays; nothing of it stays running afterwards."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence

from v2v.cli.display import HumanDisplay
from v2v.cli.standalone import (
    INPUT_OPTIONS,
    add_service_flags,
    borrow,
    guarded,
    spec_of,
)
from v2v.coordinator.phases import OpenedGuest, PhaseServices


def open_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="v2v open", description="Open a guest's disks read-only (writes go to throw-away overlays) and serve "
                                     "them over NBD, to run a program on them or for any NBD client.")
    borrow(p, INPUT_OPTIONS)
    p.add_argument("--run", metavar="'PROGRAM @@'",
                   help="run PROGRAM through the shell with @@ replaced by '-a nbd://?socket=SOCKET' per disk (as "
                        "libguestfs tools take disks), then close; the exit status is the program's. Without --run: "
                        "print one NBD URI per disk and serve them until Ctrl-C or SIGTERM")
    add_service_flags(p, ("input",))
    return p


def guestfs_uri(sock: str) -> str:
    """A Unix socket as libguestfs tools take it: their URI syntax, not the NBD one (nbd+unix://),
    which libguestfs 1.48 reads as a file name."""
    return f"nbd://?socket={sock}"


def run_program(template: str, sockets: Sequence[str]) -> int:
    """The program through the shell, as system(3) runs it: @@ replaced, each URI quoted (they hold
    `?`, which the shell would glob), Ctrl-C left to the program (an interactive guestfish keeps
    running). Killed by a signal, it exits 128+N as in a shell."""
    command = template.replace("@@", " ".join(f"-a {shlex.quote(guestfs_uri(s))}" for s in sockets))
    # A do-nothing handler rather than SIG_IGN: exec resets handlers, not ignores, so the program
    # still gets Ctrl-C's default.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        proc = subprocess.Popen(command, shell=True)
        try:
            rc = proc.wait()
        except BaseException:  # SIGTERM to us: the program goes too, before the disks do
            proc.terminate()
            proc.wait()
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - rc if rc < 0 else rc


def serve_until_stopped(uris: Sequence[str]) -> int:
    """One URI per line on stdout (for scripts), then wait for Ctrl-C or SIGTERM. A script may stop us
    as soon as it has read the URIs, while the notice is still being written: that is a stop too."""
    try:
        print("\n".join(uris), flush=True)
        print(f"v2v open: serving {len(uris)} disk(s) until Ctrl-C or SIGTERM; writes go to overlays, never to "
              "the source", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0


def open_main(argv: Sequence[str]) -> int:
    a = open_parser().parse_intermixed_args(argv)
    display = HumanDisplay(quiet=True)  # the program's output is what counts; warnings and errors still show

    def body(afterwards: list[str]) -> int:
        spec = spec_of(a)
        with PhaseServices({"input": a.input_service}) as addresses, \
                OpenedGuest(addresses["input"], spec, display.event, afterwards) as guest:
            if a.run is not None:
                return run_program(a.run, guest.opened.sockets)
            return serve_until_stopped(guest.uris)

    return guarded(body, display)
