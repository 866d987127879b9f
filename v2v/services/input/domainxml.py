"""A libvirt domain XML read into a Source and the list of its disks' sources. Pure: no files are
opened here (the caller hands in the bytes and resolves paths), so every rule is unit-testable.

Untrusted input: the XML goes through defusedxml, and any DTD is refused, so neither entity
expansion (billion laughs) nor external entities (XXE) can be used against the service."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote

import defusedxml
import defusedxml.ElementTree as SafeET

from v2v.drives import drive_index
from v2v.errors import V2VError
from v2v.services.input.limits import memory_problem, vcpus_problem
from v2v.v1 import types_pb2 as pb

NBD_PORT = 10809

# virt-v2v's default when <memory> is absent (libvirt itself always writes one).
DEFAULT_MEMORY = 1024**3

# libvirt's scaled integers (virScaleInteger): case-insensitive; "KB" is decimal, "k"/"KiB" binary.
_UNITS: dict[str, int] = {"b": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNITS[_p] = _UNITS[f"{_p}ib"] = 1024**_i
    _UNITS[f"{_p}b"] = 1000**_i

_HYPERVISORS = {
    "kvm": pb.HYPERVISOR_KVM,
    "qemu": pb.HYPERVISOR_KVM,
    "xen": pb.HYPERVISOR_XEN,
    "vmware": pb.HYPERVISOR_VMWARE,
    "hyperv": pb.HYPERVISOR_HYPERV,
    "vbox": pb.HYPERVISOR_VIRTUALBOX,
}

_BUSES = {
    "virtio": pb.CONTROLLER_VIRTIO_BLK,
    "scsi": pb.CONTROLLER_SCSI,
    "sata": pb.CONTROLLER_SATA,
    "ide": pb.CONTROLLER_IDE,
    "nvme": pb.CONTROLLER_NVME,
}

# When <target> has no bus, libvirt derives it from the device name's prefix.
_BUS_BY_PREFIX = {"vd": "virtio", "sd": "scsi", "hd": "ide"}

_NIC_MODELS = {
    "virtio": pb.NIC_MODEL_VIRTIO,
    "e1000": pb.NIC_MODEL_E1000,
    "e1000e": pb.NIC_MODEL_E1000,
    "rtl8139": pb.NIC_MODEL_RTL8139,
    "vmxnet3": pb.NIC_MODEL_VMXNET3,
}

_NETWORK_TYPES = {"network": pb.NETWORK_TYPE_NETWORK, "bridge": pb.NETWORK_TYPE_BRIDGE}

# A <loader> path naming one of these is UEFI firmware whatever its type says.
_UEFI_LOADER = re.compile(r"ovmf|edk2|aavmf|qemu_efi", re.IGNORECASE)


@dataclass(frozen=True)
class NbdSource:
    export: str = ""
    host: str = ""
    port: int = NBD_PORT
    socket: str = ""  # a Unix socket; as written, possibly relative

    def uri(self, socket: str = "") -> str:
        """The NBD URI; `socket` overrides the written socket path (once the caller resolved it)."""
        export = quote(self.export)
        if self.socket:
            return f"nbd+unix:///{export}?socket={socket or self.socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{export}"


@dataclass(frozen=True)
class DiskRef:
    """Where one <disk device="disk"> reads from, as the XML says it."""

    index: int
    kind: str  # "file", "block" or "nbd"
    target: str  # <target dev>, for messages ("vda")
    path: str = ""  # file or block device, as written, possibly relative
    nbd: NbdSource | None = None
    format: str = ""  # <driver type>; "" when the XML does not say
    controller: pb.Controller = pb.CONTROLLER_UNSPECIFIED


@dataclass
class Domain:
    source: pb.Source  # everything but the disks, which the caller probes and serves
    disks: list[DiskRef] = field(default_factory=list)


def _bad(where: str, cause: str) -> V2VError:
    return V2VError(f"{where}: {cause}", pb.ERROR_CODE_BAD_INPUT)


def _int(where: str, what: str, text: str | None) -> int:
    try:
        value = int((text or "").strip())
    except ValueError:
        raise _bad(where, f"{what} {text!r} is not a whole number") from None
    if value < 0:
        raise _bad(where, f"{what} {text!r} is negative")
    return value


def parse_xml(data: bytes, where: str) -> ET.Element:
    """The root element of untrusted XML; `where` (the file) starts every error message."""
    try:
        return SafeET.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise _bad(where, f"refused: the XML declares a DTD or entities ({type(exc).__name__}); "
                          "a libvirt domain XML has none") from None
    except ET.ParseError as exc:
        line, col = exc.position
        raise _bad(where, f"not XML (line {line}, column {col}: {str(exc).split(':')[0]})") from None
    except LookupError as exc:  # <?xml encoding="..."?> names no codec Python has
        raise _bad(where, f"not readable XML ({exc})") from None


def memory_bytes(where: str, el: ET.Element) -> int:
    """<memory unit="...">N</memory> in bytes; libvirt's default unit is KiB."""
    unit = el.get("unit", "KiB")
    scale = _UNITS.get(unit.lower())
    if scale is None:
        raise _bad(where, f"<{el.tag}> unit {unit!r} is not one libvirt knows (b, KiB, MiB, GiB, KB, MB, ...)")
    return _int(where, f"<{el.tag}>", el.text) * scale


