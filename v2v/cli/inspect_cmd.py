"""The input and convert services without an output: `v2v inspect` (as virt-v2v-inspector) and
`v2v --in-place` (as virt-v2v-in-place). Both open the guest, run one Convert call on its NBD
sockets, close it, and describe the guest as a v2v.v1.InspectorReport (docs/standalone.md).

    v2v inspect -i disk guest.img -O guest.json     inspect on the overlay, measure; change nothing
    v2v --in-place -i disk guest.qcow2 -O guest.json  convert the disks where they are, no copy"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from v2v.cli.display import HumanDisplay, MachineDisplay
from v2v.cli.standalone import (
    CONVERT_OPTIONS,
    INPUT_OPTIONS,
    Display,
    add_service_flags,
    borrow,
    convert_options,
    guarded,
    spec_of,
    write_report,
)
from v2v.coordinator.phases import OpenedGuest, PhaseServices, convert_guest
from v2v.steps import Step
from v2v.v1 import coordinator_pb2

INCONSISTENT = ("the guest's disks were being converted in place and may now be in an inconsistent state: "
                "restore them from a backup or snapshot before using the guest")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options both commands take: the input's, the conversion's, -O, the two services."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    borrow(p, INPUT_OPTIONS + CONVERT_OPTIONS)
    p.add_argument("-O", dest="output_file", default="", metavar="FILE",
                   help="write the guest's description, v2v.v1.InspectorReport as protobuf JSON, to FILE")
    add_service_flags(p, ("input", "convert"))
    return p


def finished(display: Display, guest: OpenedGuest, files: list[str]) -> int:
    display.status(coordinator_pb2.GuestStatus(name=guest.name, state=coordinator_pb2.GUEST_STATE_SUCCEEDED,
                                               step=Step.CLOSE, source=guest.opened.source, files=files))
    return 0


def inspect_main(argv: Sequence[str]) -> int:
    p = parser("v2v inspect", "Inspect a guest without converting it: OS, firmware, and each disk's size and data "
                              "after fstrim (on an overlay: the source is never written), to create targets ahead.")
    a = p.parse_intermixed_args(argv)
    a.output_file = a.output_file or "-"
    # Progress lines only when stdout is free for them: by default it carries the report.
    display = HumanDisplay(quiet=a.quiet or a.output_file == "-")

    def body(afterwards: list[str]) -> int:
        spec, options = spec_of(a), convert_options(a, inspect_only=True)
        with PhaseServices({"input": a.input_service, "convert": a.convert_service}) as addresses, \
                OpenedGuest(addresses["input"], spec, display.event, afterwards) as guest:
            result = convert_guest(guest, addresses["convert"], options)
        return finished(display, guest, [write_report(result.report, a.output_file)])

    return guarded(body, display)


def in_place_main(argv: Sequence[str]) -> int:
    p = parser("v2v --in-place", "Convert a guest's disks where they are, without copying them: the disks "
                                 "themselves are changed. Back them up first.")
    p.add_argument("--in-place", action="store_true", required=True, help="convert the disks where they are")
    borrow(p, ("machine_readable",))
    a = p.parse_intermixed_args(argv)
    display: Display = MachineDisplay() if a.machine_readable else HumanDisplay(quiet=a.quiet)

    def body(afterwards: list[str]) -> int:
        # No fstrim: the disks are the source, and discarding their free space is not the conversion's
        # business (it would also turn a preallocated disk sparse).
        spec, options = spec_of(a), convert_options(a, skip_trim=True)
        with PhaseServices({"input": a.input_service, "convert": a.convert_service}) as addresses, \
                OpenedGuest(addresses["input"], spec, display.event, afterwards, in_place=True) as guest:
            try:
                result = convert_guest(guest, addresses["convert"], options)
            except BaseException:
                afterwards.insert(0, INCONSISTENT)
                raise
        files = [d.location for d in guest.opened.source.disks]
        if a.output_file:
            files.append(write_report(result.report, a.output_file))
        return finished(display, guest, files)

    return guarded(body, display)
