"""Inspection: find the guest's operating system, pick its root (--root), mount it."""

from __future__ import annotations

from collections.abc import Sequence

import guestfs

from v2v.errors import V2VError
from v2v.services.convert.encryption import refuse_locked, unlock
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb


def choose_root(roots: list[str], choice: convert_pb2.RootChoice) -> str:
    """virt-v2v's --root: single (the default) fails on several roots, first takes the first,
    a device name takes that one."""
    if not roots:
        raise V2VError("no operating system was found on the disks (is this a guest's system disk?)",
                       pb.ERROR_CODE_NO_OS)
    kind = choice.WhichOneof("kind")
    if kind == "device":
        if choice.device not in roots:
            raise V2VError(f"--root {choice.device}: not a root of this guest (roots: {', '.join(roots)})",
                           pb.ERROR_CODE_BAD_INPUT)
        return choice.device
    if kind == "first" or len(roots) == 1:
        return roots[0]
    raise V2VError(f"the disks hold {len(roots)} operating systems ({', '.join(roots)}): choose one with "
                   "--root first or --root DEVICE", pb.ERROR_CODE_MULTIPLE_ROOTS)


def inspect(g: guestfs.GuestFS, choice: convert_pb2.RootChoice,
            keys: Sequence[convert_pb2.LuksKey] = ()) -> tuple[pb.Inspection, list[str]]:
    """The chosen root's inspection, and the encrypted devices no key opened."""
    locked = unlock(g, list(keys))
    try:
        roots = g.inspect_os()
    except RuntimeError as exc:
        if "Hivex" in str(exc):  # libguestfs 1.48 lets a damaged Windows hive escape as an exception
            raise V2VError("inspection failed: a Windows registry hive on the disks is damaged or truncated "
                           f"(SYSTEM or SOFTWARE): run chkdsk in the source guest, or restore the hive ({exc})",
                           pb.ERROR_CODE_NO_OS) from None
        raise V2VError(f"inspection failed: {exc}", pb.ERROR_CODE_NO_OS) from None
    if not roots:
        refuse_locked(locked)
        refuse_bitlocker(g)
        refuse_dynamic_disks(g)
    root = choose_root(sorted(roots), choice)
    insp = pb.Inspection(
        root=root,
        type=g.inspect_get_type(root),
        distro=g.inspect_get_distro(root),
        product_name=g.inspect_get_product_name(root),
        major_version=g.inspect_get_major_version(root),
        minor_version=g.inspect_get_minor_version(root),
        arch=g.inspect_get_arch(root),
        hostname=g.inspect_get_hostname(root),
        package_format=g.inspect_get_package_format(root),
        package_management=g.inspect_get_package_management(root),
        mountpoints=g.inspect_get_mountpoints(root),
    )
    insp.firmware = pb.FIRMWARE_UEFI if has_esp(g) else pb.FIRMWARE_BIOS
    return insp, locked


def refuse_bitlocker(g: guestfs.GuestFS) -> None:
    """A system volume encrypted with BitLocker hides Windows from inspection: say so rather than
    "no operating system"."""
    locked = []
    for dev in g.list_partitions() + g.list_devices():
        try:
            if g.vfs_type(dev) == "BitLocker":
                locked.append(dev)
        except RuntimeError:
            continue
    if locked:
        raise V2VError(f"{', '.join(locked)} is encrypted with BitLocker, so Windows cannot be converted: turn "
                       "BitLocker off in the source guest (manage-bde -off C:, then wait for the decryption to "
                       "finish) and convert again", pb.ERROR_CODE_UNSUPPORTED)


ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def partition_type(g: guestfs.GuestFS, part: str) -> tuple[str, str] | None:
    """(scheme, type) of a partition as its table records it: ("gpt", the type GUID in capitals) or
    ("dos", the MBR id as "0x42"); None when the table cannot be read. One blkid call, where
    part_get_parttype + part_get_gpt_type/part_get_mbr_id (parted, twice) cost about four times as much."""
    try:
        tags = g.blkid(part)
    except RuntimeError:
        return None
    scheme, kind = tags.get("PART_ENTRY_SCHEME"), tags.get("PART_ENTRY_TYPE")
    return (scheme, kind.upper() if scheme == "gpt" else kind.lower()) if scheme and kind else None


# Windows dynamic disks (LDM): MBR type 0x42, the GPT LDM metadata and LDM data types.
_LDM = {("dos", "0x42"), ("gpt", "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"),
        ("gpt", "AF9B60A0-1431-4F62-BC68-3311714A69AD")}


def dynamic_disks(g: guestfs.GuestFS) -> list[str]:
    """Partitions of Windows dynamic disks (LDM)."""
    return [part for part in g.list_partitions() if partition_type(g, part) in _LDM]


def refuse_dynamic_disks(g: guestfs.GuestFS) -> None:
    """libguestfs does not read LDM volumes, so a Windows whose C: is on a dynamic disk looks like no
    operating system at all: say what it is (virt-v2v does not convert it either, RHBZ#2140548)."""
    found = dynamic_disks(g)
    if found:
        raise V2VError(f"no operating system was found, and {', '.join(found)} is on a Windows dynamic disk (LDM), "
                       "which cannot be converted: convert the system disk to a basic disk in Windows first",
                       pb.ERROR_CODE_UNSUPPORTED)


def esp_partitions(g: guestfs.GuestFS) -> list[str]:
    """The EFI System Partitions of GPT disks."""
    return [part for part in g.list_partitions() if partition_type(g, part) == ("gpt", ESP_GUID)]


def has_esp(g: guestfs.GuestFS) -> bool:
    """An EFI System Partition on a GPT disk means the guest boots with UEFI."""
    return bool(esp_partitions(g))


def mount_all(g: guestfs.GuestFS, insp: pb.Inspection) -> list[str]:
    """Mounts the guest's filesystems, shortest mountpoint first; returns the mountpoints."""
    mounted = []
    for mp, dev in sorted(insp.mountpoints.items(), key=lambda kv: len(kv[0])):
        try:
            g.mount(dev, mp)
            mounted.append(mp)
        except RuntimeError as exc:
            if mp == "/":
                raise V2VError(f"cannot mount the root filesystem {dev}: {exc}",
                               pb.ERROR_CODE_CONVERSION_FAILED) from None
            # A guest's broken /home must not stop its conversion; it is reported, not fatal.
            continue
    return mounted
