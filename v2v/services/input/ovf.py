"""Reading an OVF descriptor (DMTF OVF 1.x/2.x, VMware and VirtualBox flavours) into a Source.

A pure function of the XML text: no files are opened here, so every odd descriptor can be tested
without an OVA around it. Elements and attributes are matched by local name: exporters disagree on
prefixes (ovf:Item, Item, OVF 2's StorageItem/EthernetPortItem) but never on the names."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from v2v.errors import V2VError
from v2v.services.input.limits import memory_problem, vcpus_problem
from v2v.v1 import types_pb2 as pb

MiB = 1024**2
GiB = 1024**3
DEFAULT_MEMORY = GiB  # an OVF without a memory item: what virt-v2v assumes too

# CIM ResourceType values (DSP0004 CIM_ResourceAllocationSettingData).
RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_NIC = 3, 4, 5, 6, 10
RT_FLOPPY, RT_CDROM, RT_DVD, RT_DISK, RT_SATA = 14, 15, 16, 17, 20

_CONTROLLERS = {RT_IDE: pb.CONTROLLER_IDE, RT_SCSI: pb.CONTROLLER_SCSI, RT_SATA: pb.CONTROLLER_SATA}
_REMOVABLES = {RT_CDROM: pb.REMOVABLE_TYPE_CDROM, RT_DVD: pb.REMOVABLE_TYPE_CDROM, RT_FLOPPY: pb.REMOVABLE_TYPE_FLOPPY}
_UNIT_NAMES = {"byte": 1, "bytes": 1, "kb": 1024, "kilobytes": 1024, "mb": MiB, "megabytes": MiB,
               "gb": GiB, "gigabytes": GiB}


class OvfFile(NamedTuple):
    """The file behind one disk: where it is, relative to the .ovf, and how it is stored."""
    href: str  # normalised relative path ("disk1.vmdk", "disks/disk2.qcow2")
    format: str  # what the OVF declares: "vmdk", "qcow2", "raw", or "" when it does not say
    compression: str  # "gzip" or ""


@dataclass
class Ovf:
    source: pb.Source  # disks carry index, controller and the declared format; the input adds the rest
    files: list[OvfFile]  # files[i] holds source.disks[i]
    os_type: str = ""  # vmw:osType, vbox OSType or the OS description (also in source.os_type)
    secure_boot: bool = False  # also in source.secure_boot


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _kids(el: Element, name: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == name]


def _kid(el: Element, name: str) -> Element | None:
    return next(iter(_kids(el, name)), None)


def _text(el: Element, name: str) -> str:
    kid = _kid(el, name)
    return (kid.text or "").strip() if kid is not None else ""


def _attr(el: Element, name: str) -> str:
    return next((v.strip() for k, v in el.attrib.items() if _local(k) == name), "")


def _descendants(el: Element, name: str) -> list[Element]:
    return [e for e in el.iter() if _local(e.tag) == name]


def _int(value: str, what: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise V2VError(f"{where}: {what} is {value!r}, not a whole number", pb.ERROR_CODE_BAD_INPUT) from None


def _bounded(value: int, problem: Callable[[int], str | None], where: str) -> int:
    if why := problem(value):
        raise V2VError(f"{where}: {why}", pb.ERROR_CODE_BAD_INPUT)
    return value


def allocation_units(units: str, where: str, default: int = MiB) -> int:
    """Bytes per unit of a programmatic unit ("byte * 2^20", "MegaBytes", "byte")."""
    u = re.sub(r"\s+", "", units).lower()
    if not u:
        return default
    if u in _UNIT_NAMES:
        return _UNIT_NAMES[u]
    m = re.fullmatch(r"byte\*(\d+)\^(\d+)", u)
    if m:
        size: int = int(m[1]) ** int(m[2])  # typeshed: int ** int may be a float (not for these exponents)
        return size
    raise V2VError(f"{where}: unknown allocation units {units!r}", pb.ERROR_CODE_BAD_INPUT)


def safe_relative(name: str, where: str, what: str) -> str:
    """A relative path that stays inside the OVA: absolute paths, '..' and URLs are refused,
    as they would make v2v read files the OVA does not hold."""
    if "://" in name:
        raise V2VError(f"{where}: {what} {name!r} is a URL; v2v reads only files inside the OVA",
                       pb.ERROR_CODE_BAD_INPUT)
    if not name.isprintable():  # a newline or control character in a name would forge lines in logs and errors
        raise V2VError(f"{where}: unsafe {what} {name!r} (control characters)", pb.ERROR_CODE_BAD_INPUT)
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise V2VError(f"{where}: unsafe {what} {name!r} (absolute or with '..')", pb.ERROR_CODE_BAD_INPUT)
    return posixpath.normpath("/".join(parts))


def _declared_format(url: str) -> str:
    """ovf:format is a specification URL; only a few are in use."""
    u = url.lower()
    if "vmdk" in u:
        return "vmdk"
    if "qcow" in u:
        return "qcow2"
    if "wiki/byte" in u or u.endswith("raw"):  # oVirt and libvirt mark raw disks with this URL
        return "raw"
    return ""


def _parse_xml(data: bytes, where: str) -> Element:
    try:
        # No DTDs and no entities: an OVF has no use for them, and they are how XXE and
        # billion-laughs attacks get in.
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise V2VError(f"{where}: has a DOCTYPE, DTD or entity declarations ({type(exc).__name__}); refused: "
                       "an OVF needs none, and they carry XXE and billion-laughs attacks",
                       pb.ERROR_CODE_BAD_INPUT) from None
    except ParseError as exc:
        raise V2VError(f"{where}: not well-formed XML ({exc})", pb.ERROR_CODE_BAD_INPUT) from None
    except LookupError as exc:  # <?xml encoding="..."?> names no codec Python has
        raise V2VError(f"{where}: not readable XML ({exc})", pb.ERROR_CODE_BAD_INPUT) from None


def _virtual_system(root: Element, where: str) -> Element:
    if _local(root.tag) != "Envelope":
        raise V2VError(f"{where}: not an OVF descriptor (root element {_local(root.tag)!r}, not Envelope)",
                       pb.ERROR_CODE_BAD_INPUT)
    systems = _descendants(root, "VirtualSystem")
    if not systems:
        raise V2VError(f"{where}: no VirtualSystem in it", pb.ERROR_CODE_BAD_INPUT)
    if len(systems) > 1:
        raise V2VError(f"{where}: holds {len(systems)} virtual machines; v2v converts one at a time",
                       pb.ERROR_CODE_UNSUPPORTED)
    return systems[0]


def _items(root: Element, system: Element, where: str) -> list[Element]:
    """The hardware items of the default deployment configuration (the others are alternatives)."""
    section = next(iter(_descendants(system, "VirtualHardwareSection")), None)
    if section is None:
        raise V2VError(f"{where}: the VirtualSystem has no VirtualHardwareSection", pb.ERROR_CODE_BAD_INPUT)
    configs = [c for s in _descendants(root, "DeploymentOptionSection") for c in _kids(s, "Configuration")]
    default = next((_attr(c, "id") for c in configs if _attr(c, "default") == "true"),
                   _attr(configs[0], "id") if configs else "")
    items = [i for i in section if _local(i.tag) in ("Item", "StorageItem", "EthernetPortItem")]
    return [i for i in items if not _attr(i, "configuration") or default in _attr(i, "configuration").split()]


def _hardware_config(system: Element) -> dict[str, str]:
    """VMware's vmw:Config key/value pairs of the VirtualHardwareSection (firmware, secure boot)."""
    out: dict[str, str] = {}
    for section in _descendants(system, "VirtualHardwareSection"):
        for c in _kids(section, "Config") + _kids(section, "ExtraConfig"):
            out[_attr(c, "key")] = _attr(c, "value")
    return out


