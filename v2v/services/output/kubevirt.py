"""-o kubevirt: the disks plus NAME.yaml, a KubeVirt VirtualMachine (kubevirt.io/v1) describing the
guest, to be applied with `kubectl apply -f` once the disks are where the cluster can reach them.

How the VM reaches its disks (docs/outputs.md, "-o kubevirt"):
  default                  hostDisk volumes with the files' paths (raw only: KubeVirt reads them as raw)
  -oo pvc-prefix=P         persistentVolumeClaim volumes named P + "<vm>-sda", "<vm>-sdb", ... where <vm>
                           is metadata.name: the claims then match the files NAME-sda, ... one for one
  -oo disk=C (per disk)    those claim names, in disk order
  -oo data-volumes         dataVolume volumes instead of persistentVolumeClaim (names as above; alone,
                           "<vm>-sda", ...)

Unlike virt-v2v's -o kubevirt, clock and features go in spec.template.spec.domain (virt-v2v put them
under domain.resources, which KubeVirt rejects) and the CPU threads field is spelled `threads`.
tests/data/kubevirt-virtualmachine.schema.json checks every document against the API's shape."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from v2v.drives import block_bus, drive_letters
from v2v.errors import V2VError
from v2v.osinfo import short_id
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS
from v2v.services.output.files import FileOutput, disk_format
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
API_VERSION = "kubevirt.io/v1"
# Annotations keep what metadata.name cannot: the name as the user gave it, and where the guest
# came from (the same facts the libvirt XML keeps in its v2v:source metadata).
ANNOTATION_NAME = "v2v.dev/original-name"
ANNOTATION_HYPERVISOR = "v2v.dev/source-hypervisor"
# libosinfo's short id (win2k22), as virt-v2v's libguestfs.org/osinfo label: what the guest is.
ANNOTATION_OSINFO = "v2v.dev/osinfo"

# The libvirt XML's Hyper-V enlightenments (libvirtxml.HYPERV_FEATURES) in KubeVirt's spelling:
# libvirt's stimer is synictimer here, and the spinlock retries are spinlocks.spinlocks.
HYPERV_SPINLOCK_RETRIES = 8191
_HYPERV_FEATURES = ("relaxed", "vapic", "vpindex", "runtime", "synic", "synictimer", "reset", "frequencies",
                    "tlbflush", "ipi")

# A VM's name becomes its pods' hostname and a label value, so it must be a DNS-1123 label, not just
# a subdomain (which the API server alone would accept).
DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Claim and DataVolume names are DNS-1123 subdomains.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_SUBDOMAIN_MAX = 253

# KubeVirt has no IDE: q35, its machine, has only SATA (AHCI), which every guest that drove IDE drives.
_DISK_BUS = {
    pb.BLOCK_BUS_VIRTIO_BLK: "virtio",
    pb.BLOCK_BUS_VIRTIO_SCSI: "scsi",
    pb.BLOCK_BUS_SATA: "sata",
    pb.BLOCK_BUS_IDE: "sata",
}
_NIC_MODEL = {pb.NET_BUS_E1000: "e1000", pb.NET_BUS_RTL8139: "rtl8139"}  # else virtio, as libvirtxml
POD_NETWORK = "default"  # the libvirt default network's counterpart: the pod network


def dns_name(name: str) -> str:
    """A DNS-1123 label from a guest name: lowercase, runs of anything but [a-z0-9] as one "-", no
    "-" at either end, at most 63 characters. "" when nothing usable is left."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return label[:DNS_LABEL_MAX].rstrip("-")


def vm_name(target: pb.TargetMeta) -> str:
    name = dns_name(target.name)
    if not name:
        raise V2VError(f"-o kubevirt: guest name {target.name!r} has no letters or digits to make a "
                       "Kubernetes name of: choose another with -on", pb.ERROR_CODE_BAD_INPUT)
    return name


def _valid_claim(name: str) -> bool:
    return len(name) <= DNS_SUBDOMAIN_MAX and _DNS_SUBDOMAIN.fullmatch(name) is not None


