"""The probe: a shell script the verifier adds to the guest's OVERLAY only (a systemd unit, or an
init script on sysvinit guests) that, once the guest reaches multi-user, writes one JSON line to
the virtio-serial port org.v2v.probe: root device, mounts, NICs with their addresses, failed units,
OS. And the reading of that line into a v2v.v1.Observed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import guestfs

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb
from v2v.v1 import verify_pb2

PORT = "org.v2v.probe"
SCRIPT = "/usr/local/sbin/v2v-boot-probe"
UNIT = "/etc/systemd/system/v2v-boot-probe.service"
INIT_SCRIPT = "/etc/init.d/v2v-boot-probe"

# POSIX sh with only what a minimal guest has (no python, no jq): `ip -j` where iproute2 has it,
# /sys/class/net otherwise. Waits for the port (virtio_console may load late); without one it writes
# to the serial console after the prefix console.PROBE_PREFIX.
PROBE_SCRIPT = r"""#!/bin/sh
# Added by v2v verify-boot to a throw-away overlay: reports how the guest came up, then exits.
esc() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
modprobe virtio_console 2>/dev/null
i=0; port=/dev/virtio-ports/org.v2v.probe
while [ ! -e $port ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
root=$(findmnt -n -o SOURCE / 2>/dev/null || awk '$2 == "/" { d = $1 } END { print d }' /proc/mounts)
mounts=""
while read -r dev mnt fstype rest; do
    case $fstype in
        proc|sysfs|devtmpfs|devpts|tmpfs|cgroup*|securityfs|pstore|bpf|debugfs|tracefs|mqueue) continue ;;
        hugetlbfs|configfs|fusectl|autofs|efivarfs|rpc_pipefs|binfmt_misc|ramfs) continue ;;
    esac
    mounts="$mounts${mounts:+,}{\"mountpoint\":\"$(esc "$mnt")\",\"device\":\"$(esc "$dev")\",\"fstype\":\"$fstype\"}"
done < /proc/mounts
if nics=$(ip -j addr show 2>/dev/null) && [ -n "$nics" ]; then :; else
    nics=""
    for n in /sys/class/net/*; do
        nics="$nics${nics:+,}{\"ifname\":\"${n##*/}\",\"address\":\"$(cat $n/address 2>/dev/null)\",\"addr_info\":[]}"
    done
    nics="[$nics]"
fi
failed=""
if command -v systemctl >/dev/null; then
    for u in $(systemctl --failed --plain --no-legend 2>/dev/null | awk '{ print $1 }'); do
        failed="$failed${failed:+,}\"$(esc "$u")\""
    done
fi
if [ -d /sys/firmware/efi ]; then firmware=uefi; else firmware=bios; fi
. /etc/os-release 2>/dev/null
os="{\"id\":\"$(esc "$ID")\",\"name\":\"$(esc "$PRETTY_NAME")\",\"version\":\"$(esc "$VERSION_ID")\""
os="$os,\"kernel\":\"$(uname -r)\",\"hostname\":\"$(esc "$(hostname)")\"}"
nics=$(printf '%s' "$nics" | tr -d '\n')
line="{\"v2v_probe\":1,\"root\":\"$(esc "$root")\",\"mounts\":[$mounts],\"nics\":$nics"
line="$line,\"failed_units\":[$failed],\"os\":$os,\"firmware\":\"$firmware\"}"
if [ -e $port ]; then printf '%s\n' "$line" > $port; else printf 'V2V-PROBE %s\n' "$line" > /dev/ttyS0; fi
"""

# Before multi-user.target is reached (a target waits for what it wants): a guest whose own units
# power it off once up, as the test guest does, is observed first.
PROBE_UNIT = f"""[Unit]
Description=v2v boot check probe (throw-away overlay only)
After=local-fs.target network.target systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart={SCRIPT}
StandardOutput=null

[Install]
WantedBy=multi-user.target
"""

PROBE_INIT = f"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          v2v-boot-probe
# Required-Start:    $local_fs $network
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: v2v boot check probe (throw-away overlay only)
### END INIT INFO
[ "$1" = start ] && {SCRIPT} &
exit 0
"""


