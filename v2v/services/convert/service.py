"""The Convert gRPC service: one appliance per request, sub-steps streamed as they happen."""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.extents import ALLOCATION, read_extents
from v2v.grpcserver import stream_rpc
from v2v.nbdclient import connect
from v2v.networks import map_nics
from v2v.services.convert import virtio_win
from v2v.services.convert.appliance import Appliance
from v2v.services.convert.checks import fsck
from v2v.services.convert.guest_os import Converted, conversion
from v2v.services.convert.inspection import inspect, mount_all
from v2v.services.convert.windows_inspection import applications, windows_info
from v2v.streaming import stream_events
from v2v.units import human_size
from v2v.v1 import convert_pb2, convert_pb2_grpc
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def target_nics(source: pb.Source, caps: pb.GuestCaps, networks: pb.NetworkMap, macs: list[str],
                names: list[str]) -> list[pb.Nic]:
    """The mapped target NICs, each with the MAC the network step kept its guest name for, and that
    name (what strict boot checks expect)."""
    model = {pb.NET_BUS_VIRTIO_NET: pb.NIC_MODEL_VIRTIO, pb.NET_BUS_E1000: pb.NIC_MODEL_E1000,
             pb.NET_BUS_RTL8139: pb.NIC_MODEL_RTL8139}[caps.net_bus]
    nics = map_nics(list(source.nics), networks, model)
    for nic, mac in zip(nics, macs, strict=False):
        nic.mac = mac
    for nic, name in zip(nics, names, strict=False):
        nic.guest_name = name
    return nics


