"""The bounds of what a source's metadata may say about its hardware. A VMX, OVF or domain XML is
the user's file (or a hostile one): a negative or absurd count must be a BAD_INPUT line naming the
file, not protobuf's "Value out of range" from deep inside, nor a target asking for 2^60 bytes."""

from __future__ import annotations

from v2v.units import human_size

MAX_MEMORY = 64 << 40  # 64 TiB: beyond any host a converted guest can run on
MAX_VCPUS = 4096  # KVM's own limit on x86_64


def memory_problem(nbytes: int) -> str | None:
    """Why `nbytes` cannot be a guest's memory, or None."""
    if nbytes < 1 or nbytes > MAX_MEMORY:
        return f"memory of {nbytes} bytes is out of range (1 byte to {human_size(MAX_MEMORY)})"
    return None


def vcpus_problem(count: int) -> str | None:
    """Why `count` cannot be a guest's vCPU count, or None."""
    if count < 1 or count > MAX_VCPUS:
        return f"{count} vCPUs is out of range (1 to {MAX_VCPUS})"
    return None