def _mac(text: str) -> str:
    """aa:bb:cc:dd:ee:ff, from the colon, dash or bare-hex forms exporters write."""
    hexdigits = re.sub(r"[^0-9a-fA-F]", "", text)
    if len(hexdigits) != 12:
        return ""
    return ":".join(hexdigits[i:i + 2] for i in range(0, 12, 2)).lower()


def _nic_model(subtype: str) -> pb.NicModel:
    s = subtype.lower()
    for key, model in (("vmxnet3", pb.NIC_MODEL_VMXNET3), ("e1000", pb.NIC_MODEL_E1000),
                       ("virtio", pb.NIC_MODEL_VIRTIO), ("rtl8139", pb.NIC_MODEL_RTL8139)):
        if key in s:
            return model
    return pb.NIC_MODEL_UNSPECIFIED


def _controller(item: Element | None) -> pb.Controller:
    if item is None:
        return pb.CONTROLLER_UNSPECIFIED
    rtype = _text(item, "ResourceType")
    if "nvme" in _text(item, "ResourceSubType").lower():  # VMware: ResourceType 20, vmware.nvme.controller
        return pb.CONTROLLER_NVME
    return _CONTROLLERS.get(int(rtype) if rtype.isdigit() else -1, pb.CONTROLLER_UNSPECIFIED)


