"""The project's second real guest (tests/guests/make-variant-guest.sh): Debian 12 with UEFI (GPT +
ESP, grub only in \\EFI\\debian), LVM root on xfs with a separate /boot, /home on a second disk, an
LVM filter naming /dev/sd*, a static address on ens160, open-vm-tools. Converted from its .vmx with
the CLI and --verify-boot=strict: the boot check boots it under virtio with OVMF and a fresh NVRAM,
as a target gets it, and its probe reports how it came up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GUEST_DIR, REPO, sha256
from tests.locks import locked
from v2v.services.convert.lvm import retarget_filters
from v2v.v1 import types_pb2 as pb

NAME = "debian12-variant"
GUESTS = REPO / "tests" / "guests"
VARIANT_DIR = GUEST_DIR / "variant"


@pytest.fixture(scope="session")
def variant_guest() -> Path:
    """The guest's .vmx, whose flat extents are hard links to NAME-sda.raw and NAME-sdb.raw: ~19 min
    the first time on a loaded machine (debootstrap, then the disks made in an appliance), then cached."""
    with locked(GUEST_DIR / "variant.lock"):
        subprocess.run([GUESTS / "make-variant-guest.sh", "-o", VARIANT_DIR], check=True, stdout=subprocess.DEVNULL)
    return VARIANT_DIR / "vmx" / f"{NAME}.vmx"


def recorded_sums(directory: Path) -> dict[Path, str]:
    """The disks' sha256 as the builder recorded them when it made them (SHA256SUMS)."""
    lines = (directory / "SHA256SUMS").read_text().splitlines()
    return {directory / name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


@pytest.mark.e2e
def test_variant_converts_and_boots_uefi(v2v, variant_guest, tmp_path):
    before = recorded_sums(VARIANT_DIR)
    assert len(before) == 2
    out = tmp_path / "out"
    out.mkdir()
    r = v2v("-i", "vmx", str(variant_guest), "-o", "local", "-os", str(out), "-of", "qcow2", "--accel", "tcg",
            "--verify-boot=strict", "--machine-readable")
    assert r.rc == 0, r.stderr
    steps = [json.loads(line)["step"] for line in r.stdout.splitlines() if line.startswith('{"step"')]
    notes = {s["step"]: s.get("message", "") for s in steps if s["state"] == "STEP_STATE_NOTE"}

    xml = (out / f"{NAME}.xml").read_text().replace('"', "'")
    assert "firmware='efi'" in xml
    assert "<target dev='vda' bus='virtio'" in xml and "<target dev='vdb' bus='virtio'" in xml
    assert "00:50:56:a1:b2:c3" in xml

    # Strict: the NIC by the name the network step kept, every fstab filesystem, no failed unit.
    assert notes["expect"] == ("NIC ens160 (00:50:56:a1:b2:c3); mounts /, /boot, /boot/efi, /home; "
                               "no failed unit"), notes
    # What the probe saw: booted UEFI, the LVM root found on vda (its filter follows the bus), /boot and
    # the ESP on vda, /home on the second disk as vdb; the vmxnet3 NIC's name and static address,
    # kept on virtio-net with the .vmx's MAC.
    booted = notes["verify"]
    assert "(observed by probe); firmware UEFI; root /dev/mapper/vg0-root;" in booted, booted
    for mount in ("/ /dev/mapper/vg0-root", "/boot /dev/vda2", "/boot/efi /dev/vda1", "/home /dev/vdb1"):
        assert mount in booted, booted
    assert "nics ens160 00:50:56:a1:b2:c3 192.168.122.50/24" in booted and "failed units: none" in booted, booted
    assert any("open-vm-tools" in s.get("message", "") for s in steps if s["step"] == "remove-tools"), notes

    assert {p: sha256(p) for p in before} == before


def test_lvm_filters_follow_the_bus():
    conf = ('devices {\n\tfilter = [ "a|^/dev/sd[a-z]+[0-9]*$|", "r|.*|" ]\n'
            '\t# filter = [ "a|/dev/sda|" ]\n'
            '\tglobal_filter = [ "a|^/dev/sda3$|",\n\t\t"a|/dev/sdz|", "a|/dev/disk/by-id/.*|", "r|.*|" ]\n}\n')
    assert retarget_filters(conf, pb.BLOCK_BUS_VIRTIO_BLK) == (
        'devices {\n\tfilter = [ "a|^/dev/vd[a-z]+[0-9]*$|", "r|.*|" ]\n'
        '\t# filter = [ "a|/dev/sda|" ]\n'  # a comment stays as it was
        '\tglobal_filter = [ "a|^/dev/sda3$|",\n\t\t"a|/dev/sdz|", "a|/dev/disk/by-id/.*|", "r|.*|" ]\n}\n')


def test_lvm_filters_kept_on_scsi():
    conf = 'devices {\n\tfilter = [ "a|/dev/sd.*|", "a|/dev/xvd.*|", "r|.*|" ]\n}\n'
    assert retarget_filters(conf, pb.BLOCK_BUS_VIRTIO_SCSI) == \
        'devices {\n\tfilter = [ "a|/dev/sd.*|", "a|/dev/sd.*|", "r|.*|" ]\n}\n'
