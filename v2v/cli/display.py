"""What the CLI shows: a line per step with elapsed time and live bars per disk for people,
or one JSON object per line for programs (--machine-readable); for a fleet, a table of guests
updated in place, or its events as JSON lines."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table

from v2v.coordinator.state import FINAL, state_name
from v2v.steps import Step
from v2v.units import human_size
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb


def to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class MachineDisplay:
    """One JSON object per line: {"step": StepEvent} or {"progress": Progress}, then {"status": ...}."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def event(self, ev: pb.Event) -> None:
        self._line(to_dict(ev))

    def status(self, status: coordinator_pb2.GuestStatus) -> None:
        self._line({"status": to_dict(status)})

    def _line(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()


class HumanDisplay:
    """virt-v2v-like lines, "[  12.3] step ...", sub-steps indented, live bars while copying."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.progress: Progress | None = None
        self.tasks: dict[int, TaskID] = {}

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[{time.monotonic() - self.t0:6.1f}] {text}")

    def event(self, ev: pb.Event) -> None:
        if ev.HasField("progress"):
            self._progress(ev.progress)
            return
        s = ev.step
        indent = "  " if s.parent else ""
        disk = f" disk {s.disk}" if s.HasField("disk") else ""
        took = s.duration.ToTimedelta().total_seconds()
        if s.state == pb.STEP_STATE_STARTED and not s.parent:
            self._say(f"{s.step}{disk} ...")
        elif s.state == pb.STEP_STATE_SUCCEEDED:
            if s.step in (Step.PRECOPY, Step.COPY) and not s.parent:
                self._stop_bars()
            self._say(f"{indent}{s.step}{disk} done in {took:.1f} s" + (f": {s.message}" if s.message else ""))
        elif s.state == pb.STEP_STATE_FAILED:
            self._stop_bars()
            if not s.parent:  # the failure itself is printed once, by the CLI
                self._say(f"{s.step}{disk} failed after {took:.1f} s")
        elif s.state == pb.STEP_STATE_NOTE:
            if s.severity >= pb.SEVERITY_WARNING:
                self.err.print(f"v2v: warning: {s.message}")
            else:
                self._say(f"{indent}  {s.message}")

    def _progress(self, p: pb.Progress) -> None:
        if self.quiet:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("  disk {task.fields[disk]}"), BarColumn(),
                                     TextColumn("{task.percentage:>3.0f}%"), DownloadColumn(binary_units=True),
                                     TransferSpeedColumn(), console=self.console)
            self.progress.start()
        if p.disk not in self.tasks:
            self.tasks[p.disk] = self.progress.add_task("copy", total=p.bytes_total or None, disk=p.disk)
        self.progress.update(self.tasks[p.disk], completed=p.bytes_done, total=p.bytes_total or None)

    def _stop_bars(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks.clear()

    def status(self, status: coordinator_pb2.GuestStatus) -> None:
        self._stop_bars()
        if status.state == coordinator_pb2.GUEST_STATE_SUCCEEDED and status.files and not self.quiet:
            self._say(f"{status.name}: finished; the output is in:")
            for f in status.files:
                self.console.print(f"    {f}")


def print_source(source: pb.Source, out: TextIO = sys.stdout) -> None:
    """The parsed source as virt-v2v --print-source shows it."""
    fw = pb.Firmware.Name(source.firmware).removeprefix("FIRMWARE_").lower()
    hv = pb.Hypervisor.Name(source.hypervisor).removeprefix("HYPERVISOR_").lower().replace("unspecified", "unknown")
    print(f"    source name: {source.name}\nhypervisor type: {hv}\n         memory: {source.memory} "
              f"({human_size(source.memory)})\n       nr vCPUs: {source.vcpus}\n       firmware: {fw}", file=out)
    if source.secure_boot:
        print("    secure boot: on", file=out)
    if source.os_type:
        print(f"        OS type: {source.os_type}", file=out)
    if source.cpu_model or source.cpu_vendor:
        print(f"      CPU model: {source.cpu_model} {source.cpu_vendor}".rstrip(), file=out)
    if source.HasField("graphics"):
        g = source.graphics
        print(f"       graphics: {g.type}" + (f" listen {g.listen}" if g.listen else "")
              + (f" port {g.port}" if g.port > 0 else ""), file=out)
    if source.sound:
        print(f"          sound: {', '.join(source.sound)}", file=out)
    if source.HasField("cpu_topology"):
        t = source.cpu_topology
        print(f"   CPU topology: sockets: {t.sockets} cores/socket: {t.cores} threads/core: {t.threads}", file=out)
    print("disks:", file=out)
    for d in source.disks:
        bus = pb.Controller.Name(d.controller).removeprefix("CONTROLLER_").lower()
        print(f"    {d.index}: {d.location} ({d.format}, {human_size(d.virtual_size)}) [{bus}]", file=out)
    print("removable media:", file=out)
    for r in source.removables:
        print(f"    {pb.RemovableType.Name(r.type).removeprefix('REMOVABLE_TYPE_').lower()} "
                  f"[{pb.Controller.Name(r.controller).removeprefix('CONTROLLER_').lower()}] slot {r.slot}", file=out)
    print("NICs:", file=out)
    for n in source.nics:
        kind = pb.NetworkType.Name(n.network_type).removeprefix("NETWORK_TYPE_").lower()
        model = pb.NicModel.Name(n.model).removeprefix("NIC_MODEL_").lower()
        print(f"    {kind} \"{n.network}\" mac: {n.mac or '(none)'} [{model}]", file=out)


class _Row:
    """What the fleet table shows of one guest."""

    def __init__(self, status: coordinator_pb2.GuestStatus) -> None:
        self.status = status
        self.done: dict[int, int] = {}
        self.total: dict[int, int] = {}
        self.rates: dict[int, float] = {}

    def elapsed(self) -> float:
        """Since it left the queue, until it ended (or now)."""
        st = self.status
        if not st.HasField("started"):
            return 0.0
        end = st.ended.ToNanoseconds() / 1e9 if st.HasField("ended") and st.state in FINAL else time.time()
        return max(end - st.started.ToNanoseconds() / 1e9, 0.0)


class FleetDisplay:
    """A table of guests (state, step, copy bar, rate, elapsed) redrawn in place as events come."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.rows: dict[str, _Row] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> FleetDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table())
        self.live.stop()

    def fleet_event(self, fe: coordinator_pb2.FleetEvent) -> None:
        if fe.HasField("status"):
            row = self.rows.get(fe.id)
            if row is None:
                row = self.rows[fe.id] = _Row(fe.status)
            row.status = fe.status
        elif fe.id in self.rows:
            row = self.rows[fe.id]
            ev = fe.event
            if ev.HasField("progress"):
                p = ev.progress
                row.done[p.disk], row.total[p.disk] = p.bytes_done, p.bytes_total
                row.rates[p.disk] = 0.0 if p.bytes_done >= p.bytes_total else p.rate
            elif not ev.step.parent and ev.step.state == pb.STEP_STATE_STARTED:
                row.status.step = ev.step.step
        self.live.update(self._table())

    def _table(self) -> Table:
        t = Table(expand=False)
        for col in ("guest", "state", "step", "copy", "", "rate", "elapsed", "worker"):
            t.add_column(col, no_wrap=True)
        for row in self.rows.values():
            st = row.status
            total, done = sum(row.total.values()), sum(row.done.values())
            bar = ProgressBar(total=total or 1, completed=done if total else 0, width=20)
            rate = sum(row.rates.values())
            elapsed = row.elapsed()
            state = state_name(st.state)
            if st.state == coordinator_pb2.GUEST_STATE_FAILED:
                state = f"[red]failed[/red] ({st.error.step or st.step})"
            elif st.state == coordinator_pb2.GUEST_STATE_SUCCEEDED:
                state = "[green]succeeded[/green]"
            t.add_row(st.name, state, st.step, bar, f"{human_size(done)}/{human_size(total)}" if total else "",
                      f"{human_size(int(rate))}/s" if rate else "", f"{elapsed:.0f} s", st.worker)
        return t


class FleetMachineDisplay:
    """The fleet's events as JSON lines: {"id": ..., "event": {...}} or {"id": ..., "status": {...}}."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def __enter__(self) -> FleetMachineDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def fleet_event(self, fe: coordinator_pb2.FleetEvent) -> None:
        self.out.write(json.dumps(to_dict(fe), separators=(",", ":")) + "\n")
        self.out.flush()
