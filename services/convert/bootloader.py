"""The guest's bootloader: the files that name devices and consoles, the default kernel, the
config regenerated with the guest's own tool, and the UEFI fallback path."""

from __future__ import annotations

import re

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.family import Family
from v2v.services.convert.kernels import Kernel
from v2v.v1 import types_pb2 as pb

STEP = "bootloader"
# grub2 and legacy grub configuration, BIOS and UEFI, and BLS entries (RHEL 8+, Fedora).
CONFIG_GLOBS = ("/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/menu.lst",
                "/boot/grub/grub.conf", "/boot/grub/device.map", "/boot/grub2/device.map", "/boot/grub2/grubenv",
                "/boot/efi/EFI/*/grub.cfg", "/boot/efi/EFI/*/grub.conf", "/boot/loader/entries/*.conf",
                "/etc/sysconfig/bootloader")
GRUBBY = ("/usr/sbin/grubby", "/sbin/grubby")
MKCONFIG = ("/usr/sbin/grub2-mkconfig", "/sbin/grub2-mkconfig", "/usr/sbin/grub-mkconfig")
_XEN_CONSOLE = re.compile(r"\bconsole=(xvc0|hvc0)\b")


def kvm_console(text: str) -> str:
    """Xen's PV consoles are gone on KVM; its serial console is ttyS0."""
    return _XEN_CONSOLE.sub("console=ttyS0", text)


def config_files(g: guestfs.GuestFS) -> list[str]:
    files: list[str] = []
    for pattern in CONFIG_GLOBS:
        files += [p for p in g.glob_expand(pattern) if g.is_file(p, followsymlinks=True)]
    return files


def is_stub(text: str) -> bool:
    """RHEL 9.3+/Fedora 34+ UEFI grub.cfg that only sources /boot/grub2/grub.cfg."""
    return "configfile" in text and len(text) < 1024


class Bootloader:
    def __init__(self, g: guestfs.GuestFS, family: Family, insp: pb.Inspection, report: StepReporter) -> None:
        self.g, self.family, self.insp, self.report = g, family, insp, report

    def first(self, paths: tuple[str, ...]) -> str | None:
        return next((p for p in paths if self.g.is_file(p, followsymlinks=True)), None)

    def set_default(self, kernel: Kernel, kernels: list[Kernel]) -> None:
        """Makes `kernel` the one that boots. grubby (RHEL, Fedora) says and sets the default
        itself; grub2 without it boots the newest entry, which is the chosen kernel unless a
        newer one was passed over."""
        grubby = self.first(GRUBBY)
        if grubby:
            current = self.g.command([grubby, "--default-kernel"]).strip()
            if current != kernel.vmlinuz:
                self.g.command([grubby, "--set-default", kernel.vmlinuz])
                self.report.note(f"default kernel: {kernel.vmlinuz} (was {current or 'none'})", step=STEP)
            self.update_sysconfig_default(kernel)
            return
        newest = max(kernels, key=lambda k: k.sort_key()[2])
        if newest is not kernel:
            self.report.warn(f"the bootloader's first entry is kernel {newest.version}, which cannot boot on KVM "
                             f"as well as {kernel.version}: choose {kernel.version} in the boot menu", step=STEP)

    def update_sysconfig_default(self, kernel: Kernel) -> None:
        """RHEL's kernel updates make DEFAULTKERNEL's flavour the default: not the debug one
        unless the chosen kernel is a debug kernel."""
        path = "/etc/sysconfig/kernel"
        if kernel.debug or not self.g.is_file(path, followsymlinks=True):
            return
        text = self.g.read_file(path).decode()
        new = re.sub(r"^(DEFAULTKERNEL=.*?)-debug", r"\1", text, flags=re.M)
        if new != text:
            self.g.write(path, new.encode())

    def regenerate(self, changed: list[str]) -> None:
        """Regenerates grub.cfg with the guest's grub2-mkconfig when its inputs changed. Debian
        guests keep the in-place edit of grub.cfg: update-grub would cost ~25 s under TCG for the
        same text (the device renames were applied to grub.cfg itself)."""
        if self.family is Family.DEBIAN or not changed:
            return
        mkconfig = self.first(MKCONFIG)
        target = self.grub_cfg()
        if not mkconfig or not target:
            return
        try:
            self.g.sh(f"{mkconfig} -o {target} 2>&1")
            self.report.note(f"regenerated {target} with {mkconfig.rsplit('/', 1)[-1]}", step=STEP)
        except RuntimeError as exc:
            self.report.warn(f"{mkconfig} -o {target} failed: {exc}; the edited config is kept", step=STEP)

    def grub_cfg(self) -> str | None:
        if self.insp.firmware == pb.FIRMWARE_UEFI:
            for path in self.g.glob_expand("/boot/efi/EFI/*/grub.cfg"):
                if "/EFI/BOOT/" not in path.upper() and not is_stub(self.g.read_file(path).decode(errors="replace")):
                    return path
        return self.first(("/boot/grub2/grub.cfg", "/boot/grub/grub.cfg"))

    def repair_uefi_fallback(self) -> None:
        """Firmware without the source's NVRAM boot entries falls back to \\EFI\\BOOT\\BOOTX64.EFI:
        put the guest's shim (or grub) there when it is missing."""
        if self.insp.firmware != pb.FIRMWARE_UEFI or not self.g.is_dir("/boot/efi/EFI"):
            return
        fallback = "/boot/efi/EFI/BOOT/BOOTX64.EFI"
        if self.g.glob_expand("/boot/efi/EFI/[Bb][Oo][Oo][Tt]/[Bb][Oo][Oo][Tt][Xx]64.[Ee][Ff][Ii]"):
            return
        for loader in ("shimx64.efi", "grubx64.efi"):
            found = [p for p in self.g.glob_expand(f"/boot/efi/EFI/*/{loader}") if "/EFI/BOOT/" not in p.upper()]
            if found:
                self.g.mkdir_p("/boot/efi/EFI/BOOT")
                self.g.cp(found[0], fallback)
                grub = found[0].rsplit("/", 1)[0] + "/grubx64.efi"
                if loader == "shimx64.efi" and self.g.is_file(grub):
                    self.g.cp(grub, "/boot/efi/EFI/BOOT/grubx64.efi")  # shim loads grub from its own directory
                self.report.note(f"UEFI fallback: {found[0]} copied to {fallback}", step=STEP)
                return
