"""qemu-guest-agent: installed during the conversion from a package file the guest already has
(its download cache), else at first boot through the guest's package manager (the appliance has no
network): by a one-shot systemd unit, or on a guest without systemd (SLES 11, RHEL 6, sysvinit
Debian) by an init script linked into runlevels 2, 3 and 5. Either removes itself after one run,
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
INIT_SCRIPT = "/etc/init.d/v2v-firstboot"
# Where each init system keeps its runlevel links: RHEL/Fedora, SUSE, Debian.
RC_DIRS = ("/etc/rc.d/rc{n}.d", "/etc/init.d/rc{n}.d", "/etc/rc{n}.d")
RUNLEVELS = (2, 3, 5)


def firstboot_script(install: str, remove: list[str]) -> str:
    """Waits (30 s at most) for a default route, installs, enables and starts the agent (under
    systemd, or as the init script its package brings: qemu-guest-agent on Debian, qemu-ga on RHEL
    and SUSE), then removes `remove`: what made it run."""
    return f"""#!/bin/sh
# Written by v2v: installs {PACKAGE} once, at the first boot on KVM.
exec >>{FIRSTBOOT_LOG} 2>&1
tries=0
while [ $tries -lt 30 ] && ! ip route show default 2>/dev/null | grep -q .; do sleep 1; tries=$((tries + 1)); done
if {install}; then
    if [ -d /run/systemd/system ]; then
        systemctl enable --now qemu-guest-agent.service
    else
        for s in qemu-guest-agent qemu-ga; do
            [ -x /etc/init.d/$s ] || continue
            chkconfig $s on 2>/dev/null || update-rc.d $s defaults 2>/dev/null || insserv $s 2>/dev/null
            /etc/init.d/$s start
            break
        done
    fi
else
    echo "v2v: installing {PACKAGE} failed; install it by hand"
fi
rm -f {" ".join(remove)}
[ -d /run/systemd/system ] && systemctl daemon-reload
exit 0
"""


INIT_SCRIPT_TEXT = f"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          v2v-firstboot
# Required-Start:    $network $remote_fs
# Required-Stop:
# Default-Start:     2 3 5
# Default-Stop:
# Description:       v2v first boot: install {PACKAGE}
### END INIT INFO
case "$1" in
    start) [ -x {FIRSTBOOT_SCRIPT} ] && {FIRSTBOOT_SCRIPT} ;;
esac
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
        install = self.manager.install_names_command([PACKAGE])
        if self.g.is_dir("/etc/systemd/system", followsymlinks=True):
            runs_it = self._systemd_unit()
        else:
            runs_it = self._init_script()
            if not runs_it:
                self.report.warn(f"the guest has neither systemd nor runlevel directories: install {PACKAGE} by hand "
                                 "after conversion", step=STEP)
                return "skipped"
        self.g.mkdir_p(FIRSTBOOT_SCRIPT.rsplit("/", 1)[0])
        self.g.write(FIRSTBOOT_SCRIPT, firstboot_script(install, runs_it).encode())
        self.g.chmod(0o755, FIRSTBOOT_SCRIPT)
        self.report.note(f"{PACKAGE} will be installed at first boot ({runs_it[0]}, log {FIRSTBOOT_LOG})", step=STEP)
        return "first-boot"

    def _systemd_unit(self) -> list[str]:
        self.g.write(FIRSTBOOT_UNIT, FIRSTBOOT_UNIT_TEXT.encode())
        self.g.mkdir_p(_WANTS.rsplit("/", 1)[0])
        self.g.ln_sf(FIRSTBOOT_UNIT, _WANTS)
        return [FIRSTBOOT_UNIT, _WANTS]

    def _init_script(self) -> list[str]:
        """The init script and its S99 links, where the guest keeps runlevel links; [] if nowhere."""
        base = next((d for d in RC_DIRS if self.g.is_dir(d.format(n=3), followsymlinks=True)), None)
        if base is None:
            return []
        self.g.mkdir_p(INIT_SCRIPT.rsplit("/", 1)[0])
        self.g.write(INIT_SCRIPT, INIT_SCRIPT_TEXT.encode())
        self.g.chmod(0o755, INIT_SCRIPT)
        links = []
        for n in RUNLEVELS:
            link = f"{base.format(n=n)}/S99v2v-firstboot"
            self.g.mkdir_p(base.format(n=n))
            self.g.ln_sf(INIT_SCRIPT, link)
            links.append(link)
        return [INIT_SCRIPT, *links]
