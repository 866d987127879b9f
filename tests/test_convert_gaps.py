"""Secure boot and the default kernel, without an appliance: the PE signature check on real and
phony images, grub's menu and default as grub reads them, the caps, and what the libvirt and
qemu outputs ask for (the domain XML checked by libvirt's schema, the -o qemu script's firmware
booted by the real qemu-system-x86_64). The conversions of phony guests that use them are in
test_convert_families.py."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.guests import phony_rpm
from tests.libvirtd import remove_domain, virsh
from tests.test_convert_families import kernel
from tests.test_output_qemu import create_disks, make_target, spec
from v2v.events import StepReporter
from v2v.services.convert import grub_menu
from v2v.services.convert.caps import guest_caps
from v2v.services.convert.family import Family
from v2v.services.convert.secure_boot import certificate_table, wants_secure_boot
from v2v.services.output.libvirtxml import domain_xml
from v2v.services.output.qemu import QemuOutput, ovmf, qemu_script
from v2v.v1 import types_pb2 as pb

SLES_CFG = phony_rpm.sles15_secure_boot().files["/boot/grub2/grub.cfg"]
UUID = phony_rpm.SLES15_SB_ROOT_UUID


# ---------------------------------------------------------------- signed PE images


def test_certificate_table_of_real_and_phony_images():
    host_kernels = glob.glob("/boot/vmlinuz-*")  # Debian's kernels are signed for shim
    if not host_kernels:
        pytest.skip("no host kernel in /boot")
    with open(host_kernels[0], "rb") as f:
        offset, size = certificate_table(f.read(4096)) or (0, 0)
        assert size > 8 and offset + size == os.path.getsize(host_kernels[0])
    assert certificate_table(phony_rpm.pe_image(b"x", signed=True)[:4096]) == (0x200 + 1, 72)
    assert certificate_table(phony_rpm.pe_image(b"x", signed=False)) is None
    assert certificate_table(b"PHONY shim") is None
    assert certificate_table(b"MZ" + bytes(100)) is None


class NoEsp:
    """Only what wants_secure_boot asks a handle when the guest has no ESP directory."""

    @staticmethod
    def is_dir(path: str) -> bool:
        return False


@pytest.mark.parametrize("firmware, source_says, wanted, message", [
    (pb.FIRMWARE_UEFI, True, True, "secure boot on, as on the source, but the ESP has no shim"),
    (pb.FIRMWARE_BIOS, True, False, "the source says secure boot but the guest boots with BIOS"),
    (pb.FIRMWARE_UEFI, False, False, "secure boot off: no shim on the ESP"),
    (pb.FIRMWARE_BIOS, False, False, "secure boot off: the guest boots with BIOS"),
])
def test_the_source_decides_first(firmware, source_says, wanted, message):
    events: list[pb.StepEvent] = []
    source = pb.Source(firmware=firmware, secure_boot=source_says)
    assert wants_secure_boot(NoEsp(), source, pb.Inspection(), kernel("6.1.0"),
                             StepReporter("g", events.append)) is wanted
    assert len(events) == 1 and events[0].message.startswith(message)


def test_secure_boot_caps_force_q35():
    rhel4 = pb.Inspection(distro="rhel", major_version=4, arch="x86_64")
    assert guest_caps(kernel("2.6.9"), Family.RHEL, rhel4).machine == pb.MACHINE_I440FX
    caps = guest_caps(kernel("2.6.9"), Family.RHEL, rhel4, secure_boot=True)
    assert caps.secure_boot and caps.machine == pb.MACHINE_Q35


# ---------------------------------------------------------------- grub's menu and default


def test_menu_and_default_resolution():
    menu = grub_menu.parse_menu(SLES_CFG)
    custom, default = f"vmlinuz-{phony_rpm.SLES15_CUSTOM}", f"vmlinuz-{phony_rpm.SLES15_KVER}"
    assert [e.title for e in menu] == ["SLES 15-SP5", "Advanced options for SLES 15-SP5"]
    assert [(e.kernel, e.recovery) for e in menu[1].children] == [(custom, False), (custom, True),
                                                                  (default, False), (default, True)]
    assert grub_menu.resolve(menu, "0").kernel == custom
    assert grub_menu.resolve(menu, "").kernel == custom  # saved_entry unset: the first
    assert grub_menu.resolve(menu, "1>2").kernel == default
    assert grub_menu.resolve(menu, phony_rpm.SLES15_SB_ENTRY).kernel == default
    assert grub_menu.resolve(menu, f"Advanced options for SLES 15-SP5>SLES 15-SP5, with Linux {phony_rpm.SLES15_KVER}"
                         " (recovery mode)").recovery
    assert grub_menu.resolve(menu, "7") is None and grub_menu.resolve(menu, "gnulinux-gone") is None
    assert grub_menu.path_to_kernel(menu, custom) == f"gnulinux-simple-{UUID}"
    assert grub_menu.path_to_kernel(menu, default) == phony_rpm.SLES15_SB_ENTRY
    assert grub_menu.path_to_kernel(menu, "vmlinuz-9.9") is None


def test_default_files():
    assert grub_menu.grub_default("GRUB_TIMEOUT=5\n") == "0"
    assert grub_menu.grub_default('GRUB_DEFAULT="saved"\n') == "saved"
    assert grub_menu.grub_default("GRUB_DEFAULT='1>2'  # pinned\n") == "1>2"
    assert grub_menu.grub_default("#GRUB_DEFAULT=3\nGRUB_DEFAULT=2\n") == "2"
    assert grub_menu.saved_entry("# GRUB Environment Block\nsaved_entry=gnulinux-x\n####\n") == "gnulinux-x"
    assert grub_menu.with_saved_default("GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n") == "GRUB_DEFAULT=saved\nGRUB_TIMEOUT=5\n"
    assert grub_menu.with_saved_default("GRUB_TIMEOUT=5") == "GRUB_TIMEOUT=5\nGRUB_DEFAULT=saved\n"
    legacy = ("default 0\ntimeout 8\ntitle Xen\n  kernel /vmlinuz-3.0.101-63-xen root=/dev/xvda2\n"
              "title SLES 11 SP4\n  kernel (hd0,0)/vmlinuz-3.0.101-63-default root=/dev/xvda2\n")
    chosen = "vmlinuz-3.0.101-63-default"
    assert grub_menu.legacy_with_default(legacy, chosen) == legacy.replace("default 0", "default 1")
    undefaulted = legacy.replace("default 0\n", "")
    assert grub_menu.legacy_with_default(undefaulted, chosen) == "default 1\n" + undefaulted
    assert grub_menu.legacy_with_default(legacy, "vmlinuz-4.0") is None


# ---------------------------------------------------------------- what the outputs ask for


def target(secure_boot: bool, directory: Path = Path("/srv/v2v")) -> pb.TargetMeta:
    t = make_target(directory, bus=pb.BLOCK_BUS_VIRTIO_BLK, machine=pb.MACHINE_Q35, firmware=pb.FIRMWARE_UEFI,
                    ndisks=1)
    t.caps.secure_boot = secure_boot
    t.disks[0].device = "vda"
    return t


@pytest.mark.parametrize("secure_boot", [True, False], ids=["secure-boot", "uefi"])
def test_libvirt_xml_says_secure_boot_either_way(secure_boot, tmp_path):
    xml = domain_xml(target(secure_boot), list(target(secure_boot).disks))
    on = "yes" if secure_boot else "no"
    assert ('<loader secure="yes" />' in xml) is secure_boot
    assert f'<feature enabled="{on}" name="secure-boot" />' in xml
    assert ('<feature enabled="yes" name="enrolled-keys" />' in xml) is secure_boot
    assert ('<smm state="on" />' in xml) is secure_boot
    (tmp_path / "domain.xml").write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(tmp_path / "domain.xml"), "domain"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("secure_boot, code", [
    (True, "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"),
    (False, "/usr/share/OVMF/OVMF_CODE_4M.fd"),
], ids=["secure-boot", "uefi"])
def test_libvirt_picks_the_firmware_asked_for(secure_boot, code, libvirtd):
    """The domain defined and started (TCG): libvirt's firmware autoselection takes OVMF with
    Microsoft's keys and SMM for secure boot, and plain OVMF otherwise (with firmware='efi' alone
    it took the secure one for every UEFI guest). ~3 s each, plus libvirtd's start."""
    if not Path(code).exists():
        pytest.skip(f"{code} is not installed")
    directory = Path(tempfile.mkdtemp(prefix="v2v-sb.", dir="/var/tmp"))
    directory.chmod(0o755)  # qemu runs as libvirt-qemu
    t = target(secure_boot, directory)
    t.name = f"v2v-test-firmware-{'sb' if secure_boot else 'uefi'}"
    t.source.memory = 256 * 1024**2
    del t.nics[:], t.source.nics[:]  # no network to depend on
    create_disks(t)
    Path(t.disks[0].path).chmod(0o666)
    (directory / "domain.xml").write_text(domain_xml(t, list(t.disks), domain_type="qemu"))
    try:
        virsh("define", str(directory / "domain.xml"))
        virsh("start", t.name)
        live = ET.fromstring(virsh("dumpxml", t.name).stdout)
        assert live.findtext("os/loader") == code
        assert (live.find("os/loader").get("secure") == "yes") is secure_boot
        assert (live.find("features/smm") is not None) is secure_boot
    finally:
        remove_domain(t.name)
        shutil.rmtree(directory)


