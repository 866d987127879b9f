"""Linux conversion of the RHEL, Fedora and SUSE families on phony guests (tests/guests/
phony_rpm.py): the conversion's own code (fsck, mount, LinuxConversion) runs in a real libguestfs
appliance against each guest, whose tools are logging fakes; the tests assert the exact commands
it ran and the files it changed. One appliance per guest (~30-40 s each under TCG), shared by
the tests of that guest. Pure-logic parts (kernel choice, caps, text edits) have unit tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import guestfs
import pytest

from tests.guests import phony_rpm
from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.services.convert.caps import guest_caps
from v2v.services.convert.checks import check_free_space, fsck
from v2v.services.convert.family import Family
from v2v.services.convert.guest_config import clock_is_utc, module_aliases, selinux_active, xorg_driver
from v2v.services.convert.hypervisor_tools import disable_apt_lines, disable_repo_sections, doomed_packages
from v2v.services.convert.inspection import inspect, mount_all
from v2v.services.convert.kernels import Kernel, choose_kernel
from v2v.services.convert.linux import LinuxConversion
from v2v.v1 import convert_pb2
from v2v.v1 import types_pb2 as pb

VIRTIO = frozenset({"virtio_blk", "virtio_pci", "virtio_net", "virtio_scsi"})


# ---------------------------------------------------------------- pure logic


def kernel(version: str, modules: frozenset[str] = VIRTIO, xen: bool = False) -> Kernel:
    return Kernel(version, f"/boot/vmlinuz-{version}", f"/boot/initramfs-{version}.img", modules, frozenset(), xen)


def test_best_kernel_is_newest_non_debug_with_virtio():
    kernels = [kernel("5.14.0-70.el9"), kernel("5.14.0-362.el9+debug"), kernel("5.14.0-362.el9"),
               kernel("6.0.0-1.novirtio", frozenset())]
    assert choose_kernel(kernels).version == "5.14.0-362.el9"


def test_xen_pv_kernels_are_never_chosen():
    assert choose_kernel([kernel("3.0.101-63-xen", xen=True), kernel("3.0.101-60-default")]).version == \
        "3.0.101-60-default"
    with pytest.raises(V2VError, match="only Xen paravirtualized kernels") as err:
        choose_kernel([kernel("2.6.18-xen", frozenset(), xen=True)])
    assert err.value.code == pb.ERROR_CODE_CONVERSION_FAILED


def test_caps():
    rhel7 = pb.Inspection(distro="rhel", major_version=7, arch="x86_64")
    caps = guest_caps(kernel("3.10.0-1160.el7.x86_64"), Family.RHEL, rhel7)
    assert (caps.block_bus, caps.net_bus, caps.machine, caps.virtio_1_0) == \
        (pb.BLOCK_BUS_VIRTIO_BLK, pb.NET_BUS_VIRTIO_NET, pb.MACHINE_Q35, True)
    scsi = guest_caps(kernel("3.10.0"), Family.RHEL, rhel7, block_driver=pb.BLOCK_BUS_VIRTIO_SCSI)
    assert scsi.block_bus == pb.BLOCK_BUS_VIRTIO_SCSI
    old = guest_caps(kernel("2.6.9-5.EL", frozenset()), Family.RHEL, pb.Inspection(distro="rhel", major_version=4,
                                                                                 arch="i686"))
    assert (old.block_bus, old.net_bus, old.machine, old.virtio_1_0) == \
        (pb.BLOCK_BUS_IDE, pb.NET_BUS_E1000, pb.MACHINE_I440FX, False)
    sles11 = guest_caps(kernel("3.0.101-63-default"), Family.SUSE, pb.Inspection(distro="sles", major_version=11,
                                                                                 arch="x86_64"))
    assert (sles11.machine, sles11.virtio_1_0) == (pb.MACHINE_Q35, False)


def test_doomed_packages():
    installed = {"open-vm-tools", "open-vm-tools-desktop", "vmware-tools-foundation", "kmod-vmware-tools-vmxnet3",
                 "VMwareTools", "xe-guest-utilities-latest", "hyperv-daemons", "virtualbox-guest-utils", "bash",
                 "xen-kmp-default", "vmware-manager"}
    assert doomed_packages(installed) == sorted(installed - {"bash", "vmware-manager"})
    assert doomed_packages({"open-vm-tools", "open-vm-tools-desktop", "ubuntu-server"}) == ["open-vm-tools-desktop"]


def test_repo_files():
    repo = "[vmware]\nbaseurl=https://packages.vmware.com/tools/rhel9\nenabled=1\ngpgcheck=1\n\n" \
           "[base]\nbaseurl=https://cdn.redhat.com/x\nenabled=1\n"
    assert disable_repo_sections(repo) == "[vmware]\nbaseurl=https://packages.vmware.com/tools/rhel9\ngpgcheck=1\n" \
                                          "enabled=0\n\n[base]\nbaseurl=https://cdn.redhat.com/x\nenabled=1\n"
    apt = "deb http://deb.debian.org/debian bookworm main\ndeb https://packages.vmware.com/tools/ubuntu jammy main\n"
    assert disable_apt_lines(apt).splitlines()[1].startswith("# disabled by v2v: deb https://packages.vmware.com")
    deb822 = "Types: deb\nURIs: https://packages.vmware.com/x\nSuites: jammy\nEnabled: yes\n"
    disabled = disable_apt_lines(deb822)
    assert disabled.rstrip().endswith("Enabled: no") and "Enabled: yes" not in disabled


def test_config_edits():
    text, seen = module_aliases("alias eth0 vmxnet3\nalias scsi_hostadapter mptspi\nalias scsi_hostadapter1 ata_piix\n",
                                pb.BLOCK_BUS_VIRTIO_BLK, pb.NET_BUS_VIRTIO_NET)
    assert (text, seen) == ("alias eth0 virtio_net\nalias scsi_hostadapter virtio_blk\n", True)
    assert module_aliases("alias scsi_hostadapter mptspi\n", pb.BLOCK_BUS_IDE, pb.NET_BUS_E1000)[0] == ""
    xorg = 'Section "Device"\n  Identifier "c"\n  Driver "vboxvideo"\n  BoardName "x"\nEndSection\n'
    assert xorg_driver(xorg) == 'Section "Device"\n  Identifier "c"\n  Driver "modesetting"\nEndSection\n'
    assert selinux_active("SELINUX=permissive\n") and not selinux_active("SELINUX=disabled\n")
    assert not clock_is_utc("0.0 0 0.0\n0\nLOCAL\n") and clock_is_utc("0.0 0 0.0\n0\nUTC\n")


class Statvfs:
    """Only what check_free_space reads of a handle: statvfs per mountpoint."""

    def __init__(self, free: dict[str, tuple[int, int]]) -> None:
        self.free = free  # mountpoint -> (free bytes, free inodes)

    def statvfs(self, mp: str) -> dict[str, int]:
        nbytes, inodes = self.free[mp]
        return {"blocks": 1000, "bsize": 1, "bavail": nbytes, "files": 1000, "favail": inodes, "flag": 0}


def test_free_space_minimums():
    mib = 1 << 20
    notes: list[pb.StepEvent] = []
    report = StepReporter("g", notes.append)
    check_free_space(Statvfs({"/": (100 * mib, 100), "/boot": (50 * mib, 100), "/srv": (10 * mib, 100)}),
                     ["/", "/boot", "/srv"], report)
    for mp, free in (("/", (99 * mib, 1000)), ("/boot", (49 * mib, 1000)), ("/srv", (9 * mib, 1000)),
                     ("/", (200 * mib, 99))):
        with pytest.raises(V2VError, match=f"not enough free (space|inodes) on {mp}"):
            check_free_space(Statvfs({mp: free}), [mp], report)


# ---------------------------------------------------------------- phony guests in an appliance


@dataclass
class Converted:
    caps: pb.GuestCaps | None
    error: V2VError | None
    events: list[pb.StepEvent]
    commands: list[str]  # the fakes' log: "NAME [ARG] [ARG]..."
    files: dict[str, str | None] = field(default_factory=dict)  # after the conversion; None = absent

    def notes(self) -> str:
        return "\n".join(e.message for e in self.events)

    def ran(self, prefix: str) -> list[str]:
        """The commands starting with `prefix`, less package queries (rpm -qa lists the packages
        where the appliance's librpm cannot read the guest's database)."""
        return [c for c in self.commands if c.startswith(prefix) and not c.startswith("rpm [-qa]")]


READ_BACK = (
    "/etc/fstab", "/etc/default/grub", "/boot/grub2/grub.cfg", "/boot/grub2/grubenv", "/boot/grub/menu.lst",
    "/boot/grub/device.map", "/etc/yum.repos.d/vmware-tools.repo", "/etc/yum.repos.d/redhat.repo",
    "/etc/zypp/repos.d/xen-tools.repo", "/etc/X11/xorg.conf", "/etc/modprobe.d/vmware.conf", "/.autorelabel",
    "/etc/lvm/devices/system.devices", "/etc/lvm/devices/system.devices.pre-v2v", "/etc/lvm/lvm.conf",
    "/etc/sysconfig/kernel", "/etc/dracut.conf.d/v2v-virtio.conf", "/etc/inittab", "/etc/securetty",
    "/etc/modprobe.conf.local", "/etc/systemd/system/v2v-firstboot.service", "/usr/local/lib/v2v/firstboot.sh",
    "/etc/systemd/system/multi-user.target.wants/v2v-firstboot.service", "/boot/efi/EFI/BOOT/BOOTX64.EFI",
    "/etc/init.d/v2v-firstboot", "/etc/init.d/rc3.d/S99v2v-firstboot", "/etc/init.d/rc5.d/S99v2v-firstboot",
    "/boot/efi/EFI/BOOT/grubx64.efi", "/etc/vmware-tools/locations", phony_rpm.GRUBBY_DEFAULT,
    f"/boot/loader/entries/0123-{phony_rpm.RHEL9_NEW}.conf", f"/boot/initramfs-{phony_rpm.RHEL9_NEW}.img",
    f"/boot/initramfs-{phony_rpm.RHEL9_NEW}.img.pre-v2v", f"/boot/initrd-{phony_rpm.SLES15_KVER}",
    f"/boot/initrd-{phony_rpm.SLES15_KVER}.pre-v2v", f"/boot/initrd-{phony_rpm.SLES11_KVER}",
)


def convert(image: Path, block_driver: int = pb.BLOCK_BUS_UNSPECIFIED) -> Converted:
    """What the convert service does between launch and fstrim, on `image` (changed in place)."""
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), format="raw", cachemode="unsafe")
    t0 = time.monotonic()
    g.launch()
    print(f"{image.stem}: launched in {time.monotonic() - t0:.1f} s")
    try:
        events: list[pb.StepEvent] = []
        report = StepReporter(image.stem, events.append, parent="convert")
        t0 = time.monotonic()
        insp, _ = inspect(g, convert_pb2.RootChoice())
        caps, error, log, files = None, None, "", {}
        try:
            with report.step("fsck"):  # as the service runs it: a failure names the guest and the step
                fsck(g, insp, report)
            mounted = mount_all(g, insp)
            print(f"{image.stem}: inspected, checked, mounted in {time.monotonic() - t0:.1f} s")
            caps = LinuxConversion(g, insp, pb.Source(disks=[pb.SourceDisk(index=0)]), report, mounted,
                                   block_driver).run()
        except V2VError as exc:
            error = exc
        print(f"{image.stem}: converted in {time.monotonic() - t0:.1f} s:",
              ", ".join(f"{e.step} {e.duration.seconds + e.duration.nanos / 1e9:.1f}" for e in events
                        if e.state == pb.STEP_STATE_SUCCEEDED))
        if g.mounts():  # not when fsck failed: nothing was mounted
            log = g.read_file(phony_rpm.FAKE_LOG).decode() if g.is_file(phony_rpm.FAKE_LOG) else ""
            files = {p: g.read_file(p).decode(errors="replace") if g.is_file(p, followsymlinks=True) else None
                     for p in READ_BACK}
        g.umount_all()
        g.shutdown()
        return Converted(caps, error, events, log.splitlines(), files)
    finally:
        g.close()


@pytest.fixture(scope="module")
def phony_rpm_guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return phony_rpm.build_all(tmp_path_factory.mktemp("phony-rpm"))


@pytest.fixture(scope="module")
def converted(phony_rpm_guests: dict[str, Path]) -> Iterator[dict[str, Converted]]:
    """Each guest converted once, on first use."""
    cache: dict[str, Converted] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Converted:
            cache[name] = convert(phony_rpm_guests[name])
            return cache[name]

    yield Lazy()


def quoted(*args: str) -> str:
    return " ".join(f"[{a}]" for a in args)


@pytest.mark.appliance
def test_rhel9(converted: dict[str, Converted]):
    c = converted["rhel9-vmware"]
    assert c.error is None, c.error
    new = phony_rpm.RHEL9_NEW
    # Tools: the tarball uninstaller (told not to rebuild initramfs images), then dnf without network.
    assert c.ran("vmware-uninstall-tools.pl") == ["vmware-uninstall-tools.pl"]
    assert c.files["/etc/vmware-tools/locations"] is None  # the fake uninstaller removed it
    assert any("RESTORE_RAMDISK" in e.message or "VMware Tools (tarball)" in e.message for e in c.events)
    assert c.ran("dnf") == ["dnf [-y] [--disablerepo=*] [--noplugins] [remove] [hyperv-daemons] "
                            "[kmod-vmware-tools-vmxnet3] [open-vm-tools] [open-vm-tools-desktop] "
                            "[xe-guest-utilities-latest]"]
    assert "enabled=0" in c.files["/etc/yum.repos.d/vmware-tools.repo"]
    assert "enabled=1" not in c.files["/etc/yum.repos.d/vmware-tools.repo"]
    assert "enabled=1" in c.files["/etc/yum.repos.d/redhat.repo"]
    # Kernel: the newest non-debug one becomes grubby's default.
    assert c.ran("grubby") == ["grubby [--default-kernel]", f"grubby [--set-default] [/boot/vmlinuz-{new}]"]
    assert c.files[phony_rpm.GRUBBY_DEFAULT].strip() == f"/boot/vmlinuz-{new}"
    assert "DEFAULTKERNEL=kernel-core" in c.files["/etc/sysconfig/kernel"]
    # initramfs: dracut with the virtio drivers the kernel has as modules (virtio_pci is built in).
    assert c.ran("dracut") == [f"dracut [--add-drivers] [virtio_blk virtio_scsi virtio_net] "
                               f"[/boot/initramfs-{new}.img] [{new}]"]
    assert c.files[f"/boot/initramfs-{new}.img.pre-v2v"].startswith("PHONY initramfs of")
    assert c.files[f"/boot/initramfs-{new}.img"].startswith("PHONY initramfs by dracut")
    assert 'add_drivers+=" virtio_blk virtio_scsi virtio_net "' in \
        c.files["/etc/dracut.conf.d/v2v-virtio.conf"]
    # Devices: fstab, BLS entries, grubenv, /etc/default/grub, LVM filter; devices file aside.
    assert c.files["/etc/fstab"].split("\n")[:2] == ["/dev/vda2 / ext4 defaults 1 1",
                                                     "/dev/vda1 /boot ext4 defaults 1 2"]
    assert "/dev/vda3 none swap" in c.files["/etc/fstab"]
    assert "options root=/dev/vda2 ro resume=/dev/vda3" in c.files[f"/boot/loader/entries/0123-{new}.conf"]
    assert "kernelopts=root=/dev/vda2 ro resume=/dev/vda3" in c.files["/boot/grub2/grubenv"]
    assert 'resume=/dev/vda3' in c.files["/etc/default/grub"]
    assert "a|^/dev/vda2$|" in c.files["/etc/lvm/lvm.conf"]
    assert c.files["/etc/lvm/devices/system.devices"] is None
    assert c.files["/etc/lvm/devices/system.devices.pre-v2v"] is not None
    assert c.ran("grub2-mkconfig") == ["grub2-mkconfig [-o] [/boot/grub2/grub.cfg]"]
    # Config: X driver, module aliases, SELinux relabel.
    assert 'Driver "modesetting"' in c.files["/etc/X11/xorg.conf"]
    assert "VendorName" not in c.files["/etc/X11/xorg.conf"]
    assert c.files["/etc/modprobe.d/vmware.conf"] == "alias eth0 virtio_net\nalias scsi_hostadapter virtio_blk\n" \
                                                     "options vmxnet3 foo=1\n"
    assert c.files["/.autorelabel"] is not None
    # Guest agent: installed offline from the dnf cache.
    assert c.ran("rpm") == [f"rpm [-Uvh] [{phony_rpm.QGA_RPM}]"]
    assert c.files["/etc/systemd/system/v2v-firstboot.service"] is None
    assert c.caps.block_bus == pb.BLOCK_BUS_VIRTIO_BLK and c.caps.machine == pb.MACHINE_Q35
    assert c.caps.virtio_1_0 and c.caps.virtio_rng and c.caps.virtio_balloon and c.caps.pvpanic and c.caps.rtc_utc
    steps = [e.step for e in c.events if e.state == pb.STEP_STATE_SUCCEEDED]
    assert steps == ["fsck", "free-space", "kernel", "secure-boot", "remove-tools", "devices", "config", "initramfs",
                     "bootloader", "guest-agent"]
    assert not c.caps.secure_boot and "secure boot off: the guest boots with BIOS" in c.notes()


@pytest.mark.appliance
def test_fedora_uefi_virtualbox(converted: dict[str, Converted]):
    c = converted["fedora39-vbox"]
    assert c.error is None, c.error
    kver = phony_rpm.FEDORA_KVER
    assert c.ran("uninstall.sh") == ["uninstall.sh"]
    assert c.ran("install") == ["install [-r]"]  # Parallels tools
    assert c.ran("dnf") == ["dnf [-y] [--disablerepo=*] [--noplugins] [remove] [virtualbox-guest-additions]"]
    assert c.ran("grubby") == ["grubby [--default-kernel]"]  # already the default
    assert c.ran("dracut") == [f"dracut [--add-drivers] [virtio virtio_ring virtio_blk virtio_scsi virtio_net "
                               f"virtio_pci] [/boot/initramfs-{kver}.img] [{kver}]"]
    assert c.ran("grub2-mkconfig") == []  # nothing the config is made from changed
    assert c.files["/etc/fstab"].splitlines()[1:] == ["/dev/vda2 /boot ext4 defaults 1 2",
                                                      "/dev/vda1 /boot/efi vfat umask=0077 0 2"]
    assert c.files["/boot/efi/EFI/BOOT/BOOTX64.EFI"] == "PHONY shim"
    assert c.files["/boot/efi/EFI/BOOT/grubx64.efi"] == "PHONY grub"
    assert c.files["/.autorelabel"] is None  # SELinux disabled
    unit = c.files["/etc/systemd/system/v2v-firstboot.service"]
    assert unit and "ExecStart=/bin/sh /usr/local/lib/v2v/firstboot.sh" in unit
    assert "dnf -y install qemu-guest-agent" in c.files["/usr/local/lib/v2v/firstboot.sh"]
    assert c.files["/etc/systemd/system/multi-user.target.wants/v2v-firstboot.service"] is not None
    assert not c.caps.rtc_utc
    # Its shim and grub are not signed PE images (nor is its kernel): no secure boot.
    assert not c.caps.secure_boot
    assert "secure boot off: /boot/efi/EFI/fedora/shimx64.efi, /boot/efi/EFI/fedora/grubx64.efi, " \
           f"/boot/vmlinuz-{kver} not signed" in c.notes()


@pytest.mark.appliance
def test_sles15_from_xen(converted: dict[str, Converted]):
    c = converted["sles15-xen"]
    assert c.error is None, c.error
    kver = phony_rpm.SLES15_KVER
    assert c.ran("zypper") == ["zypper [-n] [--no-refresh] [rm] [xe-guest-utilities] [xen-kmp-default]"]
    assert "enabled=0" in c.files["/etc/zypp/repos.d/xen-tools.repo"]
    assert c.files["/etc/fstab"] == "/dev/vda2 / ext4 defaults 1 1\n/dev/vda1 /boot ext4 defaults 1 2\n"
    assert 'console=ttyS0 resume=/dev/vda3' in c.files["/etc/default/grub"]
    assert c.ran("grub2-mkconfig") == ["grub2-mkconfig [-o] [/boot/grub2/grub.cfg]"]
    assert c.files["/etc/sysconfig/kernel"] == 'INITRD_MODULES="ata_piix"\nDOMU_INITRD_MODULES=""\n'
    assert c.ran("dracut") == [f"dracut [--add-drivers] [virtio virtio_ring virtio_blk virtio_scsi virtio_net "
                               f"virtio_pci] [/boot/initrd-{kver}] [{kver}]"]
    assert c.files[f"/boot/initrd-{kver}.pre-v2v"] is not None
    assert c.ran("rpm") == []  # qemu-guest-agent is installed already
    assert c.files["/etc/systemd/system/v2v-firstboot.service"] is None


@pytest.mark.appliance
def test_sles11_mkinitrd(converted: dict[str, Converted]):
    c = converted["sles11-xen"]
    assert c.error is None, c.error
    kver = phony_rpm.SLES11_KVER
    assert c.ran("zypper") == ["zypper [-n] [--no-refresh] [rm] [kernel-xen] [xen-kmp-default]"]
    assert c.ran("mkinitrd") == [f"mkinitrd [-m] [virtio virtio_ring virtio_blk virtio_scsi virtio_net virtio_pci] "
                                 f"[-i] [/boot/initrd-{kver}] [-k] [/boot/vmlinuz-{kver}] [-d] [/dev/sda2]"]
    assert "kernel /vmlinuz-3.0.101-63-default root=/dev/vda2 console=ttyS0" in c.files["/boot/grub/menu.lst"]
    assert c.files["/boot/grub/device.map"] == "(hd0) /dev/vda\n"
    assert "agetty -L 9600 ttyS0" in c.files["/etc/inittab"]
    assert c.files["/etc/securetty"] == "console\nttyS0\ntty1\n"
    # No systemd: qemu-guest-agent comes at first boot from an init script linked into runlevels 2, 3, 5
    init = c.files["/etc/init.d/v2v-firstboot"]
    assert init and "Default-Start:     2 3 5" in init and "/usr/local/lib/v2v/firstboot.sh" in init
    assert c.files["/etc/init.d/rc3.d/S99v2v-firstboot"] == c.files["/etc/init.d/rc5.d/S99v2v-firstboot"] == init
    firstboot = c.files["/usr/local/lib/v2v/firstboot.sh"]
    assert "qemu-guest-agent" in firstboot and "zypper" in firstboot
    assert "rm -f /etc/init.d/v2v-firstboot /etc/init.d/rc2.d/S99v2v-firstboot" in firstboot
    assert c.files["/etc/systemd/system/v2v-firstboot.service"] is None
    assert c.files["/etc/modprobe.conf.local"] == "alias eth0 virtio_net\nalias scsi_hostadapter virtio_blk\n"
    assert c.files["/etc/sysconfig/kernel"] == 'INITRD_MODULES="processor thermal"\n'
    assert "qemu-guest-agent will be installed at first boot (/etc/init.d/v2v-firstboot" in c.notes()
    assert not c.caps.virtio_1_0


@pytest.mark.appliance
def test_sles15_secure_boot_and_default_kernel(converted: dict[str, Converted]):
    """UEFI with a signed chain asks for secure boot; grub's default (GRUB_DEFAULT=0: the newer
    custom kernel, which has no virtio) becomes the chosen kernel, SUSE's way."""
    c = converted["sles15-sb"]
    assert c.error is None, c.error
    kver, entry = phony_rpm.SLES15_KVER, phony_rpm.SLES15_SB_ENTRY
    assert c.caps.secure_boot and c.caps.machine == pb.MACHINE_Q35
    assert ("secure boot on: /boot/efi/EFI/sles/shim.efi -> /boot/efi/EFI/sles/grub.efi -> "
            f"/boot/vmlinuz-{kver} signed") in c.notes()
    assert c.ran("grub2-set-default") == [f"grub2-set-default [{entry}]"]
    assert c.files["/etc/default/grub"].startswith("GRUB_DEFAULT=saved\nGRUB_TIMEOUT=8\n")
    assert c.files["/boot/grub2/grubenv"] == f"# GRUB Environment Block\nsaved_entry={entry}\n"
    # Regenerated after, so that grub.cfg reads saved_entry (no device name changed: only for the default).
    assert c.ran("grub2-") == [f"grub2-set-default [{entry}]", "grub2-mkconfig [-o] [/boot/grub2/grub.cfg]"]
    assert f"default kernel: /boot/vmlinuz-{kver}, grub entry '{entry}' (was vmlinuz-{phony_rpm.SLES15_CUSTOM})" \
        in c.notes()
    assert c.ran("dracut") == [f"dracut [--add-drivers] [virtio virtio_ring virtio_blk virtio_scsi virtio_net "
                               f"virtio_pci] [/boot/initrd-{kver}] [{kver}]"]


