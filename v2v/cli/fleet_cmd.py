"""`v2v fleet PLAN`, `v2v status`, `v2v logs GUEST [STEP]` (docs/fleet.md).

    v2v fleet plan.yaml                      the plan's guests, embedded services, a live table
    v2v fleet plan.yaml --coordinator ADDR   submitted to a running coordinator
    v2v status [--coordinator ADDR]          every guest of a coordinator (else: of its state database)
    v2v logs web1 convert [--coordinator ADDR] [--follow]
                                             a guest's step log: events and its processes' stderr

`status` and `logs` ask the coordinator's List and Logs; with no coordinator named, a read-only
one over the state database answers them (v2v.coordinator.view), in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.table import Table

from v2v.cli.console_args import add_console_arguments, console
from v2v.cli.display import FleetDisplay, FleetMachineDisplay, to_dict
from v2v.cli.plan import plan_limits, read_plan
from v2v.client import FleetClient
from v2v.coordinator.clients import SERVICES, ServiceAddresses
from v2v.coordinator.pipeline import guest_name
from v2v.coordinator.scheduler import Limits, Worker
from v2v.coordinator.servers import CoordinatorConfig, EmbeddedServices, PhaseWorkers, parse_worker, state_view
from v2v.coordinator.state import FINAL, state_name
from v2v.errors import V2VError, from_rpc_error
from v2v.steps import Step
from v2v.units import human_size, parse_size
from v2v.v1 import coordinator_pb2
from v2v.workdir import default_root


def default_state() -> Path:
    return default_root() / "coordinator.db"


def add_coordinator_arguments(p: argparse.ArgumentParser) -> None:
    """`v2v serve coordinator`'s workers, limits, state and metrics (docs/fleet.md)."""
    g = p.add_argument_group("coordinator: workers, limits, state, metrics")
    g.add_argument("--worker", action="append", default=[], metavar="NAME=input@ADDR,convert@ADDR,output@ADDR,"
                   "copier@ADDR[,conversions=N][,copy-streams=N][,memory=SIZE][,guests=N][,workdir-root=PATH]",
                   help="a worker: four phase services sharing a work-directory root; repeat for several "
                        "(default: one, from --input ... --copier or $V2V_INPUT ...)")
    g.add_argument("--embedded", type=int, default=0, metavar="N",
                   help="run N workers' phase services in this process (instead of --worker)")
    g.add_argument("--conversions", type=int, default=2, metavar="N", help="conversions at once per worker (2)")
    g.add_argument("--copy-streams", type=int, default=4, metavar="N", help="disks copied at once per worker (4)")
    g.add_argument("--memory", default="0", metavar="SIZE",
                   help="appliance memory budget per worker, e.g. 8G (default 0: unlimited)")
    g.add_argument("--guests", type=int, default=0, metavar="N",
                   help="guests between open and close at once per worker; the others wait in the queue, "
                        "without a thread (default 0: twice conversions + copy streams)")
    g.add_argument("--appliance-memory", default="2G", metavar="SIZE", help="what one conversion costs of it (2G)")
    g.add_argument("--per-source-host", type=int, default=0, metavar="N",
                   help="guests read from one source host at once (default 0: unlimited)")
    g.add_argument("--state", type=Path, default=None,
                   help="the state database (default: <work root>/coordinator.db)")
    g.add_argument("--metrics", default="", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/")
    g.add_argument("--keep-converted", action="store_true",
                   help="a guest failing after its conversion keeps it (its source stays open) for Retry from setup")


def coordinator_config(a: argparse.Namespace) -> CoordinatorConfig:
    """The coordinator's configuration from `add_coordinator_arguments`' options (and the older
    --input ... --copier / $V2V_INPUT ... for one worker). Starts the --embedded phase services."""
    template = Worker("default", ServiceAddresses("", "", "", ""), a.workdir_root, a.conversions, a.copy_streams,
                      parse_size(a.memory), a.guests)
    limits = Limits(per_source_host=a.per_source_host, appliance_memory=parse_size(a.appliance_memory))
    state = a.state or (a.workdir_root or default_root()) / "coordinator.db"
    if a.embedded:
        if a.worker:
            raise ValueError("--embedded and --worker exclude each other")
        phases = PhaseWorkers(a.embedded, template, a.workdir_root)
        return CoordinatorConfig(phases.start(), limits, state, a.metrics, embedded=phases,
                                 keep_converted=a.keep_converted)
    workers = [parse_worker(w, template) for w in a.worker]
    if not workers:
        addresses = ServiceAddresses.from_env(**{s: getattr(a, s) for s in SERVICES})
        workers = [replace(template, name="default", addresses=addresses)]
    return CoordinatorConfig(workers, limits, state, a.metrics, keep_converted=a.keep_converted)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def fleet_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="v2v fleet", description="Convert the guests of a plan, many at once.")
    p.add_argument("plan", type=Path, help="the plan (YAML: limits, defaults, guests; see docs/fleet.md)")
    p.add_argument("--coordinator", default="", metavar="ADDR",
                   help="submit to this coordinator instead of running the services in this process")
    p.add_argument("--state", type=Path, default=None,
                   help="embedded: the state database (default: <work root>/coordinator.db); "
                        "running a plan again with the same state resumes it")
    p.add_argument("--metrics", default="", metavar="HOST:PORT", help="embedded: serve Prometheus metrics there")
    p.add_argument("--machine-readable", action="store_true", help="the fleet's events as JSON lines")
    add_console_arguments(p)
    p.add_argument("--insecure", action="store_true", help="--http on an address other than loopback, without TLS")
    a = p.parse_args(argv)
    if a.http and a.coordinator:
        p.error("--http: embedded only; a running coordinator serves its own (v2v serve coordinator --http)")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        plan = read_plan(a.plan)
        if a.coordinator:
            return _run_plan(a.coordinator, plan.jobs, a.machine_readable, err)
        limits, capacity = plan_limits(plan.limits)
        template = Worker("local", None, **capacity)  # type: ignore[arg-type]  # addresses: set by EmbeddedServices
        services = EmbeddedServices(worker=template, limits=limits, state=a.state or default_state(),
                                    metrics=a.metrics)
        with services as address, console(services.coordinator, a):
            return _run_plan(address, plan.jobs, a.machine_readable, err)
    except V2VError as exc:
        err.print(f"v2v fleet: error: {exc.one_line()}", markup=False)
        return 1
    except grpc.RpcError as exc:
        err.print(f"v2v fleet: error: {from_rpc_error(exc, step=Step.COORDINATOR).one_line()}", markup=False)
        return 1