@dataclass
class GuestOs:
    """What inspection of the overlay said, and whether the probe went in."""
    type: str  # linux, windows, ...
    distro: str
    probe_added: bool


def _is_systemd(g: guestfs.GuestFS) -> bool:
    for init in ("/sbin/init", "/usr/sbin/init"):
        if g.is_symlink(init) and "systemd" in g.readlink(init):
            return True
    return not g.exists("/sbin/init") and g.is_dir("/etc/systemd/system")


def add_probe(overlays: list[Path], accel: str) -> GuestOs:
    """Inspects the overlays and, on a Linux guest, installs the probe in them (systemd unit or init
    script). The overlays' backing files are opened read-only by qemu under libguestfs."""
    g = guestfs.GuestFS(python_return_dict=True)
    if accel == "tcg":
        g.set_backend_settings(["force_tcg"])
    try:
        for ov in overlays:
            g.add_drive_opts(str(ov), format="qcow2", readonly=False)
        g.launch()
        roots = g.inspect_os()
        if not roots:
            raise V2VError("no operating system was found on the disks", pb.ERROR_CODE_NO_OS, step="probe")
        root = roots[0]
        os_type, distro = g.inspect_get_type(root), g.inspect_get_distro(root)
        if os_type != "linux":
            return GuestOs(os_type, distro, False)
        mps = g.inspect_get_mountpoints(root)
        for mp in sorted(mps, key=len):
            try:
                g.mount(mps[mp], mp)
            except RuntimeError:
                pass  # a filesystem the guest itself may fail on: the boot will tell
        g.mkdir_p(str(Path(SCRIPT).parent))
        g.write(SCRIPT, PROBE_SCRIPT.encode())
        g.chmod(0o755, SCRIPT)
        if _is_systemd(g):
            g.write(UNIT, PROBE_UNIT.encode())
            g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
            g.ln_sf(UNIT, "/etc/systemd/system/multi-user.target.wants/v2v-boot-probe.service")
        else:
            g.write(INIT_SCRIPT, PROBE_INIT.encode())
            g.chmod(0o755, INIT_SCRIPT)
            for level in "2345":
                if g.is_dir(f"/etc/rc{level}.d"):
                    g.ln_sf(INIT_SCRIPT, f"/etc/rc{level}.d/S99v2v-boot-probe")
        g.umount_all()
        g.shutdown()
        return GuestOs(os_type, distro, True)
    except RuntimeError as exc:
        raise V2VError(f"cannot add the probe to the overlay: {exc}", pb.ERROR_CODE_PROCESS_FAILED,
                       step="probe") from None
    finally:
        g.close()


def parse_probe(line: str) -> verify_pb2.Observed | None:
    """The probe's JSON line as Observed; None for anything else (noise on the port, a cut line)."""
    try:
        doc: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("v2v_probe") != 1:
        return None
    obs = verify_pb2.Observed(root_device=str(doc.get("root", "")), failed_units=[str(u) for u in
                                                                                   doc.get("failed_units", [])])
    for m in doc.get("mounts", []):
        obs.mounts.add(mountpoint=str(m.get("mountpoint", "")), device=str(m.get("device", "")),
                       fstype=str(m.get("fstype", "")))
    for n in doc.get("nics", []):
        name = str(n.get("ifname", ""))
        if not name or name == "lo":
            continue
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in n.get("addr_info", []) if "local" in a]
        obs.nics.add(name=name, mac=str(n.get("address", "")).lower(), addresses=addrs)
    obs.firmware = {"uefi": pb.FIRMWARE_UEFI, "bios": pb.FIRMWARE_BIOS}.get(str(doc.get("firmware")),
                                                                            pb.FIRMWARE_UNSPECIFIED)
    os_doc = doc.get("os", {})
    obs.os.CopyFrom(verify_pb2.OsInfo(id=str(os_doc.get("id", "")), name=str(os_doc.get("name", "")),
                                      version=str(os_doc.get("version", "")), kernel=str(os_doc.get("kernel", "")),
                                      hostname=str(os_doc.get("hostname", ""))))
    return obs
