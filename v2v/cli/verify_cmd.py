"""`v2v verify-boot DISK... [--xml target.xml]`: boots any KVM guest's disks in a throw-away qemu
(overlays: the disks are never written) through the Verify service, and says whether and how it
came up (docs/verify.md). Exit 0 only when it booted."""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from google.protobuf import json_format

from v2v.cli.args import ACCELERATORS
from v2v.cli.display import HumanDisplay, MachineDisplay
from v2v.cli.standalone import Display, add_service_flags, guarded
from v2v.coordinator.phases import PhaseServices
from v2v.errors import V2VError
from v2v.grpcserver import channel
from v2v.v1 import types_pb2 as pb
from v2v.v1 import verify_pb2, verify_pb2_grpc

BUSES = {"virtio": pb.BLOCK_BUS_VIRTIO_BLK, "scsi": pb.BLOCK_BUS_VIRTIO_SCSI, "ide": pb.BLOCK_BUS_IDE,
         "sata": pb.BLOCK_BUS_SATA, "virtio-scsi": pb.BLOCK_BUS_VIRTIO_SCSI}
NIC_MODELS = {"virtio": pb.NIC_MODEL_VIRTIO, "e1000": pb.NIC_MODEL_E1000, "rtl8139": pb.NIC_MODEL_RTL8139,
              "vmxnet3": pb.NIC_MODEL_VMXNET3}


def request_from_xml(req: verify_pb2.VerifyRequest, path: str) -> None:
    """A libvirt domain XML's (-o local, -o libvirt) firmware, machine, disks with their buses and
    NICs with MAC and model, into the request."""
    try:
        dom = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise V2VError(f"cannot read {path}: {exc}", pb.ERROR_CODE_BAD_INPUT) from None
    req.guest = req.guest or dom.findtext("name", "")
    os_el = dom.find("os")
    if os_el is not None:
        loader = os_el.find("loader")
        if os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash"):
            req.firmware = pb.FIRMWARE_UEFI
        req.secure_boot = (loader is not None and loader.get("secure") == "yes") or \
            os_el.find("firmware/feature[@name='secure-boot'][@enabled='yes']") is not None
        machine = os_el.find("type")
        if machine is not None and "q35" in machine.get("machine", ""):
            req.machine = pb.MACHINE_Q35
    if not req.disks:
        for disk in dom.findall("devices/disk[@device='disk']"):
            source, driver, target = disk.find("source"), disk.find("driver"), disk.find("target")
            if source is None or not source.get("file"):
                continue
            req.disks.add(path=source.get("file", ""), format=driver.get("type", "") if driver is not None else "",
                          bus=BUSES.get(target.get("bus", "") if target is not None else "", pb.BLOCK_BUS_VIRTIO_BLK))
    for iface in dom.findall("devices/interface"):
        mac, model = iface.find("mac"), iface.find("model")
        req.nics.add(mac=mac.get("address", "") if mac is not None else "",
                     model=NIC_MODELS.get(model.get("type", "") if model is not None else "", pb.NIC_MODEL_VIRTIO))


def request_from_target_json(req: verify_pb2.VerifyRequest, path: str) -> None:
    """-o json's document (docs/target-json.md): its TargetMeta, as the coordinator would pass it."""
    try:
        doc = json.loads(open(path).read())
        json_format.ParseDict(doc["target"], req.target, ignore_unknown_fields=True)
    except (OSError, ValueError, KeyError, json_format.ParseError) as exc:
        raise V2VError(f"cannot read the target description {path}: {exc}", pb.ERROR_CODE_BAD_INPUT) from None
    req.guest = req.guest or req.target.name
    req.os_type = req.os_type or req.target.inspection.type


def describe(res: verify_pb2.VerifyResult) -> list[str]:
    """The outcome in one line, then what was observed, for people."""
    outcome = verify_pb2.VerifyOutcome.Name(res.outcome).removeprefix("VERIFY_OUTCOME_")
    cause = verify_pb2.VerifyCause.Name(res.cause).removeprefix("VERIFY_CAUSE_")
    by = verify_pb2.ObservedBy.Name(res.observed_by).removeprefix("OBSERVED_BY_").lower()
    head = f"{res.guest}: {outcome}"
    if res.outcome == verify_pb2.VERIFY_OUTCOME_BOOTED:
        head += f" in {res.seconds_to_userspace:.1f} s (observed by {by})"
    elif res.cause:
        head += f" ({cause.lower().replace('_', ' ')})"
    lines = [head + (f": {res.message}" if res.message else "")]
    o = res.observed
    if o.os.id or o.os.kernel:
        lines.append(f"  os:      {o.os.name or o.os.id} kernel {o.os.kernel} host {o.os.hostname}")
    if o.root_device:
        lines.append(f"  root:    {o.root_device}")
    for m in o.mounts:
        lines.append(f"  mount:   {m.mountpoint} {m.device} {m.fstype}")
    for n in o.nics:
        lines.append(f"  nic:     {n.name} {n.mac} {' '.join(n.addresses)}".rstrip())
    if o.failed_units:
        lines.append(f"  failed:  {' '.join(o.failed_units)}")
    for mm in res.mismatches:
        lines.append(f"  MISMATCH {verify_pb2.Mismatch.Kind.Name(mm.kind).removeprefix('KIND_').lower()}: {mm.message}")
    if res.outcome != verify_pb2.VERIFY_OUTCOME_BOOTED and res.console_tail:
        lines.append("  console (last lines):")
        lines += [f"  | {line}" for line in res.console_tail[-15:]]
    return lines


