"""What the standalone commands share: `v2v open` (open_cmd), `v2v inspect` and `v2v --in-place`
(inspect_cmd), each phase service useful on its own (docs/standalone.md).

They drive the phase services themselves, over gRPC like the coordinator does: the coordinator's
API takes whole conversions only. Shared here: the conversion command line's own input options, the
services a command uses (given, or started in this process), one guest opened through the Input
service and closed whatever happens, and one way of failing."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf import json_format

from v2v.coordinator.cli import ACCELERATORS, _terminate, conversion_parser, root_choice
from v2v.coordinator.display import HumanDisplay, MachineDisplay
from v2v.coordinator.inputs import InputArgs, input_spec
from v2v.coordinator.options import Options
from v2v.coordinator.pipeline import guest_name
from v2v.coordinator.servers import RunningService, phase_servicer
from v2v.errors import V2VError, from_rpc_error
from v2v.events import StepReporter
from v2v.grpcserver import channel
from v2v.nbdserver import nbd_uri
from v2v.v1 import convert_pb2, coordinator_pb2, input_pb2, input_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

# dests of conversion_parser()'s options that the standalone commands take as they are
INPUT_OPTIONS = ("input", "input_uri", "input_format", "input_transport", "input_options", "input_password", "files")
CONVERT_OPTIONS = ("root", "accel", "verbose", "trace", "quiet")

Display = HumanDisplay | MachineDisplay


def borrow(parser: argparse.ArgumentParser, dests: Iterable[str]) -> None:
    """Adds conversion_parser()'s own actions for `dests` (flags, help, choices, defaults), so -i,
    -ic, --root ... read the same in every command and a new input type reaches them all at once.
    argparse has no public way to share single actions; `parents=` would bring -o and the rest too."""
    wanted = set(dests)
    for action in conversion_parser()._actions:
        if action.dest in wanted:
            parser._add_action(action)


def add_service_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """--input ADDR, --convert ADDR ... (default $V2V_INPUT, ...): a running service to use instead
    of one started in this process. dest is NAME_service: -i already owns `input`."""
    for name in names:
        env = f"V2V_{name.upper()}"
        parser.add_argument(f"--{name}", dest=f"{name}_service", default=os.environ.get(env, ""), metavar="ADDR",
                            help=f"use this {name} service (unix:PATH or HOST:PORT; ${env}) instead of starting one "
                                 "in this process; it must see the same $V2V_WORKDIR_ROOT")


def spec_of(a: argparse.Namespace) -> input_pb2.InputSpec:
    """The input options of a borrowed command line as the typed InputSpec (coordinator/inputs.py)."""
    return input_spec(InputArgs(a.input, a.files, a.input_format, a.input_uri, a.input_transport, a.input_password,
                                Options("-io", "", a.input_options)))


def convert_options(a: argparse.Namespace, **extra: bool) -> convert_pb2.ConvertOptions:
    """The borrowed CONVERT_OPTIONS as ConvertOptions, plus what the command itself sets."""
    return convert_pb2.ConvertOptions(accelerator=ACCELERATORS[a.accel], root=root_choice(a.root),
                                      verbose=a.verbose, trace=a.trace, **extra)


class PhaseServices:
    """The phase services a command uses, by name -> given address ("" = none given). A service not
    given is started in this process on a private Unix socket, over the same gRPC path as `v2v serve`.
    Entering gives every address; leaving stops what was started and with it every NBD server and
    appliance it still owns, so nothing outlives the command."""

    def __init__(self, given: dict[str, str]) -> None:
        self.given = given
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._started: list[RunningService] = []

    def __enter__(self) -> dict[str, str]:
        addresses = dict(self.given)
        try:
            for name, address in self.given.items():
                if address:
                    continue
                if self._dir is None:
                    self._dir = tempfile.TemporaryDirectory(prefix="v2v-svc.")
                addresses[name] = f"unix:{Path(self._dir.name) / name}.sock"
                self._started.append(RunningService(addresses[name], phase_servicer(name)))
        except BaseException:
            self.stop()
            raise
        return addresses

    def stop(self) -> None:
        for svc in reversed(self._started):
            svc.stop()
        self._started.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class OpenedGuest:
    """One guest opened through the Input service, in a work directory of its own; its steps go to
    `sink` as the coordinator's do. Leaving the `with` block closes it whatever happened; a failed
    run's logs stay, and `afterwards` gets a line saying where."""

    def __init__(self, input_address: str, spec: input_pb2.InputSpec, sink: Callable[[pb.Event], None],
                 afterwards: list[str], in_place: bool = False) -> None:
        self.spec = spec
        self.in_place = in_place
        self.name = guest_name(coordinator_pb2.GuestJob(input=spec))
        self.sink = sink
        self.report = StepReporter(self.name, lambda ev: sink(pb.Event(step=ev)))
        self.afterwards = afterwards
        self._channel = channel(input_address)
        self._input = input_pb2_grpc.InputStub(self._channel)
        self.workdir = WorkDir.create(self.name)
        self.opened = input_pb2.OpenResponse()

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """A timed step whose RPC failure comes back as the service's own structured error."""
        with self.report.step(step):
            try:
                yield
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, step=step, guest=self.name) from None

    @property
    def uris(self) -> list[str]:
        """The NBD URI of each disk, index = disk index."""
        return [nbd_uri(Path(s)) for s in self.opened.sockets]

    def __enter__(self) -> OpenedGuest:
        try:
            with self.phase("open"):
                self.opened = self._input.Open(input_pb2.OpenRequest(
                    workdir=str(self.workdir.path), guest=self.name, input=self.spec, in_place=self.in_place))
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        # Close even after a failed Open: the service may have started servers before failing.
        try:
            self._input.Close(input_pb2.CloseRequest(workdir=str(self.workdir.path)))
        except grpc.RpcError as exc:
            self.report.warn(f"close: {from_rpc_error(exc, step='close').message}", step="close")
        finally:
            self._channel.close()
        logs = self.workdir.path / "logs"
        if et is None or not any(logs.iterdir()):  # a refused request leaves no log worth keeping
            self.workdir.remove()
        else:
            self.afterwards.append(f"logs of the failed run kept in {logs}")