def claim_names(options: output_pb2.KubevirtOutput, target: pb.TargetMeta, ndisks: int) -> list[str] | None:
    """The PVC or DataVolume name of each disk, or None for hostDisk volumes. Refuses options that
    cannot give a valid name per disk: the conversion must not run to end on a YAML that cannot apply."""
    if options.disk_claims and options.pvc_prefix:
        raise V2VError("-o kubevirt: give -oo pvc-prefix= or -oo disk= (per disk), not both",
                       pb.ERROR_CODE_BAD_INPUT)
    if options.disk_claims:
        if len(options.disk_claims) != ndisks:
            raise V2VError(f"-o kubevirt: {len(options.disk_claims)} -oo disk= given for {ndisks} "
                           f"disk{'s' if ndisks != 1 else ''}: give one per disk, in order",
                           pb.ERROR_CODE_BAD_INPUT)
        names = list(options.disk_claims)
        what = "-oo disk="
    elif options.pvc_prefix or options.data_volumes:
        # The prefix is glued on as given (no "-" added), so "-oo pvc-prefix=imported-" reads naturally.
        vm = vm_name(target)
        names = [f"{options.pvc_prefix}{vm}-sd{drive_letters(i)}" for i in range(ndisks)]
        what = "-oo pvc-prefix=" if options.pvc_prefix else "-oo data-volumes"
    else:
        return None
    if bad := [n for n in names if not _valid_claim(n)]:
        raise V2VError(f"-o kubevirt: {what}: {', '.join(map(repr, bad))} is not a valid claim name "
                       "(lowercase letters, digits, '-' and '.', at most 253)", pb.ERROR_CODE_BAD_INPUT)
    if len(set(names)) != len(names):
        raise V2VError(f"-o kubevirt: {what}: two disks cannot share a claim", pb.ERROR_CODE_BAD_INPUT)
    return names


def _cpu(source: pb.Source) -> dict[str, int]:
    if source.HasField("cpu_topology"):
        topo = source.cpu_topology
        return {"cores": max(topo.cores, 1), "sockets": max(topo.sockets, 1), "threads": max(topo.threads, 1)}
    return {"cores": max(source.vcpus, 1)}


def _memory(source: pb.Source) -> str:
    # Rounded up: a guest never gets less than it had. The inputs always set the memory (-i disk
    # assumes 2 GiB), so the floor of 1 MiB only keeps the quantity valid.
    return f"{max(math.ceil(source.memory / MiB), 1)}Mi"


def _firmware(target: pb.TargetMeta) -> dict[str, Any]:
    if target.firmware == pb.FIRMWARE_UEFI:
        # KubeVirt's EFI defaults to Secure Boot, which needs signed loaders: said either way, as
        # the conversion decided (GuestCaps.secure_boot).
        return {"bootloader": {"efi": {"secureBoot": target.caps.secure_boot}}}
    return {"bootloader": {"bios": {}}}


def _clock(caps: pb.GuestCaps) -> dict[str, Any]:
    clock: dict[str, Any]
    if caps.rtc_utc:
        clock = {"utc": {}}
    else:
        # The guest keeps its RTC in local time, but no phase knows its zone, and KubeVirt needs a
        # named one: UTC is right for the guests in UTC zones and off by the zone's offset for the
        # others, until the user sets their zone here (docs/outputs.md).
        clock = {"timezone": "UTC"}
    if caps.hyperv:
        # The libvirt XML's Windows timers, as virt-v2v's -o kubevirt writes them.
        clock["timer"] = {"hpet": {"present": False}, "pit": {"tickPolicy": "delay"},
                          "rtc": {"tickPolicy": "catchup"}, "hyperv": {}}
    return clock


def _hyperv() -> dict[str, Any]:
    features: dict[str, Any] = {name: {} for name in _HYPERV_FEATURES}
    features["spinlocks"] = {"spinlocks": HYPERV_SPINLOCK_RETRIES}
    return features


def _disks(target: pb.TargetMeta, disks: list[pb.TargetDisk], claims: list[str] | None,
           data_volumes: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """devices.disks and the volumes behind them, paired by name."""
    devices: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for i, disk in enumerate(disks):
        name = f"disk-{i}"
        device: dict[str, Any] = {"name": name, "disk": {"bus": _DISK_BUS[disk.bus or block_bus(target.caps)]}}
        if i == 0:
            device["bootOrder"] = 1  # the disk inspection found the OS on: the converted one
        devices.append(device)
        if claims is None:
            volumes.append({"name": name, "hostDisk": {"path": disk.path, "type": "Disk"}})
        elif data_volumes:
            volumes.append({"name": name, "dataVolume": {"name": claims[i]}})
        else:
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claims[i]}})
    return devices, volumes


def _nics(target: pb.TargetMeta) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """devices.interfaces and the networks behind them, paired by name. A VM has one pod network, so
    only the first NIC can take it, and only if it was on the default network: every other NIC goes
    to the Multus NetworkAttachmentDefinition named like its target network (-n/-b map them)."""
    model = _NIC_MODEL.get(target.caps.net_bus, "virtio")
    interfaces: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for i, nic in enumerate(target.nics or target.source.nics):
        name = f"net-{i}"
        interface: dict[str, Any] = {"name": name, "model": model}
        if nic.mac:
            interface["macAddress"] = nic.mac
        if i == 0 and nic.network in ("", POD_NETWORK):
            # The pod network is only reachable through the pod's own address: masquerade NATs to it.
            interface["masquerade"] = {}
            networks.append({"name": name, "pod": {}})
        else:
            interface["bridge"] = {}
            networks.append({"name": name, "multus": {"networkName": nic.network or POD_NETWORK}})
        interfaces.append(interface)
    return interfaces, networks


