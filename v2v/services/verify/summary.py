"""A verify result in one line, for the step's message and the guest's log. Its own module, free of
guestfs and qemu, because the coordinator writes it too and the service images without libguestfs
(input, output, copier, coordinator) import the coordinator."""

from __future__ import annotations

from v2v.v1 import verify_pb2


def summary(res: verify_pb2.VerifyResult) -> str:
    """A booted guest in one line, for the step's message and the guest's log: how long, by what,
    and what it showed (root, NICs, failed units)."""
    by = verify_pb2.ObservedBy.Name(res.observed_by).removeprefix("OBSERVED_BY_").lower()
    parts = [f"booted in {res.seconds_to_userspace:.1f} s (observed by {by})"]
    o = res.observed
    if o.root_device:
        parts.append(f"root {o.root_device}")
    if o.nics:
        parts.append("nics " + ", ".join(f"{n.name} {n.mac}".strip() for n in o.nics))
    if res.observed_by == verify_pb2.OBSERVED_BY_PROBE:
        parts.append("failed units: " + (" ".join(o.failed_units) or "none"))
    return "; ".join(parts)
