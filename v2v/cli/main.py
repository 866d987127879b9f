"""`v2v`: virt-v2v's command line on top of the coordinator.

    v2v -i disk guest.img -o local -os out/          convert (embedded services unless configured)
    v2v serve input --listen unix:/run/v2v/in.sock   run one service
    v2v certs DIR                                    make mutual TLS certificates (--tls-dir DIR)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from rich.console import Console

from v2v.cli.args import answer_plugin_help, build_job, conversion_parser, terminate
from v2v.cli.display import HumanDisplay, MachineDisplay, print_source
from v2v.errors import V2VError, from_rpc_error
from v2v.grpcserver import channel, unix_socket_path, wait_ready
from v2v.steps import Step
from v2v.tls import TLS_DIR_ENV, add_tls_argument, use_tls_dir
from v2v.v1 import coordinator_pb2, coordinator_pb2_grpc


def run_job(address: str, job: coordinator_pb2.GuestJob, display: HumanDisplay | MachineDisplay) -> \
        coordinator_pb2.GuestStatus:
    """Submits the guest, shows its events until it ends; Ctrl-C / SIGTERM cancel it cleanly."""
    ch = channel(address)
    wait_ready(ch, "coordinator")
    stub = coordinator_pb2_grpc.CoordinatorStub(ch)
    gid = stub.Submit(coordinator_pb2.SubmitRequest(job=job)).id
    ref = coordinator_pb2.GuestRef(id=gid)
    seen = 0  # the last event's sequence number
    try:
        for fe in stub.Follow(ref):
            seen = fe.seq
            if fe.HasField("event"):
                display.event(fe.event)
    except KeyboardInterrupt:
        stub.Cancel(ref)
        for _ in stub.Follow(coordinator_pb2.GuestRef(id=gid, after_seq=seen)):  # until its cleanup is done
            pass
    status: coordinator_pb2.GuestStatus = stub.Status(ref)
    ch.close()
    return status


def convert_main(argv: Sequence[str]) -> int:
    parser = conversion_parser()
    a = parser.parse_intermixed_args(argv)
    answer_plugin_help(a)
    display: HumanDisplay | MachineDisplay = MachineDisplay() if a.machine_readable else \
        HumanDisplay(quiet=a.quiet or a.print_source)
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    signal.signal(signal.SIGTERM, terminate)
    try:
        use_tls_dir(a.tls_dir, "client")
        job = build_job(a)
        if a.coordinator:
            status = run_job(a.coordinator, job, display)
        else:
            from v2v.coordinator.servers import EmbeddedServices

            with EmbeddedServices() as address:
                status = run_job(address, job, display)
    except V2VError as err:
        status = coordinator_pb2.GuestStatus(state=coordinator_pb2.GUEST_STATE_FAILED, error=err.to_proto())
    except grpc.RpcError as exc:
        rpc_err = from_rpc_error(exc, step=Step.COORDINATOR)
        status = coordinator_pb2.GuestStatus(state=coordinator_pb2.GUEST_STATE_FAILED, error=rpc_err.to_proto())
    display.status(status)
    if status.state != coordinator_pb2.GUEST_STATE_SUCCEEDED:
        err_console.print(f"v2v: error: {V2VError.from_proto(status.error).one_line()}", markup=False)
        return 1
    if a.print_source and not a.machine_readable:
        print_source(status.source)
    return 0


def serve_main(argv: Sequence[str]) -> int:
    from v2v.cli.console_args import add_console_arguments, console
    from v2v.cli.fleet_cmd import add_coordinator_arguments, coordinator_config
    from v2v.coordinator.servers import coordinator_servicer
    from v2v.grpcserver import RunningService
    from v2v.services.servicers import PHASES, SERVICES, phase_servicer

    p = argparse.ArgumentParser(prog="v2v serve", description="Run one v2v service until SIGTERM/SIGINT.")
    p.add_argument("service", choices=(*SERVICES, "coordinator", "warm"))
    p.add_argument("--listen", required=True, action="append", metavar="ADDR",
                   help="unix:PATH or HOST:PORT (mutual TLS with --tls-dir); repeat to listen on several")
    add_tls_argument(p, "server")
    p.add_argument("--insecure", action="store_true",
                   help="serve TCP addresses in plaintext, without TLS: only on a network you trust")
    for s in PHASES:
        p.add_argument(f"--{s}", metavar="ADDR", help=f"coordinator only: the {s} service (default $V2V_{s.upper()})")
    p.add_argument("--workdir-root", type=Path, default=None,
                   help="where the work directories are: a phase service's own, a coordinator's embedded "
                        "workers' (default $V2V_WORKDIR_ROOT, else /var/tmp/v2v)")
    add_coordinator_arguments(p)
    add_console_arguments(p)
    a = p.parse_args(argv)
    if a.http and a.service != "coordinator":
        p.error("--http: only the coordinator serves the console")
    try:
        use_tls_dir(a.tls_dir, "server")
    except V2VError as err:
        p.error(err.message)
    if a.service == "coordinator":
        try:
            config = coordinator_config(a)
        except ValueError as exc:
            p.error(str(exc))
        spec = coordinator_servicer(config)
    elif a.service == "warm":  # docs/warm.md; its phase services from $V2V_INPUT, $V2V_CONVERT, $V2V_OUTPUT
        from v2v.coordinator.warm.service import serve_warm

        try:
            spec = serve_warm(a.workdir_root)
        except ValueError as exc:
            p.error(str(exc))
    else:
        spec = phase_servicer(a.service, a.workdir_root)
    try:
        svc = RunningService(a.listen, spec, insecure=a.insecure)
    except V2VError as err:
        p.error(err.message)
    plain = [addr for addr in a.listen if unix_socket_path(addr) is None and not os.environ.get(TLS_DIR_ENV)]
    if plain:
        print(f"v2v {a.service}: WARNING: plaintext TCP on {', '.join(plain)} (--insecure): no TLS, no client "
              "certificate; anyone who reaches the port can call the service", file=sys.stderr, flush=True)
    print(f"v2v {a.service} service listening on {', '.join(a.listen)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, terminate)
    try:
        with console(svc.servicer, a, a.tls_dir):
            svc.server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    except V2VError as err:
        print(f"v2v {a.service}: error: {err.message}", file=sys.stderr)
        return 1
    finally:
        svc.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        return serve_main(args[1:])
    if args[:1] in (["fleet"], ["status"], ["logs"]):
        from v2v.cli import fleet_cmd

        return {"fleet": fleet_cmd.fleet_main, "status": fleet_cmd.status_main, "logs": fleet_cmd.logs_main}[
            args[0]](args[1:])
    if args[:1] == ["certs"]:
        from v2v.cli.certs_cmd import certs_main

        return certs_main(args[1:])
    if args[:1] == ["warm"]:
        from v2v.cli.warm_cmd import warm_main

        return warm_main(args[1:])
    if args[:1] == ["open"]:
        from v2v.cli.open_cmd import open_main

        return open_main(args[1:])
    if args[:1] == ["verify-boot"]:
        from v2v.cli.verify_cmd import verify_main

        return verify_main(args[1:])
    if args[:1] == ["inspect"]:
        from v2v.cli.inspect_cmd import inspect_main

        return inspect_main(args[1:])
    if "--in-place" in args:
        from v2v.cli.inspect_cmd import in_place_main

        return in_place_main(args)
    return convert_main(args)


if __name__ == "__main__":
    sys.exit(main())
