"""Other hypervisors' guest tools: useless on KVM, some harmful (they probe for hardware that is
gone, or rebuild initramfs images without virtio). Packages go through the guest's package
manager; tarball installs through their own uninstallers; their package repositories are
disabled so that a later update does not bring them back."""

from __future__ import annotations

import re

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.family import Family
from v2v.services.convert.packages import PackageManager
from v2v.v1 import types_pb2 as pb

STEP = "remove-tools"
_PREFIXES = ("vmware-tools-", "kmod-vmware-tools", "open-vm-tools-", "virtualbox-guest-", "xe-guest-utilities",
             "hyperv-", "kmod-xenpv", "xen-kmp-", "parallels-tools")
_NAMES = {"VMwareTools", "open-vm-tools", "virtualbox-guest-additions", "hyperv-daemons", "hypervkvpd",
          "hypervvssd", "hypervfcopyd", "xenpv", "kernel-xen", "prl-tools"}
# Meta-packages that depend on open-vm-tools: removing it would remove them (virt-v2v keeps it).
_NEEDS_OPEN_VM_TOOLS = {"ubuntu-server"}
VMWARE_UNINSTALLER = "/usr/bin/vmware-uninstall-tools.pl"
VBOX_CONFIG = "/var/lib/VBoxGuestAdditions/config"
PARALLELS_INSTALLER = "/usr/lib/parallels-tools/install"
_VENDOR_URL = re.compile(r"https?://([^/\s]+\.)?(vmware\.com|virtualbox\.org|parallels\.com|citrix\.com)/", re.I)


def doomed_packages(installed: set[str]) -> list[str]:
    """The installed packages to remove."""
    doomed = {p for p in installed if p in _NAMES or p.startswith(_PREFIXES)}
    if installed & _NEEDS_OPEN_VM_TOOLS:
        doomed.discard("open-vm-tools")
    return sorted(doomed)


def disable_repo_sections(text: str) -> str:
    """yum/dnf/zypper .repo (ini) text with every section whose baseurl or mirrorlist is a
    hypervisor vendor's set to enabled=0."""
    out: list[str] = []
    section: list[str] = []

    def flush() -> None:
        if section and any(_VENDOR_URL.search(line) for line in section
                           if re.match(r"\s*(baseurl|mirrorlist|metalink)\s*=", line)):
            body = [line for line in section if not re.match(r"\s*enabled\s*=", line)]
            at = len(body)
            while at > 1 and not body[at - 1].strip():  # before trailing blank lines
                at -= 1
            body.insert(at, "enabled=0")
            section[:] = body
        out.extend(section)
        section.clear()

    for line in text.split("\n"):
        if line.startswith("["):
            flush()
        section.append(line)
    flush()
    return "\n".join(out)


def disable_apt_lines(text: str) -> str:
    """One-line apt sources: vendor lines commented out. deb822 .sources: Enabled: no."""
    if re.search(r"^Types:", text, re.M):
        stanzas = text.split("\n\n")
        for i, stanza in enumerate(stanzas):
            if _VENDOR_URL.search(stanza):
                stanza = re.sub(r"^Enabled:.*\n?", "", stanza, flags=re.M).rstrip("\n")
                stanzas[i] = stanza + "\nEnabled: no"
        return "\n\n".join(stanzas)
    return re.sub(r"^(\s*deb(-src)?\s.*)$", lambda m: f"# disabled by v2v: {m.group(1)}" if _VENDOR_URL.search(
        m.group(1)) else m.group(1), text, flags=re.M)


class HypervisorTools:
    def __init__(self, g: guestfs.GuestFS, family: Family, insp: pb.Inspection, manager: PackageManager | None,
                 report: StepReporter) -> None:
        self.g, self.family, self.insp, self.manager, self.report = g, family, insp, manager, report

    def run(self, installed: set[str]) -> list[str]:
        """Removes everything; returns the packages removed."""
        # Tarball uninstallers first: they restore configuration files they saved at install time.
        self.run_vbox_uninstaller()
        self.run_vmware_uninstaller()
        self.run_uninstaller(PARALLELS_INSTALLER, [PARALLELS_INSTALLER, "-r"], "Parallels Tools")
        doomed = doomed_packages(installed)
        if doomed and self.manager:
            try:
                self.g.sh(self.manager.remove_command(doomed))
                self.report.note(f"removed {', '.join(doomed)}", step=STEP)
            except RuntimeError as exc:
                self.report.warn(f"could not remove {', '.join(doomed)}: {exc}", step=STEP)
                doomed = []
        elif doomed:
            self.report.warn(f"no package manager known for {self.insp.distro}: {', '.join(doomed)} left installed",
                             step=STEP)
            doomed = []
        self.disable_repos()
        return doomed

    def run_uninstaller(self, path: str, command: list[str], what: str) -> None:
        if not self.g.is_file(path, followsymlinks=True):
            return
        try:
            self.g.command(command)
            self.report.note(f"uninstalled {what} ({' '.join(command)})", step=STEP)
        except RuntimeError as exc:
            self.report.warn(f"{what} was found, but its uninstaller failed: {exc}", step=STEP)

    def run_vmware_uninstaller(self) -> None:
        """VMware Tools from the tarball. Its uninstaller would rebuild the initramfs of every
        kernel; its answers file is told not to (the initramfs step rebuilds the one that boots)."""
        if not self.g.is_file(VMWARE_UNINSTALLER, followsymlinks=True):
            return
        locations = "/etc/vmware-tools/locations"
        if self.g.is_file(locations, followsymlinks=True):
            self.g.write_append(locations, b"remove_answer RESTORE_RAMDISK_CMD\nremove_answer RESTORE_RAMDISK_KERNELS\n"
                                b"remove_answer RESTORE_RAMDISK_ONECALL\n")
        command = [VMWARE_UNINSTALLER]
        if self.family is Family.SUSE:
            command = ["/usr/bin/env", f"rootdev={self.insp.root}", VMWARE_UNINSTALLER]
        self.run_uninstaller(VMWARE_UNINSTALLER, command, "VMware Tools (tarball)")

    def run_vbox_uninstaller(self) -> None:
        if not self.g.is_file(VBOX_CONFIG, followsymlinks=True):
            return
        for line in self.g.read_lines(VBOX_CONFIG):
            m = re.match(r"""^INSTALL_DIR=['"]?(/[^'"]*)['"]?$""", line)
            if m:
                script = f"{m.group(1)}/uninstall.sh"
                self.run_uninstaller(script, [script], "VirtualBox Guest Additions")
                return

    def disable_repos(self) -> None:
        files = [(p, disable_repo_sections) for d in ("/etc/yum.repos.d", "/etc/zypp/repos.d")
                 for p in self.g.glob_expand(f"{d}/*.repo")]
        files += [(p, disable_apt_lines) for p in ["/etc/apt/sources.list", *self.g.glob_expand(
            "/etc/apt/sources.list.d/*.list"), *self.g.glob_expand("/etc/apt/sources.list.d/*.sources")]]
        for path, edit in files:
            if not self.g.is_file(path, followsymlinks=True):
                continue
            text = self.g.read_file(path).decode(errors="replace")
            new = edit(text)
            if new != text:
                self.g.write(path, new.encode())
                self.report.note(f"disabled hypervisor vendor repositories in {path}", step=STEP)
