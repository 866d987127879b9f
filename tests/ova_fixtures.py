"""Small synthetic OVAs for the -i ova tests: hand-written OVF descriptors (VMware and VirtualBox
flavours), tiny raw/qcow2/vmdk disks with known bytes, tars and manifests built with tarfile."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024**2
VMDK_URL = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
QCOW2_URL = "http://www.gnome.org/~markmc/qcow-image-format.html"
RAW_URL = "http://en.wikipedia.org/wiki/Byte"
NS = ('xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
      'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
      'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
      'xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vbox="http://www.virtualbox.org/ovf/machine"')
_CONTROLLER_TYPES = {"ide": 5, "scsi": 6, "sata": 20}


def marker(index: int) -> bytes:
    """What disk `index` holds at its start and at 3 MiB, so each served disk can be told apart."""
    return f"V2V-OVA-TEST-DISK-{index}".encode().ljust(512, b".")


def make_raw(path: Path, index: int, size: int = 8 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(marker(index))
        f.seek(3 * MiB)
        f.write(marker(index))
    return path


def make_image(path: Path, index: int, fmt: str, *options: str) -> Path:
    """A disk of `fmt` holding make_raw's bytes."""
    raw = make_raw(path.with_name(path.name + ".src"), index)
    cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt]
    for opt in options:
        cmd += ["-o", opt]
    subprocess.run([*cmd, str(raw), str(path)], check=True)
    raw.unlink()
    return path


@dataclass
class Disk:
    href: str
    controller: str = "scsi"  # ide, scsi, sata
    format_url: str = ""
    compression: str = ""
    disk_id: str = ""  # default vmdiskN; set to break the reference


@dataclass
class Spec:
    """What the OVF says."""
    disks: list[Disk]
    name: str = "synth"
    memory_mib: int = 2048
    vcpus: int = 4
    cores_per_socket: int = 2
    firmware: str = "bios"  # "" = no vmw:Config firmware
    secure_boot: bool = False
    nics: list[tuple[str, str, str]] = field(default_factory=lambda: [("00:50:56:01:02:03", "VmxNet3", "VM Network")])
    cdrom: bool = True
    floppy: bool = False
    vbox: bool = False  # VirtualBox flavour: vbox:Machine with its own firmware and MACs
    vbox_macs: list[str] = field(default_factory=list)
    doctype: str = ""  # prepended DOCTYPE (for the XXE / entity tests)


def ovf(spec: Spec) -> str:
    files, disks, items = [], [], []
    iid = 10

    def item(body: str) -> None:
        nonlocal iid
        iid += 1
        items.append(f"<Item><rasd:InstanceID>{iid}</rasd:InstanceID>{body}</Item>")

    controllers = {}
    for kind in dict.fromkeys(d.controller for d in spec.disks):
        item(f"<rasd:Address>0</rasd:Address><rasd:ElementName>{kind} 0</rasd:ElementName>"
             f"<rasd:ResourceType>{_CONTROLLER_TYPES[kind]}</rasd:ResourceType>")
        controllers[kind] = iid
    for n, d in enumerate(spec.disks, 1):
        comp = f' ovf:compression="{d.compression}"' if d.compression else ""
        files.append(f'<File ovf:href="{d.href}" ovf:id="file{n}"{comp}/>')
        fmt = f' ovf:format="{d.format_url}"' if d.format_url else ""
        disks.append(f'<Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk{n}" '
                     f'ovf:fileRef="file{n}"{fmt}/>')
    for n, d in enumerate(spec.disks, 1):
        item(f"<rasd:AddressOnParent>{n}</rasd:AddressOnParent><rasd:ElementName>Hard disk {n}</rasd:ElementName>"
             f"<rasd:HostResource>ovf:/disk/{d.disk_id or f'vmdisk{n}'}</rasd:HostResource>"
             f"<rasd:Parent>{controllers[d.controller]}</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType>")
    for mac, model, net in spec.nics:
        addr = f"<rasd:Address>{mac}</rasd:Address>" if mac else ""
        item(f"{addr}<rasd:Connection>{net}</rasd:Connection><rasd:ElementName>NIC</rasd:ElementName>"
             f"<rasd:ResourceSubType>{model}</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType>")
    if spec.cdrom:
        item("<rasd:Address>1</rasd:Address><rasd:ElementName>IDE 1</rasd:ElementName>"
             "<rasd:ResourceType>5</rasd:ResourceType>")
        item(f"<rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>CD/DVD drive 1</rasd:ElementName>"
             f"<rasd:Parent>{iid}</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType>")
    if spec.floppy:
        item("<rasd:ElementName>Floppy drive 1</rasd:ElementName><rasd:ResourceType>14</rasd:ResourceType>")
    config = ""
    if spec.firmware:
        config += f'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{spec.firmware}"/>'
    if spec.secure_boot:
        config += '<vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" vmw:value="true"/>'
    vbox = ""
    if spec.vbox:
        adapters = "".join(f'<Adapter slot="{i}" enabled="true" MACAddress="{m}" type="82540EM"/>'
                           for i, m in enumerate(spec.vbox_macs))
        vbox = (f'<vbox:Machine ovf:required="false" version="1.16-linux" name="{spec.name}" OSType="Debian_64">'
                f'<Hardware><Firmware type="{spec.firmware.upper()}"/><Network>{adapters}</Network></Hardware>'
                "</vbox:Machine>")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
{spec.doctype}<Envelope {NS}>
  <References>{''.join(files)}</References>
  <DiskSection><Info>Virtual disks</Info>{''.join(disks)}</DiskSection>
  <VirtualSystem ovf:id="{spec.name}">
    <Info>A virtual machine</Info>
    <Name>{spec.name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{spec.vcpus}</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">{spec.cores_per_socket}</vmw:CoresPerSocket></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{spec.memory_mib}</rasd:VirtualQuantity></Item>
      {''.join(items)}
      {config}
    </VirtualHardwareSection>
    {vbox}
  </VirtualSystem>
</Envelope>
"""


def manifest(files: dict[str, bytes | Path], algo: str = "SHA256") -> bytes:
    lines = []
    for name, data in files.items():
        h = hashlib.new(algo.lower())
        h.update(data if isinstance(data, bytes) else data.read_bytes())
        lines.append(f"{algo}({name})= {h.hexdigest()}\n")
    return "".join(lines).encode()


def make_tar(out: Path, files: dict[str, bytes | Path]) -> Path:
    """A ustar OVA holding `files` (member name -> bytes or a file), in that order."""
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data) if isinstance(data, bytes) else data.stat().st_size
            info.mode = 0o644
            with (io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")) as f:
                tar.addfile(info, f)
    return out


def make_ova(out: Path, spec: Spec, disks: dict[str, Path], *, folder: str = "", with_manifest: bool = True,
             extra: dict[str, bytes | Path] | None = None) -> Path:
    """An OVA of `spec`'s descriptor, a manifest over it and `disks` (href -> file), OVF first."""
    prefix = f"{folder}/" if folder else ""
    descriptor = ovf(spec).encode()
    files: dict[str, bytes | Path] = {f"{prefix}{spec.name}.ovf": descriptor}
    if with_manifest:  # names relative to the manifest's folder, as the OVF's are
        files[f"{prefix}{spec.name}.mf"] = manifest({f"{spec.name}.ovf": descriptor, **disks})
    files.update({f"{prefix}{href}": path for href, path in disks.items()})
    return make_tar(out, {**files, **(extra or {})})
