"""The real guest converted from its other forms, -i vmx and -i libvirtxml, boots under virtio.
(-i ova is proven by the `converted` fixture, which the output tests boot; -i disk by test_e2e.)"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import GUESTS, sha256

pytestmark = pytest.mark.e2e


def convert_and_boot(v2v, tmp_path, source_file, *input_args):
    before = sha256(source_file)
    out = tmp_path / "out"
    out.mkdir()
    r = v2v(*input_args, "-o", "local", "-os", str(out), "-of", "qcow2", "-on", "g", "--accel", "tcg", "-q")
    assert r.rc == 0, r.stderr
    boot = subprocess.run([GUESTS / "boot-test.sh", "-b", "virtio", "-t", "400", "-l", tmp_path / "serial.log",
                           out / "g-sda"], capture_output=True, text=True, check=False)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "root=/dev/vda3" in boot.stdout and "failed-units=none" in boot.stdout
    assert sha256(source_file) == before


def test_from_vmx(v2v, real_guest, tmp_path):
    vmx = real_guest.parent / "vmx" / "debian12-vmware.vmx"
    convert_and_boot(v2v, tmp_path, real_guest.parent / "vmx" / "debian12-vmware-flat.vmdk", "-i", "vmx", str(vmx))


def test_from_libvirtxml(v2v, real_guest, tmp_path):
    xml = tmp_path / "guest.xml"
    xml.write_text(f"""<domain type="kvm">
  <name>debian12-from-xml</name>
  <memory unit="GiB">1</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64">hvm</type></os>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="{real_guest.with_suffix('.qcow2')}"/>
      <target dev="sda" bus="scsi"/>
    </disk>
    <interface type="network"><source network="default"/><mac address="00:50:56:a1:b2:c3"/></interface>
  </devices>
</domain>
""")
    convert_and_boot(v2v, tmp_path, real_guest.with_suffix(".qcow2"), "-i", "libvirtxml", str(xml))
