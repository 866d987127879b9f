"""The project's second real guest (tests/guests/make-variant-guest.sh): Debian 12 with UEFI (GPT +
ESP, grub only in \\EFI\\debian), LVM root on xfs with a separate /boot, /home on a second disk, an
LVM filter naming /dev/sd*, a static address on ens160, open-vm-tools. Converted from its .vmx with
the CLI and booted under virtio with OVMF and a fresh NVRAM, as a target gets it."""

from __future__ import annotations

import re
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


def marker_fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+?)=(\S*)", line))


@pytest.mark.e2e
def test_variant_converts_and_boots_uefi(v2v, variant_guest, tmp_path):
    before = recorded_sums(VARIANT_DIR)
    assert len(before) == 2
    out = tmp_path / "out"
    out.mkdir()
    r = v2v("-i", "vmx", str(variant_guest), "-o", "local", "-os", str(out), "-of", "qcow2", "--accel", "tcg")
    assert r.rc == 0, r.stderr

    xml = (out / f"{NAME}.xml").read_text().replace('"', "'")
    assert "firmware='efi'" in xml
    assert "<target dev='vda' bus='virtio'" in xml and "<target dev='vdb' bus='virtio'" in xml
    assert "00:50:56:a1:b2:c3" in xml

    disks = [out / f"{NAME}-sda", out / f"{NAME}-sdb"]
    boot = subprocess.run([GUESTS / "boot-uefi.sh", "-b", "virtio", "-m", "q35", "-t", "900",
                           "-l", tmp_path / "serial.log", *disks], capture_output=True, text=True, check=False)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    marker = marker_fields(next(line for line in boot.stdout.splitlines() if "GUEST-BOOTED-OK" in line))
    assert marker["fw"] == "uefi"
    assert marker["root"] == "/dev/mapper/vg0-root" and marker["root-pvs"] == "/dev/vda3"
    assert marker["boot"] == "/dev/vda2" and marker["esp"] == "/dev/vda1" and marker["home"] == "/dev/vdb1"
    assert marker["open-vm-tools"] == "absent" and marker["failed-units"] == "none"
    assert "virtio_blk" in marker["modules"]
    # The vmxnet3 NIC's name and static address, kept on virtio-net (the boot test gives it the .vmx's MAC).
    assert marker["nics"] == "ens160" and marker["addrs"] == "ens160:192.168.122.50/24"

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
