"""The phony Windows guests: raw disks that libguestfs inspection takes for Windows (NTFS C: with
Windows/System32/{cmd.exe,config/SYSTEM,config/SOFTWARE}), built from our own empty hive, .reg files
and PE writer. All the disks are made in one libguestfs appliance launch (~20 s under TCG), and the
results are cached under a directory named by a hash of this package's sources."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any  # the guestfs binding has no type information

from tests.guests.windows import hive, virtio_win
from tests.guests.windows.pe import pe_executable

PACKAGE = Path(__file__).resolve().parent
REG = PACKAGE / "reg"
MiB = 1024**2
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
# ntfs-3g refuses a read-write mount when hiberfil.sys starts with this.
HIBERNATION_HEADER = b"HIBR".ljust(4096, b"\0")
# blkid calls a volume BitLocker (Vista flavour) when its boot sector's OEM id is this.
BITLOCKER_OEM_ID = b"-FVE-FS-"


@dataclass(frozen=True)
class Guest:
    """One phony guest. `disk_signature` (MBR) or `windows_guid` (GPT) is what its MountedDevices
    value for C: points at, so each guest's must differ: inspection looks the disk up among all the
    disks of the handle."""

    name: str
    arch: str  # "x86_64" or "i386": the cmd.exe written
    system_regs: tuple[str, ...]
    software_regs: tuple[str, ...]
    size_mib: int = 512
    boot_end_sector: int = 524287  # p1 is sectors 64..this (System Reserved, or the ESP); C: follows
    uefi: bool = False
    disk_signature: bytes = b""
    windows_guid: str = ""
    defect: str = ""  # "", "hibernated", "bitlocker" or "truncated-hive"

    @property
    def windows_start(self) -> int:
        return (self.boot_end_sector + 1) * SECTOR

    def mounted_devices_reg(self) -> str:
        """The SYSTEM MountedDevices value for C:. Generated, not hand-written: it is the disk layout
        above, as Windows records it (MBR: signature + LE64 byte offset; GPT: "DMIO:ID:" + the
        partition GUID in its little-endian byte form)."""
        if self.uefi:
            blob = b"DMIO:ID:" + uuid.UUID(self.windows_guid).bytes_le
        else:
            blob = self.disk_signature + struct.pack("<Q", self.windows_start)
        data = ",".join(f"{b:02x}" for b in blob)
        return ("Windows Registry Editor Version 5.00\n\n[HKEY_LOCAL_MACHINE\\SYSTEM\\MountedDevices]\n"
                f'"\\\\DosDevices\\\\C:"=hex(3):{data}\n')


_COMMON_SYSTEM = ("system-common.reg",)
_COMMON_SOFTWARE = ("software-common.reg",)
WIN2K22 = Guest("win2k22", "x86_64", _COMMON_SYSTEM + ("system-driverdatabase.reg", "system-win2k22.reg"),
                _COMMON_SOFTWARE + ("software-vmware-tools.reg", "software-win2k22.reg"), disk_signature=b"W22\x01")
# The broken ones: Server 2022's registry on a 64 MiB disk, each with one thing wrong.
_SMALL = {"size_mib": 64, "boot_end_sector": 8191}
GUESTS: dict[str, Guest] = {g.name: g for g in (
    WIN2K22,
    Guest("win11", "x86_64", _COMMON_SYSTEM + ("system-driverdatabase.reg", "system-win11.reg"),
          _COMMON_SOFTWARE + ("software-win11.reg",), uefi=True,
          windows_guid="5b3c1f2e-8d4a-4e6b-9f0c-1a2b3c4d5e6f"),
    Guest("win7-32", "i386", _COMMON_SYSTEM + ("system-criticaldevicedatabase.reg", "system-win7-32.reg"),
          _COMMON_SOFTWARE + ("software-vmware-tools.reg", "software-win7-32.reg"), disk_signature=b"W7\x00\x01"),
    Guest("winxp-32", "i386", _COMMON_SYSTEM + ("system-criticaldevicedatabase.reg", "system-winxp-32.reg"),
          _COMMON_SOFTWARE + ("software-winxp-32.reg",), disk_signature=b"WXP\x01"),
    Guest("win2k22-hibernated", "x86_64", WIN2K22.system_regs, WIN2K22.software_regs, **_SMALL,
          disk_signature=b"W22\x02", defect="hibernated"),
    Guest("win2k22-bitlocker", "x86_64", WIN2K22.system_regs, WIN2K22.software_regs, **_SMALL,
          disk_signature=b"W22\x03", defect="bitlocker"),
    Guest("win2k22-truncated-hive", "x86_64", WIN2K22.system_regs, WIN2K22.software_regs, **_SMALL,
          disk_signature=b"W22\x04", defect="truncated-hive"),
)}


def sources_hash() -> str:
    """Covers every file the guests are made from, so a change to any of them rebuilds."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".reg"):
            h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class _Files:
    """The host files one guest's disk receives."""

    system: Path
    software: Path
    cmd: Path
    bcd: Path | None = None
    extra: dict[str, Path] = field(default_factory=dict)  # guest path on C: -> host file


