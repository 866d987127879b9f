"""Disk names: the letters Linux gives the Nth drive, and the device name on each target bus."""

from __future__ import annotations

from v2v.v1 import types_pb2 as pb

# Convert sets the bus from what the guest can drive; a guest it did not describe gets KVM's own.
DEFAULT_BLOCK_BUS = pb.BLOCK_BUS_VIRTIO_BLK

# The Linux name prefix of a disk on each bus: vda on virtio-blk, sda on SCSI and SATA, hda on IDE.
_DEVICE_PREFIX = {
    pb.BLOCK_BUS_VIRTIO_BLK: "vd",
    pb.BLOCK_BUS_VIRTIO_SCSI: "sd",
    pb.BLOCK_BUS_SATA: "sd",
    pb.BLOCK_BUS_IDE: "hd",
}


def drive_letters(index: int) -> str:
    """The letters of the index-th drive: a..z, aa..az, ba.. (bijective base 26)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def drive_index(letters: str) -> int:
    index = 0
    for c in letters:
        index = index * 26 + (ord(c) - ord("a") + 1)
    return index - 1


def block_bus(caps: pb.GuestCaps) -> pb.BlockBus:
    return caps.block_bus or DEFAULT_BLOCK_BUS


def device_prefix(bus: pb.BlockBus) -> str:
    return _DEVICE_PREFIX.get(bus, _DEVICE_PREFIX[DEFAULT_BLOCK_BUS])


def device_name(bus: pb.BlockBus, index: int) -> str:
    """vda, sdb, hdc...: the name of the index-th disk on `bus`."""
    return device_prefix(bus) + drive_letters(index)


def target_bus(caps: pb.GuestCaps) -> pb.BlockBus:
    """The bus the target's disks are on: the guest's, except that IDE on q35 is SATA, because q35
    has no IDE controller and its AHCI is what a guest that drives IDE drives (as virt-v2v does)."""
    bus = block_bus(caps)
    if bus == pb.BLOCK_BUS_IDE and caps.machine == pb.MACHINE_Q35:
        return pb.BLOCK_BUS_SATA
    return bus
