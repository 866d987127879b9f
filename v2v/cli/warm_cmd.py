"""`v2v warm start|precopy|cutover|status`: a warm migration from the command line, each
subcommand one call to the Warm service (coordinator/warm.py; docs/warm.md).

    v2v warm start -o local -os out/ guest.qcow2        tracking on, full copy; prints the work directory
    v2v warm start -o local -os out/ --qmp /run/vm.qmp --node disk0
    v2v warm precopy WORKDIR [--rounds N --interval S]  copy what changed since the last round
    v2v warm cutover WORKDIR [--stop-source]            last round, convert in place, finalize
    v2v warm status WORKDIR                             the migration's state as protobuf JSON

The Warm service is started in this process unless --warm ADDR names one; it uses the input,
convert and output services given (--input ... or $V2V_INPUT ...), else it starts them too."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import json_format

from v2v.cli.args import VERIFY_BOOT, add_verify_boot, answer_plugin_help
from v2v.cli.display import HumanDisplay, MachineDisplay
from v2v.cli.outputs import output_spec
from v2v.cli.standalone import (
    CONVERT_OPTIONS,
    Display,
    add_service_flags,
    borrow,
    convert_options,
    guarded,
)
from v2v.coordinator.phases import PhaseServices
from v2v.coordinator.warm.service import WARM_PHASES, seconds, warm_servicer
from v2v.grpcserver import RunningService, channel, wait_ready
from v2v.units import human_size
from v2v.v1 import output_pb2, warm_pb2, warm_pb2_grpc
from v2v.v1 import types_pb2 as pb

OUTPUT_OPTIONS = ("output", "output_storage", "output_uri", "output_options", "output_format", "output_alloc",
                  "output_name", "overwrite")


@contextmanager
def warm_stub(a: argparse.Namespace) -> Iterator[warm_pb2_grpc.WarmStub]:
    """The Warm service given by --warm, else one in this process on a private socket."""
    if a.warm:
        ch = channel(a.warm)
        wait_ready(ch, "warm")
        try:
            yield warm_pb2_grpc.WarmStub(ch)
        finally:
            ch.close()
        return
    given = {s: getattr(a, f"{s}_service") for s in WARM_PHASES}
    if getattr(a, "verify_boot", ""):  # the boot check's service too: $V2V_VERIFY, else one started here
        given["verify"] = os.environ.get("V2V_VERIFY", "")
    with embedded_warm(given, Path(a.workdir_root).resolve() if a.workdir_root else None) as stub:
        yield stub


@contextmanager
def embedded_warm(given: dict[str, str], root: Path | None) -> Iterator[warm_pb2_grpc.WarmStub]:
    """The Warm service in this process on a private socket, over the phase services `given` (an
    address each; "" = one started here too): the same gRPC path as `v2v serve warm`."""
    with PhaseServices(given, root) as addresses, tempfile.TemporaryDirectory(prefix="v2v-warm.") as d:
        address = f"unix:{Path(d) / 'warm.sock'}"
        svc = RunningService(address, warm_servicer(addresses, root))
        ch = channel(address)
        try:
            yield warm_pb2_grpc.WarmStub(ch)
        finally:
            ch.close()
            svc.stop()


def round_line(r: warm_pb2.Round) -> str:
    changed = sum(d.bytes_changed for d in r.disks)
    copied = sum(d.bytes_copied for d in r.disks)
    return (f"round {r.number} ({r.kind}): {human_size(changed)} changed, {human_size(copied)} copied "
            f"in {seconds(r.duration):.1f} s")


class WarmDisplay:
    """The conversion's displays for steps; rounds and the final state as lines (or JSON objects)."""

    def __init__(self, machine: bool, quiet: bool) -> None:
        self.machine = machine
        self.steps: Display = MachineDisplay() if machine else HumanDisplay(quiet=quiet)
        self.quiet = quiet

    def event(self, ev: warm_pb2.WarmEvent) -> None:
        if self.machine:
            print(json_format.MessageToJson(ev, preserving_proto_field_name=True, indent=None), flush=True)
        elif ev.HasField("step"):
            self.steps.event(pb.Event(step=ev.step))
        elif ev.HasField("round") and not self.quiet:
            print(f"  {round_line(ev.round)}", flush=True)
        elif ev.HasField("state") and not self.quiet:
            self.summary(ev.state)

    @staticmethod
    def summary(st: warm_pb2.WarmState) -> None:
        print(f"{st.guest}: {warm_pb2.WarmPhase.Name(st.phase)}, {len(st.rounds)} round(s); work directory "
              f"{st.workdir}:")
        print(f"    {st.path}")
        if st.phase == warm_pb2.WARM_PHASE_DONE:
            print(f"downtime (cutover start to finish): {seconds(st.downtime):.1f} s; the output is in:")
            for f in st.files:
                print(f"    {f}")