def _hypervisor_name(hypervisor: pb.Hypervisor) -> str:
    if hypervisor == pb.HYPERVISOR_UNSPECIFIED:
        return "unknown"
    return pb.Hypervisor.Name(hypervisor).removeprefix("HYPERVISOR_").lower()


def virtual_machine(target: pb.TargetMeta, disks: list[pb.TargetDisk],
                    options: output_pb2.KubevirtOutput) -> dict[str, Any]:
    """The VirtualMachine of the converted guest, with `disks` as its disks (in that order)."""
    caps = target.caps
    disk_devices, volumes = _disks(target, disks, claim_names(options, target, len(disks)), options.data_volumes)
    interfaces, networks = _nics(target)

    devices: dict[str, Any] = {"disks": disk_devices}
    if interfaces:
        devices["interfaces"] = interfaces
    else:
        devices["autoattachPodInterface"] = False  # else KubeVirt adds a NIC the source never had
    if caps.virtio_rng:
        devices["rng"] = {}
    devices["autoattachMemBalloon"] = caps.virtio_balloon
    if not caps.virtio_1_0:
        # A kernel from before virtio 1.0 finds no modern-only virtio device on q35's PCIe ports.
        devices["useVirtioTransitional"] = True

    domain: dict[str, Any] = {
        "cpu": _cpu(target.source),
        "memory": {"guest": _memory(target.source)},
    }
    # i440fx ("pc") is not among the machine types KubeVirt allows by default: other guests get the
    # cluster's default, which is q35 too.
    if caps.machine == pb.MACHINE_Q35:
        domain["machine"] = {"type": "q35"}
    domain["firmware"] = _firmware(target)
    domain["clock"] = _clock(caps)
    domain["features"] = {"acpi": {}, "apic": {}}
    if caps.hyperv:
        domain["features"]["hyperv"] = _hyperv()
    if caps.secure_boot and target.firmware == pb.FIRMWARE_UEFI:
        domain["features"]["smm"] = {"enabled": True}  # KubeVirt refuses secure boot without SMM
    domain["devices"] = devices

    vmi_spec: dict[str, Any] = {"domain": domain}
    if networks:
        vmi_spec["networks"] = networks
    vmi_spec["volumes"] = volumes

    annotations = {ANNOTATION_NAME: target.name, ANNOTATION_HYPERVISOR: _hypervisor_name(target.source.hypervisor)}
    if osinfo := short_id(target.inspection):
        annotations[ANNOTATION_OSINFO] = osinfo
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": vm_name(target), "annotations": annotations},
        # Halted: the disks are not in the cluster yet when the YAML is applied; the user starts the
        # VM (virtctl start) once they are.
        "spec": {"runStrategy": "Halted", "template": {"spec": vmi_spec}},
    }


def virtual_machine_yaml(target: pb.TargetMeta, disks: list[pb.TargetDisk],
                         options: output_pb2.KubevirtOutput) -> str:
    doc = virtual_machine(target, disks, options)
    return (f"# KubeVirt VirtualMachine of {target.name}, written by v2v -o kubevirt\n"
            + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def _from_cli(a: OutputArgs) -> output_pb2.KubevirtOutput:
    return output_pb2.KubevirtOutput(directory=a.directory(), pvc_prefix=a.oo.value("pvc-prefix"),
                                     disk_claims=a.oo.values("disk"), data_volumes=a.oo.flag("data-volumes"))


@OUTPUTS.register("kubevirt")
class KubevirtOutput(FileOutput):
    cli = OutputCli(["kubevirt"], _from_cli, directory=True,
                    oo=[("pvc-prefix=P", "persistentVolumeClaim volumes named P<name>-sda, ..."),
                        ("disk=NAME", "(repeated, in disk order) those claim names instead"),
                        ("data-volumes", "dataVolume volumes instead of persistentVolumeClaim")])

    extension = "yaml"

    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        super().check(spec, target)
        vm_name(target)
        claims = claim_names(spec.kubevirt, target, len(target.source.disks))
        # KubeVirt hands a hostDisk to QEMU as raw: a qcow2 file there would boot as garbage. A claim
        # is filled by an upload (CDI), which converts qcow2 itself.
        if claims is None and disk_format(spec) != "raw":
            raise V2VError("-o kubevirt: hostDisk volumes must be raw: drop -of qcow2, or put the disks "
                           "in claims (-oo pvc-prefix=, -oo disk=)", pb.ERROR_CODE_BAD_INPUT)

    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        return {f"{target.name}.yaml": virtual_machine_yaml(target, list(target.disks), spec.kubevirt)}