def verify_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="v2v verify-boot", description="Boot a KVM guest's disks in a throw-away qemu "
                                "(on overlays: the disks are never written) and report whether and how it came up.")
    p.add_argument("disks", nargs="*", metavar="DISK", help="disk image or NBD URI, in boot order (default: --xml's)")
    p.add_argument("--xml", default="", help="the target's libvirt domain XML: firmware, machine, buses, NICs")
    p.add_argument("--target", default="", metavar="FILE",
                   help="the target description -o json wrote (GUEST.json): disks, firmware, buses, NICs")
    p.add_argument("--bus", choices=sorted(BUSES), default="", help="bus of the DISKs given (default virtio)")
    p.add_argument("--strict", action="store_true", help="also: no failed unit, --expect-nic/--expect-mount present")
    p.add_argument("--expect-nic", action="append", default=[], metavar="NAME[=ADDR/PREFIX,...]",
                   help="strict: a NIC the guest must come up with, and its static addresses")
    p.add_argument("--expect-mount", action="append", default=[], metavar="MOUNTPOINT",
                   help="strict: a filesystem that must be mounted")
    p.add_argument("--accel", choices=sorted(ACCELERATORS), default=os.environ.get("V2V_ACCEL", "auto"),
                   help="kvm, tcg, or auto (KVM where /dev/kvm works; $V2V_ACCEL)")
    p.add_argument("--timeout", type=int, default=600, metavar="S", help="seconds to userspace (default 600)")
    p.add_argument("--name", default="", help="the guest's name in messages (default: the XML's, else the disk's)")
    p.add_argument("--machine-readable", action="store_true", help="JSON lines: step events, then the result")
    p.add_argument("-q", "--quiet", action="store_true", help="only the outcome")
    add_service_flags(p, ("verify",))
    a = p.parse_args(argv)
    if not a.disks and not a.xml and not a.target:
        p.error("give the DISKs, --xml or --target")
    req = verify_pb2.VerifyRequest(guest=a.name, accelerator=ACCELERATORS[a.accel], timeout_seconds=a.timeout,
                                   mode=verify_pb2.VERIFY_MODE_STRICT if a.strict else verify_pb2.VERIFY_MODE_BASIC,
                                   expected_mounts=a.expect_mount)
    bus = BUSES.get(a.bus, pb.BLOCK_BUS_VIRTIO_BLK)
    for d in a.disks:
        req.disks.add(path=d if "://" in d else os.path.abspath(d), bus=bus)
    for spec in a.expect_nic:
        name, _, addrs = spec.partition("=")
        req.expected_nics.add(name=name, addresses=[x for x in addrs.split(",") if x])
    display: Display = MachineDisplay() if a.machine_readable else HumanDisplay(quiet=a.quiet)

    def body(afterwards: list[str]) -> int:
        if a.xml:
            request_from_xml(req, a.xml)
        if a.target:
            request_from_target_json(req, a.target)
        req.guest = req.guest or os.path.basename((req.disks or req.target.disks)[0].path)
        result = verify_pb2.VerifyResult()
        with PhaseServices({"verify": a.verify_service}) as addresses, channel(addresses["verify"]) as ch:
            for ev in verify_pb2_grpc.VerifyStub(ch).VerifyBoot(req):
                if ev.HasField("step"):
                    display.event(pb.Event(step=ev.step))
                else:
                    result = ev.result
        if a.machine_readable:
            doc = json_format.MessageToDict(result, preserving_proto_field_name=True)
            sys.stdout.write(json.dumps({"result": doc}, separators=(",", ":")) + "\n")
        else:
            print("\n".join(describe(result)), flush=True)
        return 0 if result.outcome == verify_pb2.VERIFY_OUTCOME_BOOTED else 1

    return guarded(body, display)
