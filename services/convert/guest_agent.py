"""qemu-guest-agent: installed during the conversion from a package file the guest already has
(its download cache), else by a one-shot systemd unit at first boot through the guest's package
manager (the appliance has no network). The first-boot unit removes itself after one run,
whatever the outcome, and never fails the boot."""

from __future__ import annotations

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.packages import PackageManager, cached_package_files

STEP = "guest-agent"
PACKAGE = "qemu-guest-agent"
FIRSTBOOT_SCRIPT = "/usr/local/lib/v2v/firstboot.sh"
FIRSTBOOT_UNIT = "/etc/systemd/system/v2v-firstboot.service"
FIRSTBOOT_LOG = "/var/log/v2v-firstboot.log"
_WANTS = "/etc/systemd/system/multi-user.target.wants/v2v-firstboot.service"


def firstboot_script(install: str) -> str:
    """Waits (30 s at most) for a default route, installs, starts the agent, removes itself."""
    return f"""#!/bin/sh
# Written by v2v: installs {PACKAGE} once, at the first boot on KVM.
exec >>{FIRSTBOOT_LOG} 2>&1
tries=0
while [ $tries -lt 30 ] && ! ip route show default 2>/dev/null | grep -q .; do sleep 1; tries=$((tries + 1)); done
if {install}; then
    systemctl enable --now qemu-guest-agent.service
else
    echo "v2v: installing {PACKAGE} failed; install it by hand"
fi
rm -f {_WANTS} {FIRSTBOOT_UNIT}
systemctl daemon-reload
exit 0
"""


FIRSTBOOT_UNIT_TEXT = f"""[Unit]
Description=v2v first boot: install {PACKAGE}
After=network.target
ConditionPathExists={FIRSTBOOT_SCRIPT}

[Service]
Type=oneshot
ExecStart=/bin/sh {FIRSTBOOT_SCRIPT}
RemainAfterExit=no

[Install]
WantedBy=multi-user.target
"""


class GuestAgent:
    def __init__(self, g: guestfs.GuestFS, manager: PackageManager | None, report: StepReporter) -> None:
        self.g, self.manager, self.report = g, manager, report

    def run(self, installed: set[str]) -> str:
        """Returns what happened: present, installed, first-boot or skipped."""
        if PACKAGE in installed:
            return "present"
        if self.manager is None:
            self.report.warn(f"no package manager known: {PACKAGE} not installed", step=STEP)
            return "skipped"
        files = cached_package_files(self.g, self.manager, PACKAGE)
        if files:
            try:
                self.g.sh(self.manager.install_files_command(files[-1:]))
                self.report.note(f"installed {PACKAGE} from {files[-1]}", step=STEP)
                return "installed"
            except RuntimeError as exc:
                self.report.warn(f"installing {files[-1]} failed ({exc}); trying at first boot", step=STEP)
        if not self.g.is_dir("/etc/systemd/system", followsymlinks=True):
            self.report.warn(f"the guest does not use systemd: install {PACKAGE} by hand after conversion", step=STEP)
            return "skipped"
        self.g.mkdir_p(FIRSTBOOT_SCRIPT.rsplit("/", 1)[0])
        self.g.write(FIRSTBOOT_SCRIPT, firstboot_script(self.manager.install_names_command([PACKAGE])).encode())
        self.g.chmod(0o755, FIRSTBOOT_SCRIPT)
        self.g.write(FIRSTBOOT_UNIT, FIRSTBOOT_UNIT_TEXT.encode())
        self.g.mkdir_p(_WANTS.rsplit("/", 1)[0])
        self.g.ln_sf(FIRSTBOOT_UNIT, _WANTS)
        self.report.note(f"{PACKAGE} will be installed at first boot ({FIRSTBOOT_UNIT}, log {FIRSTBOOT_LOG})",
                         step=STEP)
        return "first-boot"