def failure(c: Converted) -> pb.StepEvent:
    [failed] = [e for e in c.events if e.state == pb.STEP_STATE_FAILED]
    return failed


@pytest.mark.appliance
def test_fsck_errors_fail_before_anything_changes(converted: dict[str, Converted]):
    """e2fsck -n finds the damaged root: the conversion stops in its fsck step, naming the guest
    and the filesystem, with nothing mounted, run or written."""
    c = converted["sles15-damaged"]
    # Once, in a full run with two workers, fsck passed here in 1.1 s: the fsck step's notes and
    # warnings say what e2fsck answered when it happens again.
    said = [f"{pb.StepState.Name(e.state)}: {e.message}" for e in c.events if e.step == "fsck"]
    assert c.error is not None and c.error.code == pb.ERROR_CODE_CONVERSION_FAILED, said
    assert str(c.error) == ("guest sles15-damaged: step convert: filesystem /dev/sda2 (/, ext4) has errors: "
                            "repair it in the source guest (e2fsck -f) and convert again")
    assert "ref count is 7, should be 1" in c.error.detail
    failed = failure(c)
    assert (failed.step, failed.parent, failed.error.guest) == ("fsck", "convert", "sles15-damaged")
    assert c.caps is None and c.commands == [] and c.files == {}


