"""LUKS-encrypted guests: open their devices with the keys given (--key) before inspection, so an
encrypted root is converted like any other, and a guest whose system stays locked is refused with
what to do rather than "no operating system was found"."""

from __future__ import annotations

import guestfs

from v2v.errors import V2VError
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb

LUKS = "crypto_LUKS"


def encrypted_devices(g: guestfs.GuestFS) -> list[str]:
    """Disks, partitions and logical volumes holding LUKS (list_filesystems leaves them out)."""
    return sorted(dev for dev in [*g.list_devices(), *g.list_partitions(), *g.lvs()] if _vfs_type(g, dev) == LUKS)


def _vfs_type(g: guestfs.GuestFS, device: str) -> str:
    try:
        return str(g.vfs_type(device))
    except RuntimeError:  # nothing blkid knows, e.g. a disk that holds a partition table
        return ""


def key_for(device: str, uuid: str, keys: list[convert_pb2.LuksKey]) -> convert_pb2.LuksKey | None:
    """The key naming this device (by name or LUKS UUID), else the first for every device (all:),
    as virt-v2v picks."""
    named = [k for k in keys if k.device in (device, uuid)]
    every = [k for k in keys if not k.device]
    return next(iter(named or every), None)


def read_key(path: str, device: str) -> str:
    """The key file's first line: libguestfs' own --key DEVICE:file:FILE reads it so."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise V2VError(f"--key {device or 'all'}:file:{path}: cannot read the key file: {exc.strerror}",
                       pb.ERROR_CODE_BAD_INPUT) from None


def unlock(g: guestfs.GuestFS, keys: list[convert_pb2.LuksKey]) -> list[str]:
    """Opens every LUKS device a key is given for, then activates the LVM volumes inside them.
    Returns the encrypted devices left locked (no key given)."""
    locked = []
    opened = False
    for i, device in enumerate(encrypted_devices(g)):
        key = key_for(device, g.luks_uuid(device), keys)
        if key is None:
            locked.append(device)
            continue
        trace = g.get_trace()
        g.set_trace(False)  # a traced call prints its arguments, the key among them, into the log
        try:
            _open(g, device, f"luks{i}", key)
        except RuntimeError:
            # libguestfs' message can quote the call; the device and the key's origin are what matter.
            raise V2VError(f"{device} is encrypted (LUKS) and the key given for it (--key "
                           f"{key.device or 'all'}:{key.WhichOneof('kind')}:...) does not open it",
                           pb.ERROR_CODE_BAD_INPUT) from None
        finally:
            g.set_trace(trace)
        opened = True
    if opened:
        g.lvm_scan(True)  # volume groups inside the opened devices
    return locked


def _open(g: guestfs.GuestFS, device: str, name: str, key: convert_pb2.LuksKey) -> None:
    if key.WhichOneof("kind") == "clevis":
        if not hasattr(g, "clevis_luks_unlock"):
            raise V2VError(f"--key {key.device or 'all'}:clevis: this libguestfs has no Clevis support (1.50 or "
                           f"later has it): give {device}'s key in a file (--key {device}:file:FILE)",
                           pb.ERROR_CODE_UNSUPPORTED)
        g.clevis_luks_unlock(device, name)
    else:
        g.cryptsetup_open(device, read_key(key.file, key.device), name)


def refuse_locked(locked: list[str]) -> None:
    """No operating system was found and some devices stayed encrypted: the system is likely there."""
    if locked:
        raise V2VError(f"{', '.join(locked)} {'is' if len(locked) == 1 else 'are'} encrypted (LUKS) and no "
                       f"operating system was found outside: give the key in a file with --key "
                       f"{locked[0]}:file:FILE (or --key all:file:FILE for every encrypted device)",
                       pb.ERROR_CODE_BAD_INPUT)
