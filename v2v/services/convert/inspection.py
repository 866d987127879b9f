"""Inspection: find the guest's operating system, pick its root (--root), mount it."""

from __future__ import annotations

import guestfs

from v2v.errors import V2VError
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


def inspect(g: guestfs.GuestFS, choice: convert_pb2.RootChoice) -> pb.Inspection:
    try:
        roots = g.inspect_os()
    except RuntimeError as exc:
        if "Hivex" in str(exc):  # libguestfs 1.48 lets a damaged Windows hive escape as an exception
            raise V2VError("inspection failed: a Windows registry hive on the disks is damaged or truncated "
                           f"(SYSTEM or SOFTWARE): run chkdsk in the source guest, or restore the hive ({exc})",
                           pb.ERROR_CODE_NO_OS) from None
        raise V2VError(f"inspection failed: {exc}", pb.ERROR_CODE_NO_OS) from None
    if not roots:
        refuse_bitlocker(g)
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
    return insp


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


def esp_partitions(g: guestfs.GuestFS) -> list[str]:
    """The EFI System Partitions of GPT disks."""
    found = []
    for part in g.list_partitions():
        dev = g.part_to_dev(part)
        try:
            if g.part_get_parttype(dev) == "gpt" and \
                    g.part_get_gpt_type(dev, g.part_to_partnum(part)).upper() == ESP_GUID:
                found.append(part)
        except RuntimeError:
            continue
    return found


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