@pytest.mark.appliance
def test_xen_only_kernels_fail_clearly(converted: dict[str, Converted]):
    """Only kernel-xen: the kernel step fails saying what to install, before any change."""
    c = converted["sles11-xenonly"]
    assert c.error is not None and c.error.code == pb.ERROR_CODE_CONVERSION_FAILED
    assert str(c.error) == (f"guest sles11-xenonly: step convert: only Xen paravirtualized kernels are installed in "
                            f"this guest ({phony_rpm.SLES11_XEN}): they cannot boot on KVM. Install a regular kernel "
                            "in the guest (e.g. 'kernel-default' on SUSE, 'kernel' on RHEL) and convert again")
    failed = failure(c)
    assert (failed.step, failed.parent, failed.error.guest) == ("kernel", "convert", "sles11-xenonly")
    assert [e.step for e in c.events if e.state == pb.STEP_STATE_SUCCEEDED] == ["fsck", "free-space"]
    assert c.commands == []  # no package removed, no initrd built
    assert c.files["/etc/fstab"].startswith("/dev/xvda2 / ext4")  # nothing renamed


@pytest.mark.appliance
def test_cli_block_driver_virtio_scsi(v2v, tmp_path: Path):
    """The whole service path (fsck step, conversion, target.json) through the CLI on a fresh
    phony RHEL 9, with --block-driver virtio-scsi: the caps say virtio-scsi and the disks keep
    their sdX names, so no device file is renamed."""
    image = phony_rpm.build(phony_rpm.rhel9(), tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    r = v2v("-i", "disk", str(image), "-o", "json", "-os", str(out), "--block-driver", "virtio-scsi",
            "--machine-readable", "--accel", "tcg")
    assert r.rc == 0, r.stderr
    steps = [json.loads(line)["step"] for line in r.stdout.splitlines() if line.startswith('{"step"')]
    done = [s["step"] for s in steps if s.get("parent") == "convert" and s["state"] == "STEP_STATE_SUCCEEDED"]
    assert {"fsck", "free-space", "kernel", "remove-tools", "devices", "initramfs", "bootloader"} <= set(done)
    assert done.index("fsck") < done.index("mount")
    notes = [s.get("message", "") for s in steps if s["state"] == "STEP_STATE_NOTE"]
    assert not any(n.startswith("renamed block devices") for n in notes), notes
    assert any(n.startswith("/dev/sda2 (/, ext4): clean") for n in notes), [n for n in notes if "fsck" in n]
    target = json.loads((out / "rhel9-vmware.json").read_text())["target"]
    assert target["caps"]["block_bus"] == "BLOCK_BUS_VIRTIO_SCSI"
