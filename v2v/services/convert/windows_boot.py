"""Windows boot fixes: on UEFI, the ESP's BCD and fallback loader (NVRAM boot entries do not
move with the disks); on XP and older, the NTFS boot sector's disk geometry."""

from __future__ import annotations

import secrets
from pathlib import Path

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.guestpath import guest_path
from v2v.services.convert.inspection import esp_partitions
from v2v.services.convert.registry import Hive, decode_string

_BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
_DEFAULT_ENTRY = "23000003"
_GRAPHICS_MODE_DISABLED = "16000046"  # set by Parallels Tools: a black screen on the new display


def fix_esp(g: guestfs.GuestFS, systemroot: str, scratch: Path, report: StepReporter) -> None:
    """Each ESP: the default BCD entry loses graphicsmodedisabled, and EFI/Boot/bootx64.efi becomes
    Windows' boot manager, which firmware starts when it has no boot entry for the disk."""
    for part in esp_partitions(g):
        mp = f"{guest_path(g, systemroot)}/Temp/v2v-esp-{secrets.token_hex(4)}"
        g.mkdir_p(mp)
        try:
            g.mount(part, mp)
            try:
                _fix_bcd(g, mp, scratch, report)
                _fallback_loader(g, mp, report)
            finally:
                g.umount(mp)
        finally:
            g.rmdir(mp)


def _fix_bcd(g: guestfs.GuestFS, mp: str, scratch: Path, report: StepReporter) -> None:
    bcd = guest_path(g, f"{mp}/EFI/Microsoft/Boot/BCD")
    if not g.is_file(bcd):
        return
    hive = Hive(g, bcd, "BCD", scratch, report, step="bootloader")
    raw = hive.value(f"Objects\\{_BOOTMGR}\\Elements\\{_DEFAULT_ENTRY}", "Element")
    if raw is None:
        return
    default = decode_string(raw[1])
    if hive.delete(f"Objects\\{default}\\Elements\\{_GRAPHICS_MODE_DISABLED}",
                   "graphicsmodedisabled off: the display would stay black"):
        hive.commit()


def _fallback_loader(g: guestfs.GuestFS, mp: str, report: StepReporter) -> None:
    bootmgfw = guest_path(g, f"{mp}/EFI/Microsoft/Boot/bootmgfw.efi")
    if not g.is_file(bootmgfw):
        return
    boot_dir = guest_path(g, f"{mp}/EFI/Boot")
    fallback = guest_path(g, f"{boot_dir}/bootx64.efi")
    if g.is_file(fallback) and g.checksum("sha256", fallback) == g.checksum("sha256", bootmgfw):
        return
    if g.is_dir(boot_dir):
        g.rm_rf(boot_dir)
    g.mkdir(boot_dir)
    g.cp(bootmgfw, f"{boot_dir}/bootx64.efi")
    report.note("EFI/Boot/bootx64.efi is now Windows' boot manager (the firmware's fallback path)",
                step="bootloader")


def fix_ntfs_heads(g: guestfs.GuestFS, root: str, report: StepReporter) -> None:
    """XP's boot code reads the disk with the geometry in its NTFS boot sector: a geometry from the
    old hypervisor does not boot on the new one (virt-v2v's fix_ntfs_heads)."""
    if g.pread_device(root, 8, 3) != b"NTFS    ":
        return
    size = g.blockdev_getsize64(g.part_to_dev(root))
    heads = 0x40 if size < 2114445312 else 0x80 if size < 4228374780 else 0xFF
    g.pwrite_device(root, heads.to_bytes(2, "little"), 0x1A)
    report.note(f"NTFS boot sector of {root}: {heads} heads", step="bootloader")