def write_report(report: convert_pb2.InspectorReport, path: str) -> str:
    """The report as protobuf JSON (proto field names) to `path`, or to stdout for "" or "-"; returns
    where it went. Fields at zero are printed too, so a script finds disk 0's "index" and every size.
    The file appears whole or not at all: a manager may be polling for it."""
    text = json_format.MessageToJson(report, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) + "\n"
    if path in ("", "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return "(stdout)"
    target = Path(path).absolute()
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return str(target)


def guarded(body: Callable[[list[str]], int], display: Display) -> int:
    """Runs a command's body: SIGTERM stops it as Ctrl-C does (through the same cleanup), and a failure
    is one line on stderr, then the lines the body left in `afterwards`, and exit status 1."""
    signal.signal(signal.SIGTERM, _terminate)
    afterwards: list[str] = []
    try:
        return body(afterwards)
    except V2VError as exc:
        err = exc
    except grpc.RpcError as exc:
        err = from_rpc_error(exc, step="service")
    except KeyboardInterrupt:
        err = V2VError("cancelled", pb.ERROR_CODE_CANCELLED)
    display.status(coordinator_pb2.GuestStatus(name=err.guest, state=coordinator_pb2.GUEST_STATE_FAILED,
                                               step=err.step, error=err.to_proto()))
    print(f"v2v: error: {err.one_line()}", file=sys.stderr)
    for line in afterwards:
        print(f"v2v: {line}", file=sys.stderr)
    return 1


def standalone_main(argv: Sequence[str]) -> int:
    """`v2v open ...`, `v2v inspect ...`, `v2v --in-place ...`: what cli.main hands over."""
    args = list(argv)
    if args[:1] == ["open"]:
        from v2v.coordinator.open_cmd import open_main

        return open_main(args[1:])
    if args[:1] == ["inspect"]:
        from v2v.coordinator.inspect_cmd import inspect_main

        return inspect_main(args[1:])
    from v2v.coordinator.inspect_cmd import in_place_main

    return in_place_main(args)


if __name__ == "__main__":
    sys.exit(standalone_main(sys.argv[1:]))