def start_request(a: argparse.Namespace) -> warm_pb2.StartRequest:
    disks = [warm_pb2.WarmSource(qcow2=os.path.abspath(f)) for f in a.files]
    disks += [warm_pb2.WarmSource(qmp=warm_pb2.QmpDisk(socket=os.path.abspath(a.qmp), node=n)) for n in a.nodes]
    alloc = output_pb2.ALLOCATION_PREALLOCATED if a.output_alloc == "preallocated" else output_pb2.ALLOCATION_SPARSE
    return warm_pb2.StartRequest(
        name=a.name, disks=disks, convert=convert_options(a),
        output=output_spec(a.output, a.output_storage, a.output_uri, a.output_options, name=a.output_name,
                           format=a.output_format, allocation=alloc, overwrite=a.overwrite))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="v2v warm", description="Migrate a running guest in rounds, then convert "
                                "it with a short downtime (docs/warm.md).")
    p.add_argument("--warm", default=os.environ.get("V2V_WARM", ""), metavar="ADDR",
                   help="use this Warm service ($V2V_WARM) instead of starting one in this process")
    add_service_flags(p, WARM_PHASES)
    p.add_argument("--machine-readable", action="store_true", help="one WarmEvent as JSON per line on stdout")
    p.add_argument("--workdir-root", default="", metavar="DIR",
                   help="where the services started here keep work directories (default $V2V_WORKDIR_ROOT, "
                        "else /var/tmp/v2v); a --warm service has its own")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start tracking changes and copy every disk whole")
    borrow(start, OUTPUT_OPTIONS + tuple(c for c in CONVERT_OPTIONS if c != "quiet"))
    start.add_argument("--name", default="", help="the guest's name (default: the first disk's file name)")
    start.add_argument("--qmp", default="", metavar="SOCKET", help="a running qemu's QMP socket (with --node)")
    start.add_argument("--node", dest="nodes", action="append", default=[], metavar="NODE",
                       help="a block node of the --qmp qemu to migrate, once per disk")
    start.add_argument("files", nargs="*", metavar="QCOW2", help="qcow2 disks stopped between rounds")
    precopy = sub.add_parser("precopy", help="copy what changed since the last round")
    precopy.add_argument("--rounds", type=int, default=1, metavar="N", help="rounds to run (default 1)")
    precopy.add_argument("--interval", type=float, default=0.0, metavar="S", help="seconds between round starts")
    cutover = sub.add_parser("cutover", help="last round with the source stopped, convert, finalize")
    cutover.add_argument("--stop-source", action="store_true",
                         help="pause a running qemu source first (crash-consistent, as pulling the plug)")
    add_verify_boot(cutover)
    cutover.add_argument("--rollback", choices=["on-verify-failure"], default="",
                         help="if the boot check fails, resume the source that --stop-source paused (the target is "
                              "kept either way)")
    sub.add_parser("status", help="print the migration's state (v2v.v1.WarmState, protobuf JSON)")
    for s in (precopy, cutover, sub.choices["status"]):
        s.add_argument("workdir", help="the work directory `v2v warm start` printed: its name, or its path "
                                       "(whose parent is then the --workdir-root)")
    return p


def warm_main(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    if "/" in getattr(a, "workdir", ""):  # the path `start` printed: the services take its name
        path = Path(a.workdir).resolve()
        a.workdir, a.workdir_root = path.name, a.workdir_root or str(path.parent)
    if a.command == "start":
        answer_plugin_help(a)
        if bool(a.qmp) != bool(a.nodes):
            parser().error("start: --qmp and --node go together")
        if not a.files and not a.nodes:
            parser().error("start: give the source disks (qcow2 files, or --qmp SOCKET --node NODE)")
    display = WarmDisplay(a.machine_readable, a.quiet)

    def body(afterwards: list[str]) -> int:
        with warm_stub(a) as stub:
            if a.command == "status":
                print(json_format.MessageToJson(stub.Status(warm_pb2.StatusRequest(workdir=a.workdir)),
                                                preserving_proto_field_name=True))
                return 0
            calls: list[Callable[[], Iterator[warm_pb2.WarmEvent]]]
            if a.command == "start":
                calls = [lambda: stub.Start(start_request(a))]
            elif a.command == "precopy":
                calls = [lambda: stub.Precopy(warm_pb2.PrecopyRequest(workdir=a.workdir))] * max(a.rounds, 1)
            else:
                calls = [lambda: stub.Cutover(warm_pb2.CutoverRequest(
                    workdir=a.workdir, stop_source=a.stop_source, verify_boot=VERIFY_BOOT[a.verify_boot],
                    rollback=warm_pb2.ROLLBACK_ON_VERIFY_FAILURE if a.rollback else warm_pb2.ROLLBACK_UNSPECIFIED))]
            for n, call in enumerate(calls):
                began = time.monotonic()
                for ev in call():
                    display.event(ev)
                if n + 1 < len(calls):
                    time.sleep(max(0.0, a.interval - (time.monotonic() - began)))
        return 0

    return guarded(body, display.steps)


if __name__ == "__main__":
    sys.exit(warm_main(sys.argv[1:]))
