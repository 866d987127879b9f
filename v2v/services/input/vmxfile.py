"""VMware's .vmx files and the VMDK descriptors they name, read into what v2v knows of a guest.

Pure: text in, description out. Finding and serving the disks is vmx.py's job, so the same
parser serves a local .vmx and one read over ssh."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from v2v.services.input.limits import memory_problem, vcpus_problem
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
SECTOR = 512

# The order virt-v2v lists disks in (SCSI, NVMe, IDE; it skips SATA disks, which go before IDE
# here): the target's disk order, and so the guest's boot disk, follows it.
_BUSES: dict[str, pb.Controller] = {
    "scsi": pb.CONTROLLER_SCSI,
    "nvme": pb.CONTROLLER_NVME,
    "sata": pb.CONTROLLER_SATA,
    "ide": pb.CONTROLLER_IDE,
}
# Removable slots: units per bus, so that slots of different buses of one controller type never
# collide (IDE: master/slave; SATA: 30 AHCI ports; SCSI: 16 targets).
_UNITS_PER_BUS = {"ide": 2, "sata": 30, "scsi": 16, "nvme": 64}
_DEVICE = re.compile(r"^(scsi|nvme|sata|ide)(\d+):(\d+)$")
_NIC = re.compile(r"^ethernet(\d+)$")
_FLOPPY = re.compile(r"^floppy(\d+)$")
_CDROM_TYPES = frozenset({"cdrom-image", "atapi-cdrom", "cdrom-raw"})
# deviceType values of hard disks; an absent deviceType is a disk too (VMware's default).
_DISK_TYPES = frozenset({"disk", "plaindisk", "rawdisk", "scsi-harddisk", "ata-harddisk", "sata-harddisk"})
_NIC_MODELS = {"vmxnet3": pb.NIC_MODEL_VMXNET3, "e1000": pb.NIC_MODEL_E1000, "e1000e": pb.NIC_MODEL_E1000}
# VMware writes characters it cannot leave in a quoted value as |XX (hex): |22 is '"', |7C is '|'.
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")


class VmxError(ValueError):
    """The text is not what it claims to be; the caller names the file."""


def parse(text: str) -> dict[str, str]:
    """key = "value" lines -> {lower-cased key: value}. The last of repeated keys wins, as in VMware."""
    values: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, rest = line.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise VmxError(f"line {n}: not a key = \"value\" line: {line[:60]!r}")
        rest = rest.strip()
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                raise VmxError(f"line {n}: unterminated quoted value for {key}")
            value = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), rest[1:end])
        else:
            value = rest.split("#", 1)[0].strip()
        values[key] = value
    return values


def _bool(values: dict[str, str], key: str, default: bool) -> bool:
    v = values.get(key)
    if v is None:
        return default
    return v.strip().lower() in ("true", "yes", "1", "on")


def _int(values: dict[str, str], key: str) -> int | None:
    v = values.get(key)
    if v is None or not v.strip():
        return None
    try:
        return int(v.strip())
    except ValueError:
        raise VmxError(f"{key} = {v!r} is not a number") from None


@dataclass(frozen=True)
class VmxDisk:
    controller: pb.Controller
    bus: int
    unit: int
    file_name: str  # as written: usually relative to the .vmx directory
    adapter: str = ""  # scsiN.virtualDev: pvscsi, lsilogic, lsisas1068, buslogic


@dataclass
class Vmx:
    name: str
    memory: int  # bytes
    vcpus: int
    topology: pb.CpuTopology | None
    firmware: pb.Firmware
    secure_boot: bool
    guest_os: str
    disks: list[VmxDisk] = field(default_factory=list)
    nics: list[pb.Nic] = field(default_factory=list)
    removables: list[pb.Removable] = field(default_factory=list)

    def source(self) -> pb.Source:
        """The Source without its disks (their formats and sizes come from the files)."""
        src = pb.Source(name=self.name, hypervisor=pb.HYPERVISOR_VMWARE, memory=self.memory, vcpus=self.vcpus,
                        firmware=self.firmware, nics=self.nics, removables=self.removables,
                        secure_boot=self.secure_boot, os_type=self.guest_os)
        if self.topology is not None:
            src.cpu_topology.CopyFrom(self.topology)
        return src


def describe(values: dict[str, str], fallback_name: str) -> Vmx:
    """What the parsed keys say. Defaults are VMware's (32 MiB, 1 vCPU, BIOS), as in virt-v2v."""
    vcpus = _int(values, "numvcpus") or 1
    memory = (_int(values, "memsize") or 32) * MiB
    for problem in (vcpus_problem(vcpus), memory_problem(memory)):
        if problem:
            raise VmxError(f"numvcpus/memsize: {problem}")
    cores = _int(values, "cpuid.corespersocket")
    topology = None
    if cores and vcpus // cores > 0:
        topology = pb.CpuTopology(sockets=vcpus // cores, cores=cores, threads=1)
    fw = values.get("firmware", "bios").strip().lower()
    return Vmx(
        name=values.get("displayname") or fallback_name,
        memory=memory,
        vcpus=vcpus,
        topology=topology,
        firmware=pb.FIRMWARE_UEFI if fw == "efi" else pb.FIRMWARE_BIOS,
        secure_boot=fw == "efi" and _bool(values, "uefi.secureboot.enabled", False),
        guest_os=values.get("guestos", ""),
        disks=_disks(values),
        nics=_nics(values),
        removables=_removables(values),
    )


def parse_vmx(text: str, fallback_name: str) -> Vmx:
    return describe(parse(text), fallback_name)


def _devices(values: dict[str, str]) -> list[tuple[str, int, int, str]]:
    """Present (bus type, bus, unit, device type) of every xxxN:M device, in virt-v2v's order.
    A device, or its controller, set present = FALSE is not there; one saying nothing is."""
    found = set()
    for key in values:
        dev, _, _ = key.partition(".")
        if m := _DEVICE.match(dev):
            found.add((m.group(1), int(m.group(2)), int(m.group(3))))
    order = list(_BUSES)
    devices = []
    for kind, bus, unit in sorted(found, key=lambda d: (order.index(d[0]), d[1], d[2])):
        ns = f"{kind}{bus}:{unit}"
        if not _bool(values, f"{kind}{bus}.present", True) or not _bool(values, f"{ns}.present", True):
            continue
        devices.append((kind, bus, unit, values.get(f"{ns}.devicetype", "").strip().lower()))
    return devices


def _disks(values: dict[str, str]) -> list[VmxDisk]:
    disks = []
    for kind, bus, unit, dtype in _devices(values):
        ns = f"{kind}{bus}:{unit}"
        if (dtype and dtype not in _DISK_TYPES) or not values.get(f"{ns}.filename"):
            continue
        adapter = values.get(f"{kind}{bus}.virtualdev", "").lower() if kind == "scsi" else ""
        disks.append(VmxDisk(_BUSES[kind], bus, unit, values[f"{ns}.filename"], adapter))
    return disks


def _removables(values: dict[str, str]) -> list[pb.Removable]:
    found = [pb.Removable(type=pb.REMOVABLE_TYPE_CDROM, controller=_BUSES[kind],
                          slot=bus * _UNITS_PER_BUS[kind] + unit)
             for kind, bus, unit, dtype in _devices(values) if dtype in _CDROM_TYPES]
    floppies = sorted(int(m.group(1)) for key in values
                      if key.endswith(".present") and (m := _FLOPPY.match(key.partition(".")[0])))
    found += [pb.Removable(type=pb.REMOVABLE_TYPE_FLOPPY, slot=n) for n in floppies
              if _bool(values, f"floppy{n}.present", False)]
    return found


def _nics(values: dict[str, str]) -> list[pb.Nic]:
    ports = sorted({int(m.group(1)) for key in values if (m := _NIC.match(key.partition(".")[0]))})
    nics = []
    for port in ports:
        ns = f"ethernet{port}"
        if not _bool(values, f"{ns}.present", True):
            continue
        # A static address is the one the user chose; otherwise VMware's generated one (vpx,
        # generated) stands, and an old file may carry only .address.
        if values.get(f"{ns}.addresstype", "").lower() == "static":
            mac = values.get(f"{ns}.address", "")
        else:
            mac = values.get(f"{ns}.generatedaddress") or values.get(f"{ns}.address", "")
        bridged = values.get(f"{ns}.connectiontype", "").lower() == "bridged"
        nics.append(pb.Nic(
            mac=mac.strip().lower(),
            model=_NIC_MODELS.get(values.get(f"{ns}.virtualdev", "").lower(), pb.NIC_MODEL_UNSPECIFIED),
            network=values.get(f"{ns}.networkname") or ns,
            network_type=pb.NETWORK_TYPE_BRIDGE if bridged else pb.NETWORK_TYPE_NETWORK,
        ))
    return nics


# ---------------------------------------------------------------- VMDK descriptors

# Descriptors of disks that are all in one raw extent: what can be served as plain bytes. (Raw device
# mappings are not: their extent is a mapping file, the bytes are on a LUN.)
FLAT_TYPES = frozenset({"vmfs", "monolithicflat"})
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]*)"(?:\s+(\d+))?', re.IGNORECASE)