def test_qemu_script_secure_boot_text():
    text = qemu_script(target(True), Path("/srv/v2v"))
    assert '-machine q35,smm=on,accel="${V2V_QEMU_ACCEL:-kvm:tcg}"' in text
    assert "-global driver=cfi.pflash01,property=secure,value=on" in text
    assert "file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd" in text
    assert "cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd /srv/v2v/guest-VARS.fd" in text
    plain = qemu_script(target(False), Path("/srv/v2v"))
    assert "smm" not in plain and "secure" not in plain and "OVMF_CODE_4M.fd" in plain


@pytest.mark.parametrize("secure_boot, seen", [(True, "Security Violation"), (False, "EDK II")],
                         ids=["secure-boot", "uefi"])
def test_qemu_firmware_enforces_secure_boot(secure_boot, seen, tmp_path, workdir):
    """The script booted (TCG, blank disk): OVMF finds nothing on the disk and falls back to its
    built-in shell, which is not signed. With secure boot the firmware refuses it ("Security
    Violation": enforced, Microsoft's keys enrolled); without, the shell starts. ~4 s each."""
    if not all(Path(f).exists() for f in (*ovmf(True), *ovmf(False))):
        pytest.skip("OVMF (with its secure-boot build) is not installed")
    t = target(secure_boot, tmp_path)
    create_disks(t)
    QemuOutput().finalize(spec(tmp_path), t, workdir)
    proc = subprocess.Popen([tmp_path / "guest.sh", "-no-reboot"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=dict(os.environ, V2V_QEMU_ACCEL="tcg"))
    deadline = threading.Timer(180, proc.kill)  # the firmware waits for a key after failing: never exits
    deadline.start()
    try:
        console = []
        for line in proc.stdout:
            console.append(line)
            if seen in line:
                break
        assert seen in "".join(console), "".join(console)[-3000:]
    finally:
        deadline.cancel()
        proc.kill()
        proc.wait()
        proc.stdout.close()
