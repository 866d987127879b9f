"""Block device renaming in guest configuration files (pure logic)."""

from v2v.drives import device_name, drive_index, drive_letters
from v2v.services.convert.devices import remap
from v2v.v1 import types_pb2 as pb

FSTAB = """\
/dev/sda3       /               ext4    errors=remount-ro 0       1
/dev/sda1       /boot           ext4    defaults        0       2
/dev/sdb1       /home           ext4    defaults        0       2
/dev/sda2       none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
UUID=6a0e2f4c-1d3b-4c5a-9e8f-7b6a5c4d3e21 /data ext4 defaults 0 2
"""


def test_letters_round_trip():
    for i in (0, 1, 25, 26, 27, 51, 52, 701, 702):
        assert drive_index(drive_letters(i)) == i
    assert [drive_letters(i) for i in (0, 25, 26, 27, 701, 702)] == ["a", "z", "aa", "ab", "zz", "aaa"]


def test_fstab_to_virtio_blk():
    out = remap(FSTAB, pb.BLOCK_BUS_VIRTIO_BLK, disks=2)
    assert "/dev/vda3       /   " in out
    assert "/dev/vdb1       /home" in out
    assert "/dev/vda2       none" in out
    assert "/dev/sd" not in out
    assert "/dev/sr0" in out  # removables are not disks
    assert "UUID=6a0e2f4c" in out


def test_disks_beyond_the_source_are_untouched():
    assert remap("/dev/sdb1 /home", pb.BLOCK_BUS_VIRTIO_BLK, disks=1) == "/dev/sdb1 /home"


def test_other_source_names():
    text = "root=/dev/hda2 resume=/dev/xvdb1 /dev/nvme1n1p3 /dev/nvme0n1"
    assert remap(text, pb.BLOCK_BUS_VIRTIO_BLK, disks=2) == "root=/dev/vda2 resume=/dev/vdb1 /dev/vdb3 /dev/vda"


def test_scsi_and_ide_targets():
    assert remap("/dev/vda1", pb.BLOCK_BUS_VIRTIO_SCSI, 1) == "/dev/sda1"
    assert remap("/dev/sda1", pb.BLOCK_BUS_IDE, 1) == "/dev/hda1"
    assert device_name(pb.BLOCK_BUS_VIRTIO_BLK, 27) == "vdab"


def test_words_containing_device_names_are_left_alone():
    text = "GRUB_CMDLINE=x/dev/sda1 /dev/sdafoo"
    assert remap(text, pb.BLOCK_BUS_VIRTIO_BLK, 1) == text


def test_xen_console_becomes_serial():
    from v2v.services.convert.bootloader import kvm_console

    assert kvm_console("root=/dev/xvda2 console=hvc0 console=xvc0,9600") == \
        "root=/dev/xvda2 console=ttyS0 console=ttyS0,9600"
    assert kvm_console("console=tty0 console=hvc10") == "console=tty0 console=hvc10"
