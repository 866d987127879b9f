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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from v2v.cli.args import (
    ACCELERATORS,
    answer_plugin_help,
    conversion_parser,
    input_args,
    luks_key,
    root_choice,
    service_path,
    terminate,
)
from v2v.cli.display import HumanDisplay, MachineDisplay
from v2v.cli.inputs import input_spec
from v2v.errors import V2VError, from_rpc_error
from v2v.steps import Step
from v2v.v1 import convert_pb2, coordinator_pb2, input_pb2
from v2v.v1 import types_pb2 as pb

# dests of conversion_parser()'s options that the standalone commands take as they are
INPUT_OPTIONS = ("input", "input_uri", "input_format", "input_transport", "input_options", "input_password", "files")
CONVERT_OPTIONS = ("root", "keys", "accel", "verbose", "trace", "quiet", "virtio_win", "virt_tools_dir")

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
    """The input options of a borrowed command line as the typed InputSpec (its input plugin's mapping)."""
    answer_plugin_help(a)
    return input_spec(input_args(a))


def convert_options(a: argparse.Namespace, *, inspect_only: bool = False,
                    skip_trim: bool = False) -> convert_pb2.ConvertOptions:
    """The borrowed CONVERT_OPTIONS as ConvertOptions, plus what the command itself sets."""
    return convert_pb2.ConvertOptions(accelerator=ACCELERATORS[a.accel], root=root_choice(a.root),
                                      verbose=a.verbose, trace=a.trace, inspect_only=inspect_only,
                                      skip_trim=skip_trim, virtio_win=service_path(a.virtio_win),
                                      virt_tools_dir=service_path(a.virt_tools_dir),
                                      keys=[luks_key(k) for k in a.keys])


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
    signal.signal(signal.SIGTERM, terminate)
    afterwards: list[str] = []
    try:
        return body(afterwards)
    except V2VError as exc:
        err = exc
    except grpc.RpcError as exc:
        err = from_rpc_error(exc, step=Step.SERVICE)
    except KeyboardInterrupt:
        err = V2VError("cancelled", pb.ERROR_CODE_CANCELLED)
    display.status(coordinator_pb2.GuestStatus(name=err.guest, state=coordinator_pb2.GUEST_STATE_FAILED,
                                               step=err.step, error=err.to_proto()))
    print(f"v2v: error: {err.one_line()}", file=sys.stderr)
    for line in afterwards:
        print(f"v2v: {line}", file=sys.stderr)
    return 1