def _run_plan(address: str, jobs: list[coordinator_pb2.GuestJob], machine: bool, err: Console) -> int:
    """Submits the plan's guests the coordinator does not already hold (by name: a plan run again
    resumes), follows them until they have all ended, and says which failed where."""
    with FleetClient(address) as fleet:
        known = {s.name: s.id for s in fleet.list()}
        new = [j for j in jobs if guest_name(j) not in known]
        ids = {known[guest_name(j)] for j in jobs if guest_name(j) in known} | set(fleet.submit(new) if new else [])
        if len(new) < len(jobs):
            err.print(f"v2v fleet: {len(jobs) - len(new)} guest(s) of the plan already known to the coordinator: "
                      "following them, not submitting them again", markup=False)
        display = FleetMachineDisplay() if machine else FleetDisplay()
        now = {s.id: s for s in fleet.list() if s.id in ids}
        pending = {gid for gid, s in now.items() if s.state not in FINAL}
        try:
            with display:
                for s in now.values():  # ended ones first: a restarted coordinator has no events of them
                    if s.state in FINAL:
                        display.fleet_event(coordinator_pb2.FleetEvent(id=s.id, status=s))
                for fe in fleet.follow() if pending else ():
                    if fe.id not in pending:
                        continue
                    display.fleet_event(fe)
                    if fe.HasField("status") and fe.status.state in FINAL and fe.status.attempt >= now[fe.id].attempt:
                        pending.discard(fe.id)
                        if not pending:
                            break
        except KeyboardInterrupt:
            err.print("v2v fleet: interrupted; unfinished guests resume when the plan runs again with the same state",
                      markup=False)
            return 130
        statuses = [s for s in fleet.list() if s.id in ids]
    failed = [s for s in statuses if s.state != coordinator_pb2.GUEST_STATE_SUCCEEDED]
    for s in failed:
        err.print(f"v2v fleet: {s.name}: {state_name(s.state)} in step {s.error.step or s.step}: "
                  f"{s.error.message}", markup=False)
    if not machine:
        err.print(f"v2v fleet: {len(statuses) - len(failed)} of {len(statuses)} guest(s) succeeded", markup=False)
    return 1 if failed else 0


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--coordinator", default=os.environ.get("V2V_COORDINATOR", ""), metavar="ADDR",
                     help="ask this running coordinator (unix:PATH or HOST:PORT; $V2V_COORDINATOR)")
    src.add_argument("--state", type=Path, default=None,
                     help="else read this state database (default: <work root>/coordinator.db)")