class ConvertService(convert_pb2_grpc.ConvertServicer):
    """`root`: where the work directories of its requests are (default_root())."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._running: dict[str, Appliance] = {}
        # The Convert calls in progress by key (work directory, or the call's own), each set once
        # cancelled: a cancel that comes before the call's appliance exists is kept for it.
        self._calls: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def convert(self, request: convert_pb2.ConvertRequest, report: StepReporter,
                key: str = "") -> convert_pb2.ConvertResult:
        """The whole conversion, without gRPC. Sub-step events go to `report`; `cancel(key)` stops it
        (default key: the work directory's name)."""
        step = "inspect" if request.options.inspect_only else "convert"
        try:
            if not request.HasField("source") or len(request.disks) != len(request.source.disks):
                raise V2VError("ConvertRequest needs the guest's source and one NBD endpoint per disk in disks "
                               f"(given {len(request.disks)} for {len(request.source.disks)} disks): what Open "
                               "answered", pb.ERROR_CODE_BAD_INPUT)
            workdir = WorkDir(request.workdir, self.root).existing() if request.workdir else None
        except V2VError as err:
            raise err.fill(step="convert", guest=request.guest) from None
        with ExitStack() as stack:
            if workdir is not None:
                stack.enter_context(workdir.phase(step, request.guest))
                log = workdir.log("convert-appliance.log")
            else:  # a call on bare NBD exports: the log lives as long as the call
                log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="v2v-convert."))) / "appliance.log"
            return self._convert(request, workdir, log, report, key or request.workdir)

    def _convert(self, request: convert_pb2.ConvertRequest, workdir: WorkDir | None, log: Path,
                 report: StepReporter, key: str) -> convert_pb2.ConvertResult:
        source = request.source
        sockets = list(request.disks)
        opts = request.options
        with report.step("launch"):
            appliance = Appliance(sockets, opts, log, images=self.images(opts))
            self._register(key, appliance)
            try:
                appliance.launch()
            except BaseException:
                self._forget(key, appliance)
                appliance.close()
                raise
        try:
            g = appliance.g
            with report.step("inspect"):
                insp, locked = inspect(g, opts.root, opts.keys)
                report.note(f"{insp.distro} {insp.product_name} ({insp.arch}), root {insp.root}", step="inspect")
                if locked:
                    report.warn(f"{', '.join(locked)}: encrypted (LUKS), no key given (--key): left closed, "
                                "not checked or trimmed", step="inspect")
            if not opts.inspect_only:
                with report.step("fsck"):
                    fsck(g, insp, report)
            with report.step("mount"):
                mounted = mount_all(g, insp)
                if insp.type == "windows":
                    insp.windows.CopyFrom(windows_info(g, insp.root, insp.product_name, insp.major_version,
                                                       insp.minor_version))
                    insp.applications.extend(applications(g, insp.root))
            converted = Converted(pb.GuestCaps(), [], [])
            if not opts.inspect_only:  # v2v inspect: look, trim the overlay and measure; change nothing else
                converted = conversion(insp)(g, insp, request, report, mounted)
            if not opts.skip_trim:
                with report.step("fstrim"):
                    self.trim(g, mounted, report)
            with report.step("shutdown"):
                g.umount_all()
                g.shutdown()
        finally:
            self._forget(key, appliance)
            appliance.close()
        with report.step("measure"):
            measured = self.measure(source, sockets, report)
        measured.inspection.CopyFrom(insp)
        measured.firmware = source.firmware or insp.firmware
        if opts.inspect_only:
            return convert_pb2.ConvertResult(inspection=insp, report=measured)
        caps = converted.caps
        measured.caps.CopyFrom(caps)
        target = pb.TargetMeta(
            name=request.target_name or source.name,
            source=source,
            inspection=insp,
            caps=caps,
            firmware=source.firmware or insp.firmware,
            nics=target_nics(source, caps, request.networks, converted.macs, converted.names),
            static_ips=converted.static_ips,
        )
        if workdir is not None:
            workdir.write(WorkDir.CONVERTED, target)
        return convert_pb2.ConvertResult(inspection=insp, caps=caps, target=target, report=measured)

    @staticmethod
    def images(opts: convert_pb2.ConvertOptions) -> dict[str, str]:
        """The virtio-win image rides along as a read-only drive, in case the guest is Windows: a
        second appliance only to read it would cost another launch. A bad location is the Windows
        conversion's error to raise, not a Linux guest's."""
        if opts.inspect_only:
            return {}
        try:
            where = virtio_win.location(opts.virtio_win)
        except V2VError:
            return {}
        return {virtio_win.IMAGE_LABEL: where[0]} if where and where[1] else {}

    @staticmethod
    def measure(source: pb.Source, sockets: list[str], report: StepReporter) -> convert_pb2.InspectorReport:
        """Each disk's size and the bytes it holds now, through its in socket once the appliance is
        gone (so after fstrim): what a manager needs to create the target volumes. The flush first
        puts the conversion on stable storage when the disks are the source itself (--in-place)."""
        measured = convert_pb2.InspectorReport(source=source)
        for disk, sock in zip(source.disks, sockets, strict=True):
            with connect(sock, (ALLOCATION,)) as h:
                if h.can_flush():
                    h.flush()
                size = h.get_size()
                data = read_extents(h, size).data
            measured.disks.append(convert_pb2.DiskEstimate(index=disk.index, virtual_size=size, allocated_size=data))
            report.note(f"disk {disk.index}: {human_size(size)}, {human_size(data)} of data", step="measure")
        return measured

    @staticmethod
    def trim(g: guestfs.GuestFS, mounted: list[str], report: StepReporter) -> None:
        """fstrim every filesystem, so the copy can skip free space. A filesystem that cannot be
        trimmed costs copy time, not correctness: a warning."""
        for mp in mounted:
            try:
                g.fstrim(mp)
            except RuntimeError as exc:
                report.warn(f"fstrim {mp}: {exc}", step="fstrim")

    def _register(self, key: str, appliance: Appliance) -> None:
        with self._lock:
            self._running[key] = appliance
            call = self._calls.get(key)
        if call and call.is_set():
            appliance.kill()  # before its launch: the launch fails CANCELLED without starting qemu

    def _forget(self, key: str, appliance: Appliance) -> None:
        with self._lock:
            if self._running.get(key) is appliance:  # not a newer call's, on the same guest
                del self._running[key]

    def cancel(self, key: str) -> None:
        """Stops a conversion: its appliance dies (or never starts), the conversion fails at once.
        Safe from any thread, at any time (gRPC runs it from its own when a call ends)."""
        with self._lock:
            if call := self._calls.get(key):
                call.set()
            appliance = self._running.get(key)
        if appliance:
            appliance.kill()

    def shutdown(self) -> None:
        with self._lock:
            keys = set(self._running) | set(self._calls)
        for key in keys:
            self.cancel(key)

    def _call(self, request: convert_pb2.ConvertRequest, sink: Callable[[Any], None], call: threading.Event,
              key: str) -> convert_pb2.ConvertResult:
        """One Convert call's conversion, known to cancel() from before it starts until it ended."""
        try:
            return self.convert(request, StepReporter(request.guest, sink, parent="convert"), key)
        finally:
            with self._lock:
                if self._calls.get(key) is call:  # not a newer call's, on the same guest
                    del self._calls[key]

    @stream_rpc
    def Convert(self, request: convert_pb2.ConvertRequest,
                context: grpc.ServicerContext) -> Iterator[convert_pb2.ConvertEvent]:
        key = request.workdir or f"call.{secrets.token_hex(6)}"  # what this call's cancel stops
        call = threading.Event()
        with self._lock:
            self._calls[key] = call
        # The callback runs when the call ends however it does: the client cancelled (or went away),
        # its deadline passed, the server stops, or the conversion is over (nothing left to stop).
        if not context.add_callback(lambda: self.cancel(key)):
            self.cancel(key)  # the call ended before this handler ran
        for item in stream_events(lambda sink: self._call(request, sink, call, key)):
            if isinstance(item, pb.StepEvent):
                yield convert_pb2.ConvertEvent(step=item)
            else:
                yield convert_pb2.ConvertEvent(result=item)
