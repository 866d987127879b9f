"""The guest's bootloader: the files that name devices and consoles, the default kernel, the
config regenerated with the guest's own tool, and the UEFI fallback path."""

from __future__ import annotations

import re

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.family import Family
from v2v.services.convert.grub_menu import (
    grub_default,
    legacy_with_default,
    parse_menu,
    path_to_kernel,
    resolve,
    saved_entry,
    with_saved_default,
)
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
SET_DEFAULT = ("/usr/sbin/grub2-set-default", "/sbin/grub2-set-default", "/usr/sbin/grub-set-default")
GRUBENV = ("/boot/grub2/grubenv", "/boot/grub/grubenv")
LEGACY_MENUS = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")
DEFAULT_GRUB = "/etc/default/grub"
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
    """A UEFI grub.cfg that only reads /boot/grub2/grub.cfg: RHEL 9.3+/Fedora 34+ `configfile`,
    SUSE and Debian `source` or `configfile`."""
    return bool(re.search(r"^\s*(configfile|source)\b", text, re.M)) and len(text) < 1024


class Bootloader:
    def __init__(self, g: guestfs.GuestFS, family: Family, insp: pb.Inspection, report: StepReporter) -> None:
        self.g, self.family, self.insp, self.report = g, family, insp, report
        self.default_changed = False  # GRUB_DEFAULT became `saved`: only a regenerated grub.cfg reads it

    def first(self, paths: tuple[str, ...]) -> str | None:
        return next((p for p in paths if self.g.is_file(p, followsymlinks=True)), None)

    def read(self, path: str) -> str:
        return self.g.read_file(path).decode(errors="replace") if self.g.is_file(path, followsymlinks=True) else ""

    def set_default(self, kernel: Kernel, kernels: list[Kernel]) -> None:
        """Makes `kernel` the one that boots, the guest's own way: grubby where it has it (RHEL,
        Fedora), else grub2's saved entry (grub-set-default), else legacy grub's `default N`."""
        grubby = self.first(GRUBBY)
        if grubby:
            current = self.g.command([grubby, "--default-kernel"]).strip()
            if current != kernel.vmlinuz:
                self.g.command([grubby, "--set-default", kernel.vmlinuz])
                self.report.note(f"default kernel: {kernel.vmlinuz} (was {current or 'none'})", step=STEP)
            self.update_sysconfig_default(kernel)
            return
        if all(k is kernel for k in kernels):
            return  # whichever entry is the default boots the only kernel
        grub_cfg = self.grub_cfg()
        legacy = self.first(LEGACY_MENUS)
        if grub_cfg:
            self.set_grub2_default(kernel, grub_cfg)
        elif legacy:
            self.set_legacy_default(kernel, legacy)
        else:
            newest = max(kernels, key=lambda k: k.sort_key()[2])
            if newest is not kernel:
                self.report.warn(f"no grub configuration found: kernel {newest.version} may boot instead of "
                                 f"{kernel.version}; choose {kernel.version} in the boot menu", step=STEP)

    def set_grub2_default(self, kernel: Kernel, grub_cfg: str) -> None:
        """grub2 boots GRUB_DEFAULT (a position, an entry id or title, or `saved`: grubenv's
        saved_entry). When that is not the chosen kernel: GRUB_DEFAULT=saved and grub-set-default
        with the kernel's entry id, as SUSE's and RHEL's own tools keep it; the grub.cfg is
        regenerated afterwards when GRUB_DEFAULT changed. virt-v2v sets it only through grubby or
        SUSE's perl-Bootloader and otherwise warns."""
        menu = parse_menu(self.read(grub_cfg))
        image = kernel.vmlinuz.rsplit("/", 1)[-1]
        default_grub = self.read(DEFAULT_GRUB)
        spec = grub_default(default_grub)
        grubenv = self.first(GRUBENV)
        current = resolve(menu, saved_entry(self.read(grubenv)) if spec == "saved" and grubenv else spec)
        if current is not None and current.kernel == image:
            return
        was = current.kernel if current and current.kernel else f"entry '{spec}'"
        entry = path_to_kernel(menu, image)
        tool = self.first(SET_DEFAULT)
        if entry is None or tool is None:
            why = f"{grub_cfg} has no entry for it" if entry is None else "the guest has no grub-set-default"
            self.report.warn(f"grub boots {was} by default, not {image}, and {why}: choose {image} in the boot "
                             "menu", step=STEP)
            return
        if spec != "saved":
            self.g.write(DEFAULT_GRUB, with_saved_default(default_grub).encode())
            self.default_changed = True
        self.g.command([tool, entry])
        self.report.note(f"default kernel: {kernel.vmlinuz}, grub entry '{entry}' (was {was})", step=STEP)

    def set_legacy_default(self, kernel: Kernel, menu_lst: str) -> None:
        text = self.read(menu_lst)
        new = legacy_with_default(text, kernel.vmlinuz.rsplit("/", 1)[-1])
        if new is None:
            self.report.warn(f"{menu_lst} has no entry for {kernel.vmlinuz}: choose it in the boot menu", step=STEP)
        elif new != text:
            self.g.write(menu_lst, new.encode())
            self.report.note(f"default kernel: {kernel.vmlinuz} in {menu_lst}", step=STEP)

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
        same text (the device renames were applied to grub.cfg itself). A new GRUB_DEFAULT has no
        such shortcut."""
        if not self.default_changed and (self.family is Family.DEBIAN or not changed):
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
            found: list[str] = self.g.glob_expand("/boot/efi/EFI/*/grub.cfg")
            for path in found:
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