@contextmanager
def _coordinator(a: argparse.Namespace) -> Iterator[FleetClient]:
    """The coordinator named by --coordinator (or $V2V_COORDINATOR, unless --state is given), else a
    read-only one over the state database."""
    if a.coordinator and a.state is None:
        with FleetClient(a.coordinator) as fleet:
            yield fleet
        return
    path = a.state or default_state()
    if not path.exists():
        raise V2VError(f"no state database at {path}: give --state PATH or --coordinator ADDR")
    with state_view(path) as address, FleetClient(address) as fleet:
        yield fleet


def _seconds(ts: timestamp_pb2.Timestamp, present: bool = True) -> float | None:
    return ts.ToNanoseconds() / 1e9 if present else None


def status_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="v2v status", description="Every guest of a coordinator: its state, step, "
                                "attempt, bytes copied and error.")
    _add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per guest, with its steps")
    a = p.parse_args(argv)
    try:
        with _coordinator(a) as fleet:
            guests = fleet.list(steps=a.json)
    except V2VError as exc:
        print(f"v2v status: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"v2v status: error: {from_rpc_error(exc, step='coordinator').message}", file=sys.stderr)
        return 1
    if a.json:
        for g in guests:
            print(json.dumps(_guest_dict(g), separators=(",", ":")))
        return 0
    t = Table()
    for col in ("guest", "id", "state", "step", "attempt", "copied", "elapsed", "error"):
        t.add_column(col)
    for g in guests:
        started = _seconds(g.started, g.HasField("started"))
        elapsed = ((_seconds(g.ended, g.HasField("ended")) or time.time()) - started) if started else 0.0
        t.add_row(g.name, g.id, state_name(g.state) + (" (target interrupted)" if g.target_interrupted else ""),
                  g.step, str(g.attempt), human_size(g.bytes_copied), f"{elapsed:.0f} s",
                  f"{g.error.step}: {g.error.message}" if g.HasField("error") else "")
    Console(highlight=False).print(t)
    return 0


def _guest_dict(g: coordinator_pb2.GuestStatus) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "state": state_name(g.state), "step": g.step, "attempt": g.attempt,
            "worker": g.worker, "bytes_copied": g.bytes_copied, "target_interrupted": g.target_interrupted,
            "files": list(g.files), "error": to_dict(g.error) if g.HasField("error") else None,
            "submitted": _seconds(g.submitted, g.HasField("submitted")),
            "started": _seconds(g.started, g.HasField("started")), "ended": _seconds(g.ended, g.HasField("ended")),
            "steps": [{"step": s.step, "parent": s.parent, "disk": s.disk if s.HasField("disk") else None,
                       "state": s.state, "attempt": s.attempt, "started": _seconds(s.started),
                       "ended": _seconds(s.ended, s.HasField("ended")),
                       "duration": s.duration if s.HasField("ended") else None, "error": s.error}
                      for s in g.steps]}


def logs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="v2v logs", description="A guest's step logs as JSON lines: the step's events "
                                "and the stderr of the processes the services ran for it.")
    p.add_argument("guest", help="the guest's name or id")
    p.add_argument("step", nargs="?", default="", help="one step (open, check, convert, setup, copy, finalize)")
    _add_source_arguments(p)
    p.add_argument("-f", "--follow", action="store_true",
                   help="with --coordinator: then print what comes, until the guest ends")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _coordinator(a) as fleet:
            for r in fleet.logs(a.guest, a.step, a.follow):
                record = {"event": to_dict(r.event)} if r.HasField("event") else \
                    {"process": r.process.process, "line": r.process.line}
                print(json.dumps({"guest": r.guest, "attempt": r.attempt, "step": r.step, **record},
                                 separators=(",", ":")), flush=a.follow)
    except V2VError as exc:
        print(f"v2v logs: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"v2v logs: error: {from_rpc_error(exc, step='coordinator').message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