@dataclass(frozen=True)
class Extent:
    sectors: int
    kind: str  # VMFS, FLAT, SPARSE, VMFSSPARSE, ...
    file_name: str  # relative to the descriptor's directory
    offset: int  # sectors into the file


@dataclass(frozen=True)
class VmdkDescriptor:
    create_type: str  # lower-cased: vmfs, monolithicflat, vmfssparse, ...
    parent: str  # parentFileNameHint: set on a snapshot (delta) disk
    extents: list[Extent]

    @property
    def size(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR

    def flat_extent(self) -> Extent | None:
        """The one raw extent holding the whole disk, or None when the disk is anything else."""
        if self.parent or self.create_type not in FLAT_TYPES or len(self.extents) != 1:
            return None
        ext = self.extents[0]
        return ext if ext.kind.upper() in ("VMFS", "FLAT") and ext.offset == 0 else None


def is_sparse_vmdk(head: bytes) -> bool:
    """A binary VMDK: hosted sparse (KDMV, also streamOptimized) or an old ESX sparse (COWD)."""
    return head[:4] in (b"KDMV", b"COWD")


def parse_descriptor(text: str) -> VmdkDescriptor:
    """A text VMDK descriptor (the small .vmdk next to a -flat.vmdk or delta file)."""
    values: dict[str, str] = {}
    extents = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := _EXTENT.match(line):
            extents.append(Extent(int(m.group(2)), m.group(3), m.group(4), int(m.group(5) or 0)))
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
    if "createtype" not in values or not extents:
        raise VmxError("not a VMDK descriptor (no createType or no extent)")
    return VmdkDescriptor(values["createtype"].lower(), values.get("parentfilenamehint", ""), extents)