def _memory(where: str, root: ET.Element) -> int:
    for tag in ("memory", "currentMemory"):
        if (el := root.find(tag)) is not None:
            return memory_bytes(where, el)
    return DEFAULT_MEMORY


def _topology(where: str, root: ET.Element) -> pb.CpuTopology | None:
    """Unset unless all three counts are there: libvirt requires them together."""
    el = root.find("cpu/topology")
    if el is None or not all(el.get(a) for a in ("sockets", "cores", "threads")):
        return None
    # CpuTopology has no dies: fold them into sockets so the product still equals the vCPUs.
    dies = _int(where, "<topology dies>", el.get("dies", "1")) or 1
    return pb.CpuTopology(sockets=_int(where, "<topology sockets>", el.get("sockets")) * dies,
                          cores=_int(where, "<topology cores>", el.get("cores")),
                          threads=_int(where, "<topology threads>", el.get("threads")))


def _firmware(root: ET.Element) -> pb.Firmware:
    """UEFI from <os firmware="efi"> or an OVMF/pflash <loader>; BIOS only from <os firmware="bios">.
    Otherwise unspecified, so inspection decides (an ESP means UEFI) instead of a guess here."""
    os_el = root.find("os")
    if os_el is None:
        return pb.FIRMWARE_UNSPECIFIED
    fw = os_el.get("firmware", "")
    if fw == "efi":
        return pb.FIRMWARE_UEFI
    if fw == "bios":
        return pb.FIRMWARE_BIOS
    loader = os_el.find("loader")
    if loader is not None and (loader.get("type") == "pflash" or _UEFI_LOADER.search(loader.text or "")):
        return pb.FIRMWARE_UEFI
    return pb.FIRMWARE_UNSPECIFIED


def _virtio_scsi_controllers(root: ET.Element) -> set[str]:
    return {c.get("index", "0") for c in root.iterfind("devices/controller")
            if c.get("type") == "scsi" and c.get("model") == "virtio-scsi"}


def _controller(disk: ET.Element, virtio_scsi: set[str]) -> pb.Controller:
    target = disk.find("target")
    dev = target.get("dev", "") if target is not None else ""
    bus = (target.get("bus") if target is not None else None) or _BUS_BY_PREFIX.get(dev[:2], "")
    if bus == "scsi":
        address = disk.find("address")
        ctl = address.get("controller", "0") if address is not None else "0"
        return pb.CONTROLLER_VIRTIO_SCSI if ctl in virtio_scsi else pb.CONTROLLER_SCSI
    return _BUSES.get(bus, pb.CONTROLLER_UNSPECIFIED)


def _target_dev(disk: ET.Element) -> str:
    target = disk.find("target")
    return target.get("dev", "") if target is not None else ""


def _nbd_source(where: str, what: str, src: ET.Element) -> NbdSource:
    export = src.get("name", "")
    host = src.find("host")
    if host is None:
        raise _bad(where, f"{what}: nbd source has no <host>")
    if host.get("transport") == "unix" or host.get("socket"):
        if not host.get("socket"):
            raise _bad(where, f"{what}: nbd source over a Unix socket names no socket")
        return NbdSource(export=export, socket=host.get("socket", ""))
    if not host.get("name"):
        raise _bad(where, f"{what}: nbd source has no host name")
    port = _int(where, f"{what}: nbd port", host.get("port")) if host.get("port") else NBD_PORT
    return NbdSource(export=export, host=host.get("name", ""), port=port)


def _disk(where: str, index: int, el: ET.Element, virtio_scsi: set[str]) -> DiskRef:
    dev = _target_dev(el)
    what = f"disk {index} ({dev or 'no target'})"
    kind = el.get("type", "file")
    driver = el.find("driver")
    fmt = driver.get("type", "") if driver is not None else ""
    controller = _controller(el, virtio_scsi)
    src = el.find("source")
    if kind in ("file", "block"):
        attr = "file" if kind == "file" else "dev"
        path = src.get(attr, "") if src is not None else ""
        if not path:
            raise _bad(where, f"{what} has no source (<source {attr}=...>)")
        return DiskRef(index, kind, dev, path=path, format=fmt, controller=controller)
    if kind == "network":
        if src is None:
            raise _bad(where, f"{what} has no source (<source protocol=...>)")
        protocol = src.get("protocol", "")
        if protocol != "nbd":
            raise V2VError(f"{where}: {what}: network protocol {protocol!r} is not supported (only nbd)",
                           pb.ERROR_CODE_UNSUPPORTED)
        return DiskRef(index, "nbd", dev, nbd=_nbd_source(where, what, src), format=fmt, controller=controller)
    raise V2VError(f"{where}: {what}: disk type {kind!r} is not supported (file, block or network nbd)",
                   pb.ERROR_CODE_UNSUPPORTED)


