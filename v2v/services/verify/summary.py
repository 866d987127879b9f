"""A verify result in one line, for the step's message and the guest's log. Its own module, free of
guestfs and qemu, because the coordinator writes it too and the service images without libguestfs
(input, output, copier, coordinator) import the coordinator."""

from __future__ import annotations

from v2v.v1 import types_pb2 as pb
from v2v.v1 import verify_pb2


def summary(res: verify_pb2.VerifyResult) -> str:
    """A booted guest in one line, for the step's message and the guest's log: how long, by what,
    and what it showed: firmware, root, the block-device mounts, NICs with their addresses but the
    link-local ones, failed units. E.g. "booted in 41.2 s (observed by probe); firmware BIOS; root
    /dev/vda3; mounts / /dev/vda3, /boot /dev/vda1; nics ens192 52:54:00:e4:74:b2 10.0.2.15/24;
    failed units: none"."""
    by = verify_pb2.ObservedBy.Name(res.observed_by).removeprefix("OBSERVED_BY_").lower()
    parts = [f"booted in {res.seconds_to_userspace:.1f} s (observed by {by})"]
    o = res.observed
    if o.firmware:
        parts.append("firmware " + pb.Firmware.Name(o.firmware).removeprefix("FIRMWARE_"))
    if o.root_device:
        parts.append(f"root {o.root_device}")
    if mounts := [m for m in o.mounts if m.device.startswith("/dev/")]:
        parts.append("mounts " + ", ".join(f"{m.mountpoint} {m.device}" for m in mounts))
    if o.nics:
        parts.append("nics " + ", ".join(" ".join([n.name, n.mac, *(a for a in n.addresses
                                                                    if not a.startswith("fe80:"))]).strip()
                                         for n in o.nics))
    if res.observed_by == verify_pb2.OBSERVED_BY_PROBE:
        parts.append("failed units: " + (" ".join(o.failed_units) or "none"))
    return "; ".join(parts)