def _vbox(system: Element) -> Element | None:
    return next((e for e in system.iter() if e.tag == "{http://www.virtualbox.org/ovf/machine}Machine"), None)


def _files(root: Element) -> dict[str, Element]:
    return {_attr(f, "id"): f for r in _kids(root, "References") for f in _kids(r, "File")}


def _disks(root: Element) -> dict[str, Element]:
    return {_attr(d, "diskId"): d for s in _descendants(root, "DiskSection") for d in _kids(s, "Disk")}


def _disk_file(item: Element, root: Element, where: str) -> OvfFile:
    """HostResource ovf:/disk/ID -> DiskSection Disk -> References File (or ovf:/file/ID directly)."""
    label = _text(item, "ElementName") or _text(item, "Caption") or f"item {_text(item, 'InstanceID')}"
    host = _text(item, "HostResource")
    m = re.fullmatch(r"(?:ovf:)?/?(disk|file)/(.+)", host)
    if not m:
        raise V2VError(f"{where}: {label} has HostResource {host!r}, not ovf:/disk/ID", pb.ERROR_CODE_BAD_INPUT)
    fmt, file_id = "", m[2]
    if m[1] == "disk":
        disk = _disks(root).get(m[2])
        if disk is None:
            raise V2VError(f"{where}: {label} refers to disk {m[2]!r}, which the DiskSection does not have",
                           pb.ERROR_CODE_BAD_INPUT)
        file_id, fmt = _attr(disk, "fileRef"), _declared_format(_attr(disk, "format"))
        if not file_id:
            raise V2VError(f"{where}: disk {m[2]!r} has no file (a blank disk to create); nothing to convert",
                           pb.ERROR_CODE_BAD_INPUT)
    f = _files(root).get(file_id)
    if f is None:
        raise V2VError(f"{where}: {label} refers to file {file_id!r}, which References does not list",
                       pb.ERROR_CODE_BAD_INPUT)
    href = safe_relative(_attr(f, "href"), where, "disk file name")
    if _attr(f, "chunkSize"):
        raise V2VError(f"{where}: {href} is split into chunks (ovf:chunkSize), which v2v does not read",
                       pb.ERROR_CODE_UNSUPPORTED)
    compression = _attr(f, "compression").lower()
    if compression not in ("", "identity", "gzip"):
        raise V2VError(f"{where}: {href} has compression {compression!r}; only gzip is known",
                       pb.ERROR_CODE_UNSUPPORTED)
    if compression != "gzip" and href.lower().endswith(".gz"):
        compression = "gzip"
    return OvfFile(href, fmt, "gzip" if compression == "gzip" else "")