def _host_files(guest: Guest, work: Path) -> _Files:
    work.mkdir(parents=True)
    mounted = work / "mounted-devices.reg"
    mounted.write_text(guest.mounted_devices_reg())
    system = hive.build_hive(work / "SYSTEM", "HKEY_LOCAL_MACHINE\\SYSTEM",
                             [REG / r for r in guest.system_regs] + [mounted])
    software = hive.build_hive(work / "SOFTWARE", "HKEY_LOCAL_MACHINE\\SOFTWARE",
                               [REG / r for r in guest.software_regs])
    cmd = work / "cmd.exe"
    cmd.write_bytes(pe_executable(guest.arch))
    files = _Files(system, software, cmd)
    if guest.uefi:
        files.bcd = hive.build_hive(work / "BCD", "", [REG / "bcd.reg"])
    if guest.defect == "truncated-hive":
        # Cut inside the first hbin: the base block is intact, the root key is not all there.
        software.write_bytes(software.read_bytes()[:hive.BASE_BLOCK + 0x30])
    if guest.defect == "hibernated":
        hiberfil = work / "hiberfil.sys"
        hiberfil.write_bytes(HIBERNATION_HEADER)
        files.extra["/hiberfil.sys"] = hiberfil
    return files


def _partition(image: Path, guest: Guest) -> None:
    """Writes the partition table on the host (sfdisk): parted in the appliance costs tens of seconds
    a disk under TCG. MBR: p1 System Reserved, p2 C:, and the disk signature (label-id, the 4 bytes
    at 0x1B8). GPT: p1 the ESP, p2 C: with the partition GUID MountedDevices names."""
    total = guest.size_mib * MiB // SECTOR
    boot_size = guest.boot_end_sector + 1 - 64
    windows_start = guest.boot_end_sector + 1
    windows_size = total - 64 - windows_start + 1  # to sector -64, as upstream's `part-add ... -64`
    if guest.uefi:
        script = (f"label: gpt\nfirst-lba: 34\nunit: sectors\nstart=64, size={boot_size}, type={ESP_TYPE}\n"
                  f"start={windows_start}, size={windows_size}, type={BASIC_DATA_TYPE}, uuid={guest.windows_guid}\n")
    else:
        label_id = int.from_bytes(guest.disk_signature, "little")
        script = (f"label: dos\nlabel-id: 0x{label_id:08x}\nunit: sectors\nstart=64, size={boot_size}, type=7\n"
                  f"start={windows_start}, size={windows_size}, type=7\n")
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)], input=script, text=True,
                   check=True, stdout=subprocess.DEVNULL)