def _removable(el: ET.Element, kind: pb.RemovableType, virtio_scsi: set[str], taken: dict[int, int]) -> pb.Removable:
    controller = _controller(el, virtio_scsi)
    letters = _target_dev(el)[2:]
    if letters and re.fullmatch(r"[a-z]+", letters):
        slot = drive_index(letters)
    else:  # no usable name: next free slot on that controller
        slot = taken.get(controller, 0)
    taken[controller] = max(taken.get(controller, 0), slot + 1)
    return pb.Removable(type=kind, controller=controller, slot=slot)


def _nic(el: ET.Element) -> pb.Nic:
    """network and bridge keep their source; any other type (user, direct, ...) has none to
    keep, and lands where -n/-b say, else on the target's default network."""
    nic = pb.Nic()
    kind = el.get("type", "")
    if kind in _NETWORK_TYPES:
        nic.network_type = _NETWORK_TYPES[kind]
        src = el.find("source")
        nic.network = (src.get(kind, "") if src is not None else "")
    if (mac := el.find("mac")) is not None:
        nic.mac = mac.get("address", "").lower()
    if (model := el.find("model")) is not None:
        nic.model = _NIC_MODELS.get(model.get("type", ""), pb.NIC_MODEL_UNSPECIFIED)
    return nic


def parse_domain(data: bytes, where: str) -> Domain:
    """The Source and disk sources of a libvirt domain XML. `where` names the file in errors."""
    root = parse_xml(data, where)
    if root.tag != "domain":
        raise _bad(where, f"not a libvirt domain XML (the root element is <{root.tag}>, not <domain>)")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise _bad(where, "<domain> has no <name>")
    topology = _topology(where, root)
    if (vcpu := root.find("vcpu")) is not None:
        vcpus = _int(where, "<vcpu>", vcpu.text)
    elif topology is not None:
        vcpus = topology.sockets * topology.cores * topology.threads
    else:
        vcpus = 1
    memory = _memory(where, root)
    for problem in (vcpus_problem(vcpus), memory_problem(memory)):
        if problem:
            raise _bad(where, problem)
    source = pb.Source(
        name=name,
        hypervisor=_HYPERVISORS.get(root.get("type", ""), pb.HYPERVISOR_UNSPECIFIED),
        memory=memory,
        vcpus=vcpus,
        firmware=_firmware(root),
    )
    if topology is not None:
        source.cpu_topology.CopyFrom(topology)

    domain = Domain(source)
    virtio_scsi = _virtio_scsi_controllers(root)
    taken: dict[int, int] = {}
    for el in root.iterfind("devices/disk"):
        device = el.get("device", "disk")
        if device in ("disk", "lun"):
            domain.disks.append(_disk(where, len(domain.disks), el, virtio_scsi))
        elif device == "cdrom":
            source.removables.append(_removable(el, pb.REMOVABLE_TYPE_CDROM, virtio_scsi, taken))
        elif device == "floppy":
            source.removables.append(_removable(el, pb.REMOVABLE_TYPE_FLOPPY, virtio_scsi, taken))
    if not domain.disks:
        raise _bad(where, "the domain has no disks (no <disk device=\"disk\">)")
    source.nics.extend(_nic(el) for el in root.iterfind("devices/interface"))
    _cpu_model(root, source)
    if (graphics := root.find("devices/graphics")) is not None:
        port = graphics.get("port", "-1")
        source.graphics.CopyFrom(pb.Graphics(type=graphics.get("type", ""), listen=graphics.get("listen", ""),
                                             port=int(port) if port.lstrip("-").isdigit() else -1))
    source.sound.extend(el.get("model", "") for el in root.iterfind("devices/sound"))
    loader = root.find("os/loader")
    source.secure_boot = (loader is not None and loader.get("secure") == "yes") or \
        root.find("os/firmware/feature[@name='secure-boot'][@enabled='yes']") is not None
    return domain


def _cpu_model(root: ET.Element, source: pb.Source) -> None:
    """<cpu><model>..</model><vendor>..</vendor></cpu>; host-passthrough and host-model say "the
    host's", which means nothing on another host: recorded as the mode."""
    cpu = root.find("cpu")
    if cpu is None:
        return
    mode = cpu.get("mode", "custom")
    source.cpu_model = (cpu.findtext("model") or "").strip() if mode == "custom" else mode
    source.cpu_vendor = (cpu.findtext("vendor") or "").strip()
