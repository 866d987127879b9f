"""The names of a guest's steps: the one list that step events, errors and docs/events.md share.

A script filters events on these strings (`.step.step == "copy"`), so a name is API: adding one is
free, renaming one breaks its users. tests/unit/test_steps.py checks that every step name the code
emits is here and that docs/events.md's tables list exactly these.
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """A step name; a StrEnum, so it is the plain string wherever a proto field or a log wants one."""

    # Input
    OPEN = "open"
    # Output
    CHECK = "check"
    SETUP = "setup"
    FINALIZE = "finalize"
    # Convert, and its sub-steps (parent "convert")
    CONVERT = "convert"
    LAUNCH = "launch"
    INSPECT = "inspect"
    FSCK = "fsck"
    MOUNT = "mount"
    NETWORK = "network"
    FREE_SPACE = "free-space"
    KERNEL = "kernel"
    SECURE_BOOT = "secure-boot"
    REMOVE_TOOLS = "remove-tools"
    DEVICES = "devices"
    CONFIG = "config"
    INITRAMFS = "initramfs"
    BOOTLOADER = "bootloader"
    GUEST_AGENT = "guest-agent"
    # Windows (docs/conversion.md#windows-conversion); also network and bootloader
    WINDOWS_CHECKS = "windows-checks"
    DRIVERS = "drivers"
    TOOLS = "tools"
    FIRSTBOOT = "firstboot"
    REGISTRY = "registry"
    FSTRIM = "fstrim"
    MEASURE = "measure"
    SHUTDOWN = "shutdown"
    # Copier
    PRECOPY = "precopy"
    COPY = "copy"
    VERIFY = "verify"  # the copier's read-back (parent copy), and the boot check (docs/verify.md)
    PROBE = "probe"  # the boot check: its probe put on the overlay
    EXPECT = "expect"  # the boot check, strict: what it requires (a note)
    # The coordinator's clean-up after the phases (notes and warnings only)
    CLOSE = "close"
    ABORT = "abort"
    # Warm migrations (docs/warm.md); they also run setup, precopy and finalize
    START = "start"
    FULL = "full"
    RELEASE = "release"
    SERVE = "serve"  # the output serving a Setup's disks again for a round
    STOP_SOURCE = "stop-source"
    CUTOVER = "cutover"
    ROLLBACK = "rollback"  # a cutover whose boot check failed: the sources it paused resumed
    # No step of a guest: the CLI's own call failed before any step ran
    COORDINATOR = "coordinator"
    SERVICE = "service"