def _populate(g: Any, dev: str, guest: Guest, files: _Files) -> None:
    """Makes the filesystems on the partitioned `dev` and fills them, through the launched handle `g`."""
    boot, windows = f"{dev}1", f"{dev}2"
    g.mkfs("vfat" if guest.uefi else "ntfs", boot)
    g.mkfs("ntfs", windows)

    g.mount(windows, "/")
    for d in ("/Windows/System32/config", "/Windows/System32/drivers", "/Windows/Temp", "/Program Files"):
        g.mkdir_p(d)
    g.upload(str(files.system), "/Windows/System32/config/SYSTEM")
    g.upload(str(files.software), "/Windows/System32/config/SOFTWARE")
    g.upload(str(files.cmd), "/Windows/System32/cmd.exe")
    for target, source in files.extra.items():
        g.upload(str(source), target)
    g.umount_all()

    if files.bcd is not None:
        # A UEFI Windows boots from \EFI\Microsoft\Boot\bootmgfw.efi; no fallback \EFI\Boot\bootx64.efi,
        # which is what a conversion has to add.
        g.mount(boot, "/")
        g.mkdir_p("/EFI/Microsoft/Boot")
        g.upload(str(files.bcd), "/EFI/Microsoft/Boot/BCD")
        g.write("/EFI/Microsoft/Boot/bootmgfw.efi", b"fake bootmgfw.efi for tests\n")
        g.umount_all()
    if guest.defect == "bitlocker":
        g.pwrite_device(windows, BITLOCKER_OEM_ID, 3)


def build_guests(outdir: Path, names: list[str]) -> dict[str, Path]:
    """Builds the named guests as `outdir/<name>.img` (sparse raw), in one appliance launch."""
    import guestfs

    guests = [GUESTS[n] for n in names]
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="v2v-wg.") as tmp:
        files = [_host_files(guest, Path(tmp) / guest.name) for guest in guests]
        images = {guest.name: outdir / f"{guest.name}.img" for guest in guests}
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            for guest in guests:
                with open(images[guest.name], "wb") as f:
                    f.truncate(0)
                    f.truncate(guest.size_mib * MiB)
                _partition(images[guest.name], guest)
                g.add_drive_opts(str(images[guest.name]), format="raw")
            g.launch()
            for dev, guest, host in zip(g.list_devices(), guests, files, strict=True):
                _populate(g, dev, guest, host)
            g.shutdown()
        finally:
            g.close()
    return images


@dataclass(frozen=True)
class Built:
    """What build_all made: guest name -> disk image, and the fake virtio-win and tools."""

    guests: dict[str, Path]
    virtio_win: Path
    virtio_win_iso: Path
    virt_tools: Path


def build_all(outdir: Path, names: list[str] | None = None) -> Built:
    names = list(GUESTS) if names is None else names
    unknown = [n for n in names if n not in GUESTS]
    if unknown:
        raise ValueError(f"unknown guest(s) {', '.join(unknown)}; known: {', '.join(GUESTS)}")
    guests = build_guests(outdir, names)
    tree = outdir / "virtio-win"
    shutil.rmtree(tree, ignore_errors=True)
    virtio_win.make_tree(tree)
    with tempfile.TemporaryDirectory(prefix="v2v-wg-iso.") as staging:
        iso = virtio_win.make_iso(outdir / "virtio-win.iso", Path(staging))
    return Built(guests, tree, iso, virtio_win.make_virt_tools(outdir / "virt-tools"))


def cached(root: Path) -> Built:
    """All the guests under `root/<sources hash>/`, built only when that directory is not complete.
    Built in a sibling directory then renamed, so a concurrent run sees all of it or none."""
    final = root / sources_hash()
    if not (final / "complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=root))
        try:
            build_all(tmp)
            (tmp / "complete").touch()
            try:
                os.rename(tmp, final)
            except OSError:  # another run finished first: its copy is the same
                if not (final / "complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Built({n: final / f"{n}.img" for n in GUESTS}, final / "virtio-win", final / "virtio-win.iso",
                 final / "virt-tools")