def parse_ovf(data: bytes, where: str) -> Ovf:
    """The Source an OVF describes, and the file of each disk in order. `where` names the .ovf in
    errors, which are one-line BAD_INPUT (or UNSUPPORTED) V2VErrors."""
    root = _parse_xml(data, where)
    system = _virtual_system(root, where)
    items = _items(root, system, where)
    vbox = _vbox(system)
    by_id = {_text(i, "InstanceID"): i for i in items}
    config = _hardware_config(system)

    def rtype(item: Element) -> int:
        t = _text(item, "ResourceType")
        return int(t) if t.isdigit() else -1

    source = pb.Source(name=_text(system, "Name") or _attr(system, "id"),
                       hypervisor=pb.HYPERVISOR_VIRTUALBOX if vbox is not None else pb.HYPERVISOR_VMWARE,
                       memory=DEFAULT_MEMORY, vcpus=1)
    ovf = Ovf(source=source, files=[])

    for item in items:
        t = rtype(item)
        if t == RT_CPU:
            source.vcpus = _bounded(_int(_text(item, "VirtualQuantity") or "1", "the vCPU count", where),
                                    vcpus_problem, where)
            cores = _text(item, "CoresPerSocket")
            if cores:
                c = max(1, _int(cores, "CoresPerSocket", where))
                source.cpu_topology.CopyFrom(pb.CpuTopology(sockets=max(1, source.vcpus // c), cores=c, threads=1))
        elif t == RT_MEMORY:
            qty = _int(_text(item, "VirtualQuantity"), "the memory size", where)
            source.memory = _bounded(qty * allocation_units(_text(item, "AllocationUnits"), where), memory_problem,
                                     where)
        elif t == RT_DISK:
            ovf.files.append(_disk_file(item, root, where))
            source.disks.append(pb.SourceDisk(index=len(source.disks), format=ovf.files[-1].format,
                                              controller=_controller(by_id.get(_text(item, "Parent")))))
        elif t == RT_NIC:
            source.nics.append(pb.Nic(mac=_mac(_text(item, "Address")), model=_nic_model(_text(item,
                                      "ResourceSubType")), network=_text(item, "Connection"),
                                      network_type=pb.NETWORK_TYPE_NETWORK))
        elif t in _REMOVABLES:
            parent = by_id.get(_text(item, "Parent"))
            controller = _controller(parent)
            slot = _int(_text(item, "AddressOnParent") or "0", "AddressOnParent", where)
            if controller == pb.CONTROLLER_IDE and parent is not None:
                # Two devices per IDE channel: the channel (controller Address) picks the pair.
                slot += 2 * _int(_text(parent, "Address") or "0", "the IDE controller Address", where)
            source.removables.append(pb.Removable(type=_REMOVABLES[t], controller=controller, slot=slot))

    if not source.disks:
        raise V2VError(f"{where}: the virtual machine has no disks", pb.ERROR_CODE_BAD_INPUT)
    _firmware(ovf, config, vbox)
    _os_type(ovf, system, vbox)
    if vbox is not None:
        _vbox_macs(source, vbox)
    return ovf


def _firmware(ovf: Ovf, config: dict[str, str], vbox: Element | None) -> None:
    fw = config.get("firmware", "").lower()
    if vbox is not None:
        fw = next((_attr(e, "type").lower() for e in _descendants(vbox, "Firmware")), fw)
    if fw.startswith("efi"):
        ovf.source.firmware = pb.FIRMWARE_UEFI
    elif fw == "bios":
        ovf.source.firmware = pb.FIRMWARE_BIOS
    ovf.secure_boot = (config.get("uefi.secureBoot.enabled", "").lower() == "true"
                       or config.get("bootOptions.efiSecureBootEnabled", "").lower() == "true")


def _os_type(ovf: Ovf, system: Element, vbox: Element | None) -> None:
    section = next(iter(_descendants(system, "OperatingSystemSection")), None)
    os_type = _attr(vbox, "OSType") if vbox is not None else ""
    if section is not None:
        os_type = os_type or _attr(section, "osType") or _text(section, "Description")
    ovf.os_type = os_type


def _vbox_macs(source: pb.Source, vbox: Element) -> None:
    """VirtualBox keeps the MACs only in its own machine section: its enabled adapters, in slot
    order, are the OVF's NICs in order."""
    adapters = sorted((a for a in _descendants(vbox, "Adapter") if _attr(a, "enabled") == "true"),
                      key=lambda a: int(_attr(a, "slot") or 0))
    for nic, adapter in zip(source.nics, adapters, strict=False):
        nic.mac = nic.mac or _mac(_attr(adapter, "MACAddress"))
